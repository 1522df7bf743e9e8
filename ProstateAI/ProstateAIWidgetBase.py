"""Parameter-node plumbing shared by the three module widgets (Slicer's scripted-module template).

Each widget keeps its state in a parameter node (`parameterNodeWrapper`) bound to its .ui widgets
through their `SlicerParameterName` properties; this mixin owns that binding so CTPreprocess,
MRStandardize and ProstateAI do it one way. A widget using it inherits
`(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin)` and provides
`self.logic.getParameterNode()` and `_onParameterNodeModified()`. Widgets with background jobs
extend `onSceneStartClose` (discard the job, then `super()`).
"""

from __future__ import annotations

import slicer
import vtk


class ParameterNodeWidgetMixin:
    _parameterNode = None
    _parameterNodeGuiTag = None

    def loadModuleUi(self, moduleName: str):
        """Build the GUI from Resources/UI/<moduleName>.ui into the module panel; observe scene close."""
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level mrmlSceneChanged signal to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        return uiWidget

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Stop reacting to parameter changes while the module is not shown.
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Bind the logic's parameter node; an empty input volume gets the scene's first volume."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry a "SlicerParameterName" dynamic property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()
