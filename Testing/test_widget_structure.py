"""Structure of each Slicer module (no Qt here): .ui file, widget names, parameter bindings, icon, CMake.

Slicer cannot run in CI, so everything a missing widget or a misspelt parameter name would break at
module load is checked statically: the .ui is a Qt Designer file, every `self.ui.<name>` the module
uses exists in it, every `SlicerParameterName` names a field of the module's parameter node wrapper
(the module is imported with the headless stand-ins, which also proves it imports), the widget type
suits the field type the way Slicer's GUI connectors require, the icon is a 128x128 PNG and the
module's CMakeLists.txt lists the module, its .ui and its icon.
"""

from __future__ import annotations

import ast
import enum
import importlib
import re
import shutil
import struct
import subprocess
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPECTED_MODULES = {"CTPreprocess", "MRStandardize", "ProstateAI"}


def discover_modules() -> list[str]:
    """Folders <Name>/ holding <Name>.py and Resources/UI/<Name>.ui (Slicer's scripted module layout)."""
    found = []
    for folder in sorted(REPO.iterdir()):
        if (folder / f"{folder.name}.py").is_file() and (folder / "Resources" / "UI" / f"{folder.name}.ui").is_file():
            found.append(folder.name)
    return found


MODULES = discover_modules()


def test_all_modules_discovered():
    assert EXPECTED_MODULES <= set(MODULES), f"modules found: {MODULES}"


# -- helpers ----------------------------------------------------------------------------------------


def ui_tree(module: str) -> ET.Element:
    return ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()


def ui_widgets(root: ET.Element) -> dict[str, ET.Element]:
    widgets = {}
    for widget in root.iter("widget"):
        name = widget.get("name")
        assert name not in widgets, f"duplicate widget name {name!r}"
        widgets[name] = widget
    return widgets


def own_property(widget: ET.Element, name: str) -> ET.Element | None:
    """A property set directly on this widget (not on a child)."""
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def parameter_bindings(root: ET.Element) -> dict[str, tuple[str, str]]:
    """Parameter name -> (widget class, widget name) from SlicerParameterName dynamic properties."""
    bindings = {}
    for name, widget in ui_widgets(root).items():
        prop = own_property(widget, "SlicerParameterName")
        if prop is None:
            continue
        assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=0)"
        parameter = prop.findtext("string")
        assert parameter, f"{name}: empty SlicerParameterName"
        assert parameter not in bindings, f"parameter {parameter!r} bound to two widgets"
        bindings[parameter] = (widget.get("class"), name)
    return bindings


def import_module(module: str) -> types.ModuleType:
    pytest.importorskip("slicer")
    from headless import install

    install()
    return importlib.import_module(module)


def wrapper_class(mod: types.ModuleType, module: str) -> type:
    classes = [
        value
        for value in vars(mod).values()
        if isinstance(value, type) and value.__module__ == mod.__name__ and hasattr(value, "__parameter_node_wrapper__")
    ]
    assert len(classes) == 1, f"{module}: expected one @parameterNodeWrapper class, found {classes}"
    assert classes[0].__name__ == f"{module}ParameterNode"
    return classes[0]


def validator_calls(module: str, class_name: str) -> dict[str, list[tuple[str, list]]]:
    """Field -> [(validator name, literal args)] read from the class body's Annotated[...] annotations."""
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    result = {}
    for statement in cls.body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        calls = []
        annotation = statement.annotation
        if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
            for element in annotation.slice.elts[1:]:
                if isinstance(element, ast.Call):
                    calls.append((element.func.id, element.args))
        result[statement.target.id] = calls
    return result


def type_hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls, include_extras=True)


def base_type(hint):
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


# -- .ui ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_ui_is_a_designer_file(module):
    root = ui_tree(module)
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == module
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    widgets = ui_widgets(root)
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used_custom = {w.get("class") for w in widgets.values() if w.get("class").startswith(("ctk", "qMRML", "qSlicer"))}
    assert used_custom, "a Slicer module .ui uses MRML/CTK widgets"
    assert used_custom <= custom, f"custom widgets missing from <customwidgets>: {used_custom - custom}"
    # Every MRML widget gets the scene through the top-level mrmlSceneChanged signal (Slicer's template).
    scene_receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == module
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {
        name for name, w in widgets.items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")
    }
    assert mrml_widgets, "expected node selectors"
    assert mrml_widgets <= scene_receivers, f"node selectors without the scene: {mrml_widgets - scene_receivers}"
    for name in mrml_widgets:
        node_types = own_property(widgets[name], "nodeTypes")
        assert node_types is not None and node_types.findall("stringlist/string"), f"{name}: nodeTypes missing"


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_used_in_module_exist(module):
    source = (REPO / module / f"{module}.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used, f"{module}.py uses no self.ui.<widget>"
    # The GUI is built from the module's own .ui by the shared mixin (ProstateAIWidgetBase).
    assert f'self.loadModuleUi("{module}")' in source
    missing = used - set(ui_widgets(ui_tree(module)))
    assert not missing, f"{module}.py uses widgets missing from {module}.ui: {sorted(missing)}"


def test_shared_widget_base_builds_from_the_ui_and_comes_first():
    """The mixin loads Resources/UI/<module>.ui, and each widget lists it before Slicer's base class so
    its enter/exit/scene-close methods are the ones Slicer calls."""
    base = (REPO / "Common" / "ProstateAIWidgetBase.py").read_text()
    assert "loadUI" in base and 'f"UI/{moduleName}.ui"' in base and "childWidgetVariables" in base
    for module in MODULES:
        tree = ast.parse((REPO / module / f"{module}.py").read_text())
        widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget")
        bases = [b.id for b in widget.bases if isinstance(b, ast.Name)]
        assert bases[0] == "ParameterNodeWidgetMixin", bases
        mixins = bases[1:bases.index("ScriptedLoadableModuleWidget")]
        assert set(mixins) <= {"JobPollingWidgetMixin"}, bases


JOB_MODULES = ("MRStandardize", "ProstateAI")


@pytest.mark.parametrize("module", JOB_MODULES)
def test_job_polling_widgets_have_what_the_mixin_uses(module):
    """Widgets with background jobs share JobPollingWidgetMixin: its widgets exist in their .ui, and
    they provide the two hooks it calls."""
    base = (REPO / "Common" / "ProstateAIWidgetBase.py").read_text()
    mixin = base[base.index("class JobPollingWidgetMixin"):]
    used = set(re.findall(r"self\.ui\.(\w+)", mixin))
    assert {"progressBar", "statusLabel", "timeLabel", "cancelButton"} <= used
    missing = used - set(ui_widgets(ui_tree(module)))
    assert not missing, f"{module}.ui lacks widgets the job mixin uses: {sorted(missing)}"
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget")
    assert "JobPollingWidgetMixin" in [b.id for b in widget.bases if isinstance(b, ast.Name)]
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert {"_finishJob", "_updateButtons"} <= methods
    source = ast.unparse(widget)
    assert "self.setupJobPolling()" in source and "self.startJob(" in source and "self.discardRunningJob()" in source


# -- parameter node wrapper -------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_are_wrapper_fields(module):
    mod = import_module(module)
    fields = set(type_hints(wrapper_class(mod, module)))
    bindings = parameter_bindings(ui_tree(module))
    assert bindings, f"{module}.ui binds no widget to the parameter node"
    unknown = set(bindings) - fields
    assert not unknown, f"SlicerParameterName not in {module}ParameterNode: {sorted(unknown)}"
    unbound = fields - set(bindings)
    assert not unbound, f"parameters with no widget in {module}.ui: {sorted(unbound)}"
    assert "inputVolume" in fields
    reserved = fields & WRAPPER_RESERVED_NAMES
    assert not reserved, f"names the real parameterNodeWrapper reserves: {sorted(reserved)}"


# Attributes Slicer's parameterNodeWrapper adds to the class or instance (wrapper.py): a field with one
# of these names breaks the wrapper at module load.
WRAPPER_RESERVED_NAMES = {
    "allParameters", "default", "isCached", "dataType", "getValue", "setValue", "connectGui",
    "connectParametersToGui", "disconnectGui", "StartModify", "EndModify", "AddObserver",
    "RemoveObserver", "Modified", "parameterNode",
}


# What Slicer's parameterNodeWrapper GUI connectors accept (Docs/developer_guide/parameter_nodes/
# gui_connection.md): widget class -> allowed field base types, and validators the connector needs.
CONNECTORS = {
    "QCheckBox": ((bool,), set()),
    "QSpinBox": ((int,), {"WithinRange"}),
    "QSlider": ((int,), {"WithinRange"}),
    "QDoubleSpinBox": ((float,), {"WithinRange"}),
    "ctkSliderWidget": ((float,), {"WithinRange"}),
    "QLineEdit": ((str,), set()),
}


@pytest.mark.parametrize("module", MODULES)
def test_widget_types_suit_parameter_types(module):
    mod = import_module(module)
    cls = wrapper_class(mod, module)
    hints = type_hints(cls)
    validators = validator_calls(module, cls.__name__)
    widgets = ui_widgets(ui_tree(module))
    for parameter, (widget_class, widget_name) in parameter_bindings(ui_tree(module)).items():
        kind = base_type(hints[parameter])
        names = [name for name, _ in validators.get(parameter, [])]
        default = getattr(cls, parameter, None)
        where = f"{module}.{parameter} ({widget_class} {widget_name})"
        if widget_class == "qMRMLNodeComboBox":
            assert isinstance(kind, type) and kind.__name__.startswith("vtkMRML"), where
            node_types = [s.text for s in own_property(widgets[widget_name], "nodeTypes").findall("stringlist/string")]
            assert node_types == [kind.__name__], f"{where}: nodeTypes {node_types} != {kind.__name__}"
        elif widget_class == "QComboBox":
            # A combo box needs an Enum or a Choice validator (the connector fills the items from it).
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                assert isinstance(default, kind), f"{where}: default {default!r}"
            else:
                assert kind in (str, int, float, bool) and "Choice" in names, f"{where}: needs Choice(...)"
                marker = typing.get_args(hints[parameter])[1 + names.index("Choice")]
                assert default in tuple(marker.args[0]), f"{where}: default {default!r} not a choice"
        else:
            assert widget_class in CONNECTORS, f"{where}: no GUI connector for this widget class"
            allowed, required = CONNECTORS[widget_class]
            assert kind in allowed, f"{where}: field type {kind} not in {allowed}"
            assert required <= set(names), f"{where}: needs {required} (else the connector unbounds the widget)"
            if "WithinRange" in names:
                low, high = typing.get_args(hints[parameter])[1 + names.index("WithinRange")].args
                assert low <= default <= high, f"{where}: default {default} outside [{low}, {high}]"


@pytest.mark.parametrize("module", MODULES)
def test_module_classes(module):
    mod = import_module(module)
    for suffix in ("", "Widget", "Logic", "Test"):
        assert isinstance(getattr(mod, module + suffix, None), type), f"{module}{suffix} missing"
    parent = types.SimpleNamespace()
    getattr(mod, module)(parent)
    assert parent.title and parent.categories == ["ProstateAI"]
    assert parent.contributors and len(parent.helpText) > 80 and len(parent.acknowledgementText) > 40
    assert callable(getattr(getattr(mod, module + "Test"), "runTest", None))
    assert callable(getattr(getattr(mod, module + "Widget"), "setup", None))


@pytest.mark.parametrize("module", MODULES)
def test_no_empty_methods(module):
    """No placeholder methods (body only `pass`, `...` or a docstring)."""
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    empty = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            if not body or all(isinstance(s, ast.Pass) for s in body):
                empty.append(node.name)
    assert not empty, f"{module}.py has empty methods: {empty}"


# -- icon ---------------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("module", MODULES)
def test_icon_is_128_png(module):
    assert png_size(REPO / module / "Resources" / "Icons" / f"{module}.png") == (128, 128)


def test_extension_icon_is_128_png():
    assert png_size(REPO / "Resources" / "Icons" / "ProstateAI-extension.png") == (128, 128)


# -- CMake --------------------------------------------------------------------------------------------


def cmake_text(path: Path) -> str:
    text = re.sub(r"#[^\n]*", "", path.read_text())
    name = re.search(r"set\(\s*MODULE_NAME\s+(\w+)\s*\)", text)
    return text.replace("${MODULE_NAME}", name.group(1)) if name else text


@pytest.mark.parametrize("module", MODULES)
def test_cmakelists_lists_module_files(module):
    text = cmake_text(REPO / module / "CMakeLists.txt")
    assert re.search(rf"set\(\s*MODULE_NAME\s+{module}\s*\)", (REPO / module / "CMakeLists.txt").read_text())
    scripts = re.search(r"set\(\s*MODULE_PYTHON_SCRIPTS(.*?)\)", text, re.S).group(1).split()
    resources = re.search(r"set\(\s*MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
    assert f"{module}.py" in scripts
    assert f"Resources/UI/{module}.ui" in resources
    assert f"Resources/Icons/{module}.png" in resources
    assert re.search(rf"file\(\s*GLOB\w*\s+\w+.*?{module}Lib/\*\.py", text, re.S), "Lib package not globbed"
    build = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1).split()
    assert build[:2] == ["NAME", module] and "WITH_GENERIC_TESTS" in build
    assert "${MODULE_PYTHON_SCRIPTS}" in build and "${MODULE_PYTHON_RESOURCES}" in build


def test_top_level_cmakelists():
    text = cmake_text(REPO / "CMakeLists.txt")
    assert re.search(r"project\(\s*ProstateAI\s*\)", text)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(\s*EXTENSION_{key}\s+"[^"]+"', text), f"EXTENSION_{key} missing"
    assert 'EXTENSION_CATEGORY "Segmentation"' in text
    urls = re.search(r'set\(\s*EXTENSION_SCREENSHOTURLS\s+"([^"]+)"', text).group(1).split()
    for url in urls:  # each screenshot the extension index shows is a committed file
        assert (REPO / url.split("/main/", 1)[1]).is_file(), url
    order = [m for m in re.findall(r"(find_package\(Slicer REQUIRED\)|include\(\$\{Slicer_\w+\}\)|add_subdirectory\(\w+\))", text)]
    assert order[:2] == ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})"]
    assert order[-2:] == ["include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    subdirectories = [re.search(r"\((\w+)\)", m).group(1) for m in order if m.startswith("add_subdirectory")]
    assert set(subdirectories) == set(MODULES) | {"Common"}
    assert subdirectories[0] == "Common", "the shared hidden module is configured before the modules using it"


FAKE_SLICER_CONFIG = r"""
# Minimal stand-in for SlicerConfig.cmake: records what each module hands to the macro and checks
# the files exist, as slicerMacroBuildScriptedModule does.
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.11/qt-scripted-modules)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value})
      message(FATAL_ERROR "nonexistent file ${value}")
    endif()
  endforeach()
  file(WRITE ${CMAKE_BINARY_DIR}/${MY_SLICER_NAME}.files "SCRIPTS;${MY_SLICER_SCRIPTS};RESOURCES;${MY_SLICER_RESOURCES}")
endmacro()
function(slicer_add_python_unittest)
endfunction()
"""


def test_cmake_configures_with_stub_slicer(tmp_path):
    """Configure the real CMakeLists.txt files against a stand-in Slicer: every listed file exists."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not installed")
    fake = tmp_path / "fake-slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(FAKE_SLICER_CONFIG)
    (fake / "empty.cmake").write_text("")
    build = tmp_path / "build"
    run = subprocess.run(
        [cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={fake}", "-DBUILD_TESTING=ON"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for module in MODULES:
        entries = (build / f"{module}.files").read_text().split(";")
        split = entries.index("RESOURCES")
        scripts, resources = set(entries[1:split]), set(entries[split + 1:])
        lib_files = {p.relative_to(REPO / module).as_posix() for p in (REPO / module / f"{module}Lib").rglob("*.py")}
        assert lib_files and lib_files <= scripts, f"{module}: Lib files missing: {lib_files - scripts}"
        assert {f"{module}.py"} | lib_files == scripts
        assert {f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"} <= resources
    # The hidden shared module installs the core package and the Slicer-side helpers.
    common = (build / "ProstateAICommon.files").read_text().split(";")
    core = {p.relative_to(REPO / "Common").as_posix() for p in (REPO / "Common" / "ProstateAICore").rglob("*.py")}
    assert {"ProstateAICommon.py", "ProstateAIMRML.py", "ProstateAIWidgetBase.py"} | core <= set(common)
    prostate = (build / "ProstateAI.files").read_text()
    assert "../Resources/SampleData/sample_ct_abdomen_pelvis.nii.gz" in prostate
