"""Headless stand-ins for the parts of Slicer that need Qt (not MRML).

slicer-core gives the real MRML scene and logics but not `slicer.ScriptedLoadableModule`,
`slicer.parameterNodeWrapper`, `qt` or `ctk`, which only exist inside the Slicer application. To
import a module file (`CTPreprocess.py` ...) and test its Logic on a real scene, `install()` puts
minimal framework modules in their place (the browser app's stand-ins,
`ProstateAIApp.view.slicer_module`), and `make_scene()` builds a scene with the module logics. Widgets are never instantiated here; their wiring is
checked structurally against the .ui files instead.
"""

from __future__ import annotations

import types

import slicer
import vtk


def install() -> None:
    """Register the stand-ins (only where the real modules are absent): the browser app's, so the
    tests import the module files exactly as the app does."""
    from ProstateAIApp.view.slicer_module import install_stand_ins

    install_stand_ins()
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
