"""MR Standardize: Slicer module for MR intensity standardisation (N4 bias-field correction, Nyul).

The computation lives in the GUI-free `MRStandardizeLib`; this file holds the Slicer glue (module
description, parameter node, widget built from Resources/UI/MRStandardize.ui, logic and self-test).
"""

import numpy as np
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin

from ProstateAIMRML import describe_volume

#
# MRStandardize
#


class MRStandardize(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = "MR Standardize"
        self.parent.categories = ["ProstateAI"]
        self.parent.dependencies = []
        self.parent.contributors = ["ProstateAI contributors"]
        self.parent.helpText = """
Standardise MR intensities so that images from different scanners and sessions become comparable:
N4 bias-field correction (Tustison et al. 2010) and Nyul &amp; Udupa histogram standardisation.
See the <a href="https://github.com/prostateai/SlicerProstateAI">project page</a> for details.
"""
        self.parent.acknowledgementText = """
Part of the ProstateAI extension. N4: Tustison N.J. et al., "N4ITK: Improved N3 Bias Correction",
IEEE TMI 2010. Histogram standardisation: Nyul L.G., Udupa J.K., "On standardizing the MR image
intensity scale", Magn Reson Med 1999.
"""


#
# MRStandardizeParameterNode
#


@parameterNodeWrapper
class MRStandardizeParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode


#
# MRStandardizeWidget
#


class MRStandardizeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRStandardize.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRStandardizeLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.ui.inputInfoLabel.text = describe_volume(self._parameterNode.inputVolume) if self._parameterNode else ""


#
# MRStandardizeLogic
#


class MRStandardizeLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return MRStandardizeParameterNode(super().getParameterNode())


#
# MRStandardizeTest
#


class MRStandardizeTest(ScriptedLoadableModuleTest):  # noqa: F405
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_MRStandardize_parameters()

    def test_MRStandardize_parameters(self):
        self.delayDisplay("Parameter node keeps the input volume")
        array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
        volumeNode = slicer.util.addVolumeFromArray(array, name="mr")
        parameters = MRStandardizeLogic().getParameterNode()
        parameters.inputVolume = volumeNode
        if parameters.inputVolume is not volumeNode:
            raise AssertionError("input volume not stored in the parameter node")
        if describe_volume(volumeNode) != "6 x 5 x 4 voxels, spacing 1 x 1 x 1 mm":
            raise AssertionError(f"unexpected volume description: {describe_volume(volumeNode)}")
        self.delayDisplay("Test passed")
