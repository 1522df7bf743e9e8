"""Headless stand-ins for the parts of Slicer that need Qt (not MRML).

slicer-core gives the real MRML scene and logics but not `slicer.ScriptedLoadableModule`,
`slicer.parameterNodeWrapper`, `qt` or `ctk`, which only exist inside the Slicer application. To
import a module file (`CTPreprocess.py` ...) and test its Logic on a real scene, `install()` puts
minimal framework modules in their place. Widgets are never instantiated here; their wiring is
checked structurally against the .ui files instead.
"""

from __future__ import annotations

import logging
import sys
import types

import slicer
import vtk


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
        """In Slicer this shows the message for a while; headless it is only logged (and kept for tests)."""
        self.displayedMessages = getattr(self, "displayedMessages", []) + [message]
        logging.info(message)


def parameterNodeWrapper(cls):
    """The real decorator generates typed accessors; the class annotations are what tests read."""
    cls.__parameter_node_wrapper__ = True
    return cls


class _Marker:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


# One class per validator, as in Slicer, so annotations can be told apart when read back.
WithinRange, Choice, Default, Minimum, Maximum, Decimals = (
    type(name, (_Marker,), {}) for name in ("WithinRange", "Choice", "Default", "Minimum", "Maximum", "Decimals")
)


def install() -> None:
    """Register the stand-ins (only where the real modules are absent)."""
    try:
        import qt  # noqa: F401  (inside Slicer: nothing to do)
        return
    except ImportError:
        pass
    sys.modules.setdefault("qt", _module("qt"))
    sys.modules.setdefault("ctk", _module("ctk"))
    slm = _module(
        "slicer.ScriptedLoadableModule",
        ScriptedLoadableModule=ScriptedLoadableModule,
        ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
    )
    slm.__all__ = [n for n in vars(slm) if n.startswith("Scripted")]
    pnw = _module(
        "slicer.parameterNodeWrapper",
        parameterNodeWrapper=parameterNodeWrapper,
        WithinRange=WithinRange,
        Choice=Choice,
        Default=Default,
        Minimum=Minimum,
        Maximum=Maximum,
        Decimals=Decimals,
    )
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    sys.modules["slicer.parameterNodeWrapper"] = pnw
    slicer.ScriptedLoadableModule = slm
    slicer.parameterNodeWrapper = pnw
    if not hasattr(slicer.util, "VTKObservationMixin"):
        slicer.util.VTKObservationMixin = type("VTKObservationMixin", (), {})
    vtk  # noqa: B018  (vtk must be importable: module files import it)


def make_scene():
    """A real MRML scene with the application logic and module logics our Logic classes use.

    Follows ../shared/ENVIRONMENT.md: colour, volumes, segmentations and subject-hierarchy logics
    are registered so `slicer.util` volume and segment helpers work.
    """
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    logics = {}
    for name, cls in (
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("Tables", slicer.vtkSlicerTablesLogic),
        ("Plots", slicer.vtkSlicerPlotsLogic),
    ):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    app_logic.SetModuleLogic("Colors", color_logic)
    slicer.mrmlScene = scene
    slicer.app = types.SimpleNamespace(applicationLogic=lambda: app_logic, mrmlScene=lambda: scene)
    slicer.modules = types.SimpleNamespace(
        **{
            name.lower(): types.SimpleNamespace(logic=(lambda lg=logic: lg))
            for name, logic in logics.items()
        }
    )
    return scene, app_logic, logics
