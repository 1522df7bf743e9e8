"""Import the Slicer module files (`ProstateAI.py` ...) outside Slicer, on trame-slicer's MRML scene.

The browser app runs the very Logic class the Slicer module runs (`ProstateAI.ProstateAILogic`), not a
copy. A module file imports `qt`, `slicer.ScriptedLoadableModule` and `slicer.parameterNodeWrapper`,
which exist only inside the Slicer application; `install_stand_ins()` puts minimal stand-ins in their
place (the tests use the same ones, through Testing/headless), and `attach_scene()` gives `slicer.mrmlScene`,
`slicer.app` and `slicer.modules` the scene and module logics of trame-slicer's `SlicerApp`, which
`slicer.util`'s volume and segment helpers use. Widgets are never built here.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path

import slicer

from ProstateAICore import jobs


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__headless_stub__ = True
    return module


class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=None):
        """In Slicer this shows the message for a while; here it is only logged (and kept for tests)."""
        self.displayedMessages = getattr(self, "displayedMessages", []) + [message]
        logging.info(message)


def parameterNodeWrapper(cls):
    """The real decorator generates typed accessors on a scripted-module node; the Logic methods
    called outside Slicer do not use the parameter node. The class annotations stay readable (the
    widget-structure tests read them)."""
    cls.__parameter_node_wrapper__ = True
    return cls


class _Marker:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


# One class per validator, as in Slicer, so annotations can be told apart when read back.
WithinRange, Choice, Default, Minimum, Maximum, Decimals = (
    type(name, (_Marker,), {}) for name in ("WithinRange", "Choice", "Default", "Minimum", "Maximum", "Decimals")
)


def install_stand_ins() -> None:
    """Register the stand-ins (only where the real modules are absent, i.e. outside Slicer)."""
    try:
        import qt  # noqa: F401  (inside Slicer: nothing to do)
        if not getattr(qt, "__headless_stub__", False):
            return
    except ImportError:
        pass
    sys.modules.setdefault("qt", _module("qt"))
    sys.modules.setdefault("ctk", _module("ctk"))
    slm = _module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
                  ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                  ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                  ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
    slm.__all__ = [n for n in vars(slm) if n.startswith("Scripted")]
    pnw = _module("slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, WithinRange=WithinRange,
                  Choice=Choice, Default=Default, Minimum=Minimum, Maximum=Maximum, Decimals=Decimals)
    sys.modules.setdefault("slicer.ScriptedLoadableModule", slm)
    sys.modules.setdefault("slicer.parameterNodeWrapper", pnw)
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    slicer.parameterNodeWrapper = sys.modules["slicer.parameterNodeWrapper"]
    if not hasattr(slicer.util, "VTKObservationMixin"):
        slicer.util.VTKObservationMixin = type("VTKObservationMixin", (), {})


def attach_scene(slicer_app) -> None:
    """Make trame-slicer's scene and module logics the ones `slicer.util` and the Logic classes see."""
    scene, app_logic = slicer_app.scene, slicer_app.app_logic
    slicer.mrmlScene = scene
    slicer.app = types.SimpleNamespace(applicationLogic=lambda: app_logic, mrmlScene=lambda: scene)
    logics = {"volumes": slicer_app.volumes_logic, "segmentations": slicer_app.segmentations_logic,
              "subjecthierarchy": slicer_app.subject_hierarchy_logic, "colors": slicer_app.color_logic}
    slicer.modules = types.SimpleNamespace(**{name: types.SimpleNamespace(logic=(lambda lg=logic: lg))
                                              for name, logic in logics.items()})


def module_folders() -> list[Path]:
    """The extension's module folders (Common, CTPreprocess, MRStandardize, ProstateAI), found from the
    core package as the background jobs find them (`ProstateAICore.jobs.job_environment`)."""
    common = Path(jobs.__file__).resolve().parents[1]
    return [folder for folder in [common, *(common.parent / name for name in jobs.MODULE_FOLDERS)] if folder.is_dir()]


def import_module_file(name: str):
    """Import a Slicer module file (e.g. "ProstateAI") with the stand-ins installed."""
    install_stand_ins()
    for folder in reversed(module_folders()):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"Could not import the Slicer module file {name}.py ({error}); the browser app runs "
                          "from the source tree (pip install -e .).") from error
