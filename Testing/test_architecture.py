"""The one-way architecture, checked on the source (`ast`): every import of every file, nested ones too.

    ProstateAICore  <-  CTPreprocessLib, MRStandardizeLib  <-  ProstateAILib  <-  applications

A package imports only packages of a lower layer (never a sibling, never upward), so there is no
package cycle; no GUI-free package imports Qt, Slicer, VTK or CTK; the Slicer-side shared helpers
(Common/) import only the core, so CTPreprocess and MRStandardize stay free of the segmentation code;
each Slicer module declares the modules whose files it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> (folder, layer)
PACKAGES = {
    "ProstateAICore": ("Common/ProstateAICore", 0),
    "CTPreprocessLib": ("CTPreprocess/CTPreprocessLib", 1),
    "MRStandardizeLib": ("MRStandardize/MRStandardizeLib", 1),
    "ProstateAILib": ("ProstateAI/ProstateAILib", 2),
    "ProstateAIApp": ("Applications/ProstateAIApp", 3),
}
GUI_MODULES = {"qt", "slicer", "vtk", "ctk", "vtkmodules", "PythonQt", "trame", "trame_slicer"}
# Slicer-side files (they may use slicer/qt/vtk) -> the project packages and helper modules they may import.
SLICER_FILES = {
    "Common/ProstateAICommon.py": set(),
    "Common/ProstateAIMRML.py": {"ProstateAICore"},
    "Common/ProstateAIWidgetBase.py": {"ProstateAICore"},
    "CTPreprocess/CTPreprocess.py": {"ProstateAICore", "CTPreprocessLib", "ProstateAIMRML", "ProstateAIWidgetBase"},
    "MRStandardize/MRStandardize.py": {"ProstateAICore", "MRStandardizeLib", "ProstateAIMRML", "ProstateAIWidgetBase"},
    "ProstateAI/ProstateAI.py": {"ProstateAICore", "CTPreprocessLib", "MRStandardizeLib", "ProstateAILib",
                                 "ProstateAIMRML", "ProstateAIWidgetBase"},
}
# Which Slicer module (folder) provides each importable name.
PROVIDER = {"ProstateAICore": "ProstateAICommon", "ProstateAIMRML": "ProstateAICommon",
            "ProstateAIWidgetBase": "ProstateAICommon", "CTPreprocessLib": "CTPreprocess",
            "MRStandardizeLib": "MRStandardize", "ProstateAILib": "ProstateAI"}
PROJECT_NAMES = set(PACKAGES) | {"ProstateAIMRML", "ProstateAIWidgetBase", "ProstateAICommon"}


def imported_top_names(path: Path, package: str | None = None) -> set[str]:
    """Top-level names of every module a file imports (relative imports resolve to its own package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add(package or "<relative>")
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


def package_imports(root: Path, packages: dict) -> dict[str, dict[str, set[str]]]:
    """{package: {file: imported top-level names}} for every .py file of each package."""
    return {
        name: {str(f.relative_to(root)): imported_top_names(f, name) for f in sorted((root / folder).rglob("*.py"))}
        for name, (folder, _) in packages.items()
    }


def direction_violations(imports: dict, packages: dict) -> list[str]:
    """Imports against the layer order (upward or sideways between project packages)."""
    bad = []
    for package, files in imports.items():
        layer = packages[package][1]
        for file, names in files.items():
            for other in names & set(packages):
                if other != package and packages[other][1] >= layer:
                    bad.append(f"{file}: {package} (layer {layer}) imports {other} (layer {packages[other][1]})")
    return bad


def package_cycles(imports: dict) -> list[list[str]]:
    """Cycles in the package graph (depth-first search)."""
    graph = {p: set().union(*files.values()) & set(imports) - {p} for p, files in imports.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


IMPORTS = package_imports(REPO, PACKAGES)


def test_every_package_has_files():
    for package, files in IMPORTS.items():
        assert f"{PACKAGES[package][0]}/__init__.py" in files, f"{package} is not a package"


def test_imports_flow_one_way():
    assert direction_violations(IMPORTS, PACKAGES) == []


def test_no_package_cycles():
    assert package_cycles(IMPORTS) == []


def test_gui_free_packages_import_no_gui():
    """The core and the Libs are GUI-free; applications (the browser app) may use trame / slicer."""
    for package, files in IMPORTS.items():
        if PACKAGES[package][1] >= PACKAGES["ProstateAIApp"][1]:
            continue
        for file, names in files.items():
            assert not names & GUI_MODULES, f"{file} imports {sorted(names & GUI_MODULES)}"


def test_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    """The checks above can fail: a core that imports a Lib that imports the core is caught twice."""
    (tmp_path / "core").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "io.py").write_text("def f():\n    from lib import step\n")
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "lib" / "step.py").write_text("from core.io import f\nfrom . import other\n")
    packages = {"core": ("core", 0), "lib": ("lib", 1)}
    imports = package_imports(tmp_path, packages)
    assert direction_violations(imports, packages) == ["core/io.py: core (layer 0) imports lib (layer 1)"]
    assert package_cycles(imports) == [["core", "lib", "core"]]


@pytest.mark.parametrize("file", sorted(SLICER_FILES))
def test_slicer_files_import_only_what_their_layer_allows(file):
    project = imported_top_names(REPO / file) & PROJECT_NAMES
    assert project <= SLICER_FILES[file], f"{file} imports {sorted(project - SLICER_FILES[file])}"


def declared_dependencies(module_file: Path) -> list[str]:
    """The list assigned to `self.parent.dependencies` in a Slicer module's class."""
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "self.parent.dependencies":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module_file} declares no dependencies")


@pytest.mark.parametrize("file", [f for f in SLICER_FILES if not f.startswith("Common/")])
def test_slicer_modules_declare_what_they_import(file):
    """Slicer loads a module's dependencies first (and puts their folders on sys.path): every module
    whose files this module imports is declared."""
    own = Path(file).stem
    needed = {PROVIDER[name] for name in imported_top_names(REPO / file) & set(PROVIDER)} - {own}
    assert needed <= set(declared_dependencies(REPO / file)), f"{file} must declare {sorted(needed)}"


def test_nothing_imports_the_applications():
    for package, files in IMPORTS.items():
        if package == "ProstateAIApp":
            continue
        for file, names in files.items():
            assert "ProstateAIApp" not in names, file
    for file in SLICER_FILES:
        assert "ProstateAIApp" not in imported_top_names(REPO / file), file


@pytest.mark.parametrize("package", ["CTPreprocessLib", "MRStandardizeLib", "ProstateAILib"])
def test_each_lib_has_the_same_shape(package):
    folder = REPO / PACKAGES[package][0]
    assert {"cli.py", "demo.py", "bench.py", "__init__.py"} <= {p.name for p in folder.glob("*.py")}
    cli = ast.parse((folder / "cli.py").read_text())
    functions = {n.name for n in cli.body if isinstance(n, ast.FunctionDef)}
    assert {"register", "main"} <= functions, f"{package}.cli needs register(subparsers) and main(argv)"


# -- no machine paths ---------------------------------------------------------------------------------

# Roots of machine folders, spelt without their slashes so this file does not match itself.
MACHINE_ROOTS = ("work/", "root/", "home/[a-z]", "Users/", "opt/", "tmp/")
MACHINE_PATH = r"""(^|["'(=:\s])(""" + "|".join("/" + root for root in MACHINE_ROOTS) + r"|[A-Za-z]:\\Users\\)"


def test_no_absolute_machine_path_in_committed_text_files():
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(MACHINE_PATH, re.M)
    hits = []
    for name in files:
        if name.endswith((".py", ".json", ".md", ".txt", ".toml", ".cfg", ".ui", "CMakeLists.txt", "Makefile", ".sh")):
            text = (REPO / name).read_text(errors="replace")
            hits += [f"{name}: {m.group(0).strip()}" for m in pattern.finditer(text)]
    assert hits == [], hits


def test_catalog_entries_store_portable_data_paths(tmp_path):
    from ProstateAILib.models import portable_path

    repo = tmp_path / "repo"
    assert portable_path(str(tmp_path / "shared" / "data" / "promise12"), repo) == "../shared/data/promise12"
    assert portable_path("runs/promise12_calibrated.json", repo) == "runs/promise12_calibrated.json"
    assert portable_path(None, repo) is None
