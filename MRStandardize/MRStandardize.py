"""MR Standardize: Slicer module for MR intensity standardisation and diffusion → T2 registration.

The computation lives in the GUI-free `MRStandardizeLib` (shared with the command line); this file
only holds the Slicer glue:

- `MRStandardizeParameterNode`: the module state, saved with the scene and bound to the .ui widgets.
- `MRStandardizeWidget`: thin GUI. N4 preview runs in-process (~2 s); N4 at full quality and the
  registration run out of process (`ProstateAICore.jobs.Job`), polled by a QTimer, with a real Cancel.
- `MRStandardizeLogic`: MRML glue (volume nodes <-> SimpleITK images and temporary files, job
  building and result loading, slice-view layers, Nyul histogram plot nodes). Usable without the GUI.
- `MRStandardizeTest`: self-test on synthetic volumes (no data download needed).
"""

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Annotated

import numpy as np
import qt
import SimpleITK as sitk
import vtk

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from MRStandardizeLib import normalize as mrnormalize
from MRStandardizeLib import nyul
from MRStandardizeLib import registration as mrregistration
from MRStandardizeLib import registration_check
from MRStandardizeLib.n4 import n4_correct
from ProstateAICore.errors import Cancelled, InputError
from ProstateAICore.geometry import same_grid
from ProstateAICore.jobs import require_done, start_job
from ProstateAIWidgetBase import JobPollingWidgetMixin, ParameterNodeWidgetMixin
from ProstateAIMRML import add_volume_node, describe_volume, helper_node, image_from_volume_node

N4_QUALITIES = ("preview", "full")
NORMALIZE_METHODS = tuple(mrnormalize.METHODS)
REGISTRATION_TRANSFORMS = tuple(mrregistration.TRANSFORMS)
REGISTRATION_METRICS = tuple(mrregistration.METRIC_ON)

# Heat-map colour tables for the bias field, best first. The file-based ones ship with Slicer's
# colour files (absent in a bare slicer-core scene); the procedural/built-in ones always exist.
BIAS_FIELD_COLOR_NODE_IDS = (
    "vtkMRMLColorTableNodeFileInferno.txt",
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
    "vtkMRMLPETProceduralColorNodePET-Heat",
    "vtkMRMLColorTableNodeRainbow",
)


#
# MRStandardize
#


class MRStandardize(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = "MR Standardize"
        self.parent.categories = ["ProstateAI"]
        self.parent.dependencies = ["ProstateAICommon"]  # ProstateAICore, MRML glue, widget base
        self.parent.contributors = ["ProstateAI contributors"]
        self.parent.helpText = """
Standardise MR intensities so that images from different scanners and sessions become comparable,
and align diffusion images (ADC / high-b DWI) to T2.
<ul>
<li><b>N4</b>: Preview (about 2 s) shows the corrected image and the bias field as a heat map;
Apply runs the full-quality correction in the background (Cancel stops it) into <i>new</i> volumes.</li>
<li><b>Nyul</b>: fit a standard histogram scale on several volumes (saved as JSON), apply it to a
volume; histograms before/after with the standard landmarks.</li>
<li><b>Normalise</b>: percentile (p1 → 0, p99 → 1) or z-score, optionally inside a mask.</li>
<li><b>Registration</b>: moving (ADC/DWI) onto fixed (T2), rigid/affine/BSpline with restarts, in the
background; a transform node, the resampled volume, blend and checkerboard views, and the gradient
correlation before/after.</li>
</ul>
Input volumes are never modified.
See the <a href="https://github.com/prostateai/SlicerProstateAI">project page</a> for details.
"""
        self.parent.acknowledgementText = """
Part of the ProstateAI extension. N4: Tustison N.J. et al., "N4ITK: Improved N3 Bias Correction",
IEEE TMI 2010. Histogram standardisation: Nyul L.G., Udupa J.K., "On standardizing the MR image
intensity scale", Magn Reson Med 1999. Registration with SimpleITK (Lowekamp B.C. et al. 2013).
"""


#
# MRStandardizeParameterNode
#


@parameterNodeWrapper
class MRStandardizeParameterNode:
    """Module state. 0 means "the preset's value" for the N4 shrink factor and iterations."""

    inputVolume: vtkMRMLScalarVolumeNode
    # N4
    n4Mask: vtkMRMLLabelMapVolumeNode
    n4Quality: Annotated[str, Choice(N4_QUALITIES)] = "full"
    n4Shrink: Annotated[int, WithinRange(0, 8)] = 0
    n4Iterations: Annotated[int, WithinRange(0, 500)] = 0
    biasFieldOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showCorrected: bool = True
    # Nyul
    nyulModelPath: str = ""
    nyulCutTails: bool = False
    # normalise
    normalizeMethod: Annotated[str, Choice(NORMALIZE_METHODS)] = "percentile"
    normalizeMask: vtkMRMLLabelMapVolumeNode
    normalizeLowPercentile: Annotated[float, WithinRange(0.0, 50.0)] = 1.0
    normalizeHighPercentile: Annotated[float, WithinRange(50.0, 100.0)] = 99.0
    # registration
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    glandMask: vtkMRMLLabelMapVolumeNode
    transformType: Annotated[str, Choice(REGISTRATION_TRANSFORMS)] = "rigid"
    metricOn: Annotated[str, Choice(REGISTRATION_METRICS)] = "intensity"
    restarts: Annotated[int, WithinRange(1, 100)] = 1
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    registrationIterations: Annotated[int, WithinRange(1, 1000)] = 100
    blendOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# MRStandardizeWidget
#


class MRStandardizeWidget(ParameterNodeWidgetMixin, JobPollingWidgetMixin, ScriptedLoadableModuleWidget,  # noqa: F405
                          VTKObservationMixin):
    """Thin GUI: all state is in the parameter node, all work in MRStandardizeLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._plotWidget = None
        self._n4Nodes = {}  # "input", "corrected", "field": shown by the overlay and the before/after toggle
        self._viewState = {}  # last display parameters applied, so only changed ones touch the views
        self._registrationNodes = {}  # "fixed", "resampled"
        self._nyulCharts = {}  # "before" / "after" -> vtkMRMLPlotChartNode

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        self.loadModuleUi("MRStandardize")
        self.logic = MRStandardizeLogic()

        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.nyulPlotFrame.layout().addWidget(self._plotWidget)
        self.setupJobPolling()

        self.ui.n4PreviewButton.connect("clicked(bool)", self.onN4Preview)
        self.ui.n4ApplyButton.connect("clicked(bool)", self.onN4Apply)
        self.ui.nyulBrowseButton.connect("clicked(bool)", self.onNyulBrowse)
        self.ui.nyulFitButton.connect("clicked(bool)", self.onNyulFit)
        self.ui.nyulApplyButton.connect("clicked(bool)", self.onNyulApply)
        self.ui.nyulShowBeforeButton.connect("clicked(bool)", lambda *_: self._showNyulChart("before"))
        self.ui.nyulShowAfterButton.connect("clicked(bool)", lambda *_: self._showNyulChart("after"))
        self.ui.normalizeApplyButton.connect("clicked(bool)", self.onNormalizeApply)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onCheckerboard)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.discardRunningJob()
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        self.discardRunningJob()
        self._n4Nodes, self._registrationNodes, self._nyulCharts = {}, {}, {}
        super().onSceneStartClose(caller, event)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self.ui.inputInfoLabel.text = describe_volume(p.inputVolume)
        # N4 overlay and registration blend share the foreground layer: only the one whose
        # parameters changed takes the views.
        state = {"n4": (p.showCorrected, p.biasFieldOpacity), "blend": p.blendOpacity}
        previous, self._viewState = self._viewState, state
        if previous and previous["n4"] != state["n4"]:
            self._updateN4Views()
        if previous and previous["blend"] != state["blend"]:
            self._updateBlend()
        self._updateButtons()

    # -- view updates driven by the parameters ----------------------------------------------------

    def _updateN4Views(self) -> None:
        """Before/after toggle and bias-field opacity act on the last N4 result (display only)."""
        nodes = self._n4Nodes
        if not nodes or slicer.mrmlScene.GetNodeByID(nodes["corrected"].GetID()) is None:
            return
        p = self._parameterNode
        self.logic.showBeforeAfter(nodes["input"], nodes["corrected"], p.showCorrected)
        self.logic.showBiasFieldOverlay(nodes["field"], p.biasFieldOpacity)

    def _updateBlend(self) -> None:
        nodes = self._registrationNodes
        if nodes and slicer.mrmlScene.GetNodeByID(nodes["resampled"].GetID()) is not None:
            self.logic.showRegistrationBlend(nodes["fixed"], nodes["resampled"], self._parameterNode.blendOpacity)

    def _updateButtons(self) -> None:
        p = self._parameterNode
        idle = not self.jobRunning
        hasInput = p.inputVolume is not None
        self.ui.n4PreviewButton.enabled = idle and hasInput
        self.ui.n4ApplyButton.enabled = idle and hasInput
        self.ui.nyulApplyButton.enabled = hasInput and bool(p.nyulModelPath)
        self.ui.nyulFitButton.enabled = bool(p.nyulModelPath)
        self.ui.normalizeApplyButton.enabled = hasInput
        self.ui.registerButton.enabled = idle and p.fixedVolume is not None and p.movingVolume is not None
        self.ui.checkerboardButton.enabled = bool(self._registrationNodes)
        self.ui.cancelButton.enabled = not idle

    # -- error and status display -----------------------------------------------------------------

    def _run(self, what: str, function):
        """Run `function()`; show InputError messages as they are and other errors without a traceback."""
        self.ui.statusLabel.text = ""
        self.ui.timeLabel.text = ""
        start = time.perf_counter()
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            result = function()
        except InputError as error:
            self._fail(str(error))
            return None
        except Exception as error:  # unexpected: the traceback goes to the log, the user gets the message
            logging.exception(f"MR Standardize: {what} failed")
            self._fail(f"{what} failed: {error}")
            return None
        finally:
            qt.QApplication.restoreOverrideCursor()
        self.ui.timeLabel.text = f"{what}: {time.perf_counter() - start:.1f} s"
        return result

    # -- N4 -----------------------------------------------------------------------------------------

    def onN4Preview(self) -> None:
        p = self._parameterNode
        settings = self.logic.n4SettingsFromParameters(p)
        result = self._run("N4 preview", lambda: self.logic.previewN4(p.inputVolume, p.n4Mask, settings))
        if result is not None:
            self._showN4Result(p.inputVolume, *result)

    def onN4Apply(self) -> None:
        p = self._parameterNode
        settings = self.logic.n4SettingsFromParameters(p)
        started = self._run("N4 start", lambda: self.logic.startN4Job(p.inputVolume, p.n4Mask, settings))
        if started is not None:
            self.startJob(*started, "N4", {"kind": "n4", "input": p.inputVolume})

    def _showN4Result(self, inputNode, correctedNode, fieldNode) -> None:
        self._n4Nodes = {"input": inputNode, "corrected": correctedNode, "field": fieldNode}
        self._updateN4Views()

    # -- Nyul ---------------------------------------------------------------------------------------

    def onNyulBrowse(self) -> None:
        path = qt.QFileDialog.getSaveFileName(
            None, "Nyul model", self._parameterNode.nyulModelPath or "nyul_model.json", "JSON (*.json)"
        )
        if path:
            self._parameterNode.nyulModelPath = path

    def _nyulVolumes(self) -> list:
        return list(self.ui.nyulVolumesComboBox.checkedNodes())

    def onNyulFit(self) -> None:
        p = self._parameterNode
        volumes = self._nyulVolumes()
        model = self._run("Nyul fit", lambda: self.logic.fitNyul(volumes, p.nyulModelPath, cutTails=p.nyulCutTails))
        if model is None:
            return
        self.ui.statusLabel.text = f"Model from {len(volumes)} volumes saved to {p.nyulModelPath}"
        charts = self._run("Nyul histograms", lambda: self.logic.nyulBeforeAfterCharts(volumes, model))
        if charts is not None:
            self._nyulCharts = charts
            self._showNyulChart("after")

    def onNyulApply(self) -> None:
        p = self._parameterNode
        self._run("Nyul apply", lambda: self.logic.applyNyul(p.inputVolume, p.nyulModelPath))

    def _showNyulChart(self, which: str) -> None:
        chart = self._nyulCharts.get(which)
        if chart is None:
            return
        viewNode = self.logic.plotViewNode()
        viewNode.SetPlotChartNodeID(chart.GetID())
        self._plotWidget.setMRMLPlotViewNode(viewNode)

    # -- normalise ----------------------------------------------------------------------------------

    def onNormalizeApply(self) -> None:
        p = self._parameterNode
        self._run(
            "Normalise",
            lambda: self.logic.normalizeVolume(
                p.inputVolume, p.normalizeMethod, p.normalizeMask, p.normalizeLowPercentile, p.normalizeHighPercentile
            ),
        )

    # -- registration -------------------------------------------------------------------------------

    def onRegister(self) -> None:
        p = self._parameterNode
        settings = self.logic.registrationSettingsFromParameters(p)
        started = self._run(
            "Registration start",
            lambda: self.logic.startRegistrationJob(p.fixedVolume, p.movingVolume, settings, p.glandMask),
        )
        if started is not None:
            self.startJob(*started, "Registration", {"kind": "register", "fixed": p.fixedVolume, "moving": p.movingVolume})

    def onCheckerboard(self) -> None:
        nodes = self._registrationNodes
        self._run("Checkerboard", lambda: self.logic.createCheckerboard(nodes["fixed"], nodes["resampled"]))

    # -- background jobs ----------------------------------------------------------------------------

    def _finishJob(self, running) -> None:
        """Load a finished job's outputs into new nodes (or report why there are none)."""
        job, tempdir, nodes = running.job, running.tempdir, running.context
        try:
            if nodes["kind"] == "n4":
                corrected, field = self.logic.finishN4Job(job, tempdir, nodes["input"])
                self._showN4Result(nodes["input"], corrected, field)
                self.ui.statusLabel.text = f"N4 done: '{corrected.GetName()}', '{field.GetName()}'"
            else:
                transformNode, resampled, report = self.logic.finishRegistrationJob(
                    job, tempdir, nodes["fixed"], nodes["moving"]
                )
                self._registrationNodes = {"fixed": nodes["fixed"], "resampled": resampled}
                self.ui.correlationLabel.text = self.logic.describeRegistrationReport(report)
                self.ui.statusLabel.text = f"Registration done: '{transformNode.GetName()}', '{resampled.GetName()}'"
                self._updateBlend()
        except Cancelled:
            self.ui.statusLabel.text = "Cancelled: nothing was written."
        except InputError as error:
            self._fail(str(error))
        except Exception as error:
            logging.exception("MR Standardize: loading job results failed")
            self._fail(f"Loading the results failed: {error}")


#
# MRStandardizeLogic
#


class MRStandardizeLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """MRML glue around MRStandardizeLib; usable from the Python console and other modules without the GUI."""

    HISTOGRAM_BINS = 100
    ROLE_ATTRIBUTE = "MRStandardize.Role"
    REPORT_ATTRIBUTE = "MRStandardize.Report"
    SOURCE_ATTRIBUTE = "MRStandardize.Source"  # ID of the volume an output was computed from
    N4_FILES = {"input": "input.nrrd", "mask": "mask.nrrd", "corrected": "corrected.nrrd", "field": "bias_field.nrrd"}
    REGISTRATION_FILES = {
        "fixed": "fixed.nrrd", "moving": "moving.nrrd", "mask": "gland.nrrd", "resampled": "resampled.nrrd",
        "report": "report.json",
    }

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return MRStandardizeParameterNode(super().getParameterNode())

    # -- input checks and conversions ---------------------------------------------------------------

    @staticmethod
    def _requireVolume(node, what: str = "input volume"):
        if node is None:
            raise InputError(f"Select the {what}.")
        if node.GetImageData() is None:
            raise InputError(f"The {what} '{node.GetName()}' has no voxel data.")
        return node

    @staticmethod
    def _imageOf(node, what: str = "input volume") -> sitk.Image:
        MRStandardizeLogic._requireVolume(node, what)
        if node.GetTransformNodeID():
            raise InputError(f"The {what} '{node.GetName()}' is under a transform; harden or remove it first.")
        return image_from_volume_node(node)

    @staticmethod
    def _ijkToRas(node) -> vtk.vtkMatrix4x4:
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return matrix

    def _addOnGrid(self, referenceNode, image: sitk.Image, name: str, role: str):
        """A new volume node holding `image`, with exactly the reference node's IJK→RAS matrix.

        Outputs computed on the reference grid come back through files or float conversions; copying
        the matrix (after checking the grids agree) keeps them bit-identical in geometry.
        """
        reference = image_from_volume_node(referenceNode)
        if not same_grid(reference, image, tolerance=1e-4):
            raise InputError(f"'{name}' is not on the grid of '{referenceNode.GetName()}'.")
        node = add_volume_node(referenceNode.GetScene(), image, name)
        node.SetIJKToRASMatrix(self._ijkToRas(referenceNode))
        node.SetAttribute(self.ROLE_ATTRIBUTE, role)
        node.SetAttribute(self.SOURCE_ATTRIBUTE, referenceNode.GetID())
        return node

    # -- N4 -----------------------------------------------------------------------------------------

    @staticmethod
    def n4SettingsFromParameters(parameters) -> dict:
        """{"quality", "shrink", "iterations"} from the parameters; None = the preset's value."""
        return {
            "quality": parameters.n4Quality,
            "shrink": int(parameters.n4Shrink) or None,
            "iterations": int(parameters.n4Iterations) or None,
        }

    def previewN4(self, inputNode, maskNode=None, settings=None, progress=None):
        """Fast in-process N4 (quality "preview"); returns (correctedNode, fieldNode), both new nodes.

        `settings` may override "shrink" and "iterations" (the quality is always "preview" here).
        The input node is never modified; nothing is added when the input is unusable.
        """
        settings = settings or {}
        image = self._imageOf(inputNode)
        mask = self._imageOf(maskNode, "N4 mask") if maskNode is not None else None
        iterations = settings.get("iterations")
        result = n4_correct(
            image, mask, quality="preview", progress=progress, shrink_factor=settings.get("shrink"),
            iterations=(int(iterations),) if iterations else None,
        )
        return self._addN4Nodes(inputNode, result.corrected, result.bias_field, "preview")

    def _addN4Nodes(self, inputNode, corrected: sitk.Image, field: sitk.Image, quality: str):
        name = inputNode.GetName()
        if quality == "preview":
            # Previews are tried again and again: each one replaces the input's previous preview.
            for role in ("n4-preview-corrected", "n4-preview-field"):
                self._removeOutputOf(inputNode, role)
        prefix = "n4-preview" if quality == "preview" else "n4"
        correctedNode = self._addOnGrid(inputNode, corrected, f"{name} N4 {quality}", f"{prefix}-corrected")
        fieldNode = self._addOnGrid(inputNode, field, f"{name} N4 bias field", f"{prefix}-field")
        correctedNode.GetDisplayNode().AutoWindowLevelOn()
        return correctedNode, fieldNode

    def _removeOutputOf(self, sourceNode, role: str) -> None:
        scene = sourceNode.GetScene()
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene):
            if node.GetAttribute(self.ROLE_ATTRIBUTE) == role and node.GetAttribute(self.SOURCE_ATTRIBUTE) == sourceNode.GetID():
                scene.RemoveNode(node)

    def startN4Job(self, inputNode, maskNode=None, settings=None):
        """Start N4 out of process (`prostateai n4`); returns (job, tempdir). Finish with finishN4Job.

        The input (and mask) are written to a fresh temporary folder; the job writes its outputs there.
        """
        settings = {"quality": "full", **(settings or {})}
        image = self._imageOf(inputNode)
        mask = self._imageOf(maskNode, "N4 mask") if maskNode is not None else None
        tempdir = tempfile.mkdtemp(prefix="mrstandardize-n4-")
        files = {key: os.path.join(tempdir, name) for key, name in self.N4_FILES.items()}
        sitk.WriteImage(image, files["input"])
        args = ["n4", files["input"], files["corrected"], "--field", files["field"], "--quality", settings["quality"]]
        if mask is not None:
            sitk.WriteImage(mask, files["mask"])
            args += ["--mask", files["mask"]]
        if settings.get("shrink"):
            args += ["--shrink", str(int(settings["shrink"]))]
        if settings.get("iterations"):
            args += ["--iterations", str(int(settings["iterations"]))]
        return start_job("MRStandardizeLib.cli", args, tempdir, "N4 correction"), tempdir

    def finishN4Job(self, job, tempdir: str, inputNode):
        """Load a finished N4 job's outputs as new nodes on the input's grid; returns (correctedNode, fieldNode).

        Raises Cancelled / InputError for a cancelled / failed job. The temporary folder is removed.
        """
        try:
            require_done(job, "N4")
            files = {key: os.path.join(tempdir, name) for key, name in self.N4_FILES.items()}
            corrected, field = sitk.ReadImage(files["corrected"]), sitk.ReadImage(files["field"])
            quality = job.args[job.args.index("--quality") + 1] if "--quality" in job.args else "full"
            return self._addN4Nodes(inputNode, corrected, field, quality)
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)

    # -- jobs ---------------------------------------------------------------------------------------

    # -- slice views (display only) -----------------------------------------------------------------

    @staticmethod
    def biasFieldColorNodeID(scene=None) -> str:
        """The first heat-map colour table of BIAS_FIELD_COLOR_NODE_IDS present in the scene."""
        scene = scene or slicer.mrmlScene
        for nodeID in BIAS_FIELD_COLOR_NODE_IDS:
            if scene.GetNodeByID(nodeID) is not None:
                return nodeID
        raise InputError("No heat-map colour table found in the scene (Colors module not loaded?).")

    def showBiasFieldOverlay(self, fieldNode, opacity: float = 0.5):
        """Show the bias field as a heat map in the slice views' foreground, over the current background."""
        displayNode = fieldNode.GetDisplayNode()
        if displayNode is None:
            fieldNode.CreateDefaultDisplayNodes()
            displayNode = fieldNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID(self.biasFieldColorNodeID(fieldNode.GetScene()))
        low, high = fieldNode.GetImageData().GetScalarRange()
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(low, high if high > low else low + 1e-6)
        slicer.util.setSliceViewerLayers(foreground=fieldNode, foregroundOpacity=float(opacity))
        return displayNode

    @staticmethod
    def showBeforeAfter(inputNode, correctedNode, showCorrected: bool) -> None:
        """Swap the slice views' background between the input (before) and the corrected volume (after)."""
        slicer.util.setSliceViewerLayers(background=correctedNode if showCorrected else inputNode)

    @staticmethod
    def showRegistrationBlend(fixedNode, resampledNode, opacity: float = 0.5) -> None:
        """Fade between fixed (background) and registered moving (foreground) with the foreground opacity."""
        slicer.util.setSliceViewerLayers(background=fixedNode, foreground=resampledNode, foregroundOpacity=float(opacity))

    # -- Nyul ---------------------------------------------------------------------------------------

    def fitNyul(self, volumeNodes, modelPath: str, cutTails: bool = False, progress=None):
        """Fit a Nyul model on the volumes (foreground = voxels > 0) and save it as JSON; returns the model."""
        volumeNodes = list(volumeNodes or [])
        if len(volumeNodes) < 2:
            raise InputError("Nyul fit: select at least two training volumes.")
        if not modelPath or not str(modelPath).lower().endswith(".json"):
            raise InputError("Nyul fit: choose a model file ending in .json.")
        images = [self._imageOf(node, "Nyul training volume") for node in volumeNodes]
        model = nyul.fit(images, None, nyul.NyulConfig(cut_tails=bool(cutTails)), progress=progress)
        nyul.save_model(model, modelPath)
        return model

    def applyNyul(self, volumeNode, model):
        """Standardise a volume with a model (or a model JSON path) into a new node."""
        if not isinstance(model, nyul.NyulModel):
            if not model:
                raise InputError("Nyul apply: choose a model file first (fit one, or select a saved .json).")
            model = nyul.load_model(model)
        image = self._imageOf(volumeNode)
        return self._addOnGrid(volumeNode, nyul.apply(image, model), f"{volumeNode.GetName()} Nyul", "nyul")

    def _helperNode(self, scene, className: str, role: str, name: str):
        """The module's plot helper node with this role (one per scene), created when missing."""
        return helper_node(scene, className, self.ROLE_ATTRIBUTE, role, name)

    def plotViewNode(self, scene=None):
        """The plot view node the widget's embedded plot shows (one per scene)."""
        return self._helperNode(scene or slicer.mrmlScene, "vtkMRMLPlotViewNode", "plot-view", "MR Standardize plot view")

    def nyulBeforeAfterCharts(self, volumeNodes, model) -> dict:
        """{"before": chart, "after": chart}: histograms of the volumes as they are and standardised."""
        return {
            "before": self.updateHistogramPlots(volumeNodes, None),
            "after": self.updateHistogramPlots(volumeNodes, model),
        }

    def updateHistogramPlots(self, volumeNodes, model=None):
        """Foreground histograms, one curve per volume; returns the vtkMRMLPlotChartNode.

        With a model the volumes are standardised first and the standard landmarks are marked as an
        extra series ("after" chart); without one the raw intensities are shown ("before" chart).
        One table per chart holds "<name> intensity" / "<name> density" column pairs.
        """
        volumeNodes = list(volumeNodes or [])
        if not volumeNodes:
            raise InputError("Select at least one volume to plot its histogram.")
        scene = volumeNodes[0].GetScene()
        stage = "after" if model is not None else "before"
        images = [self._imageOf(node, "histogram volume") for node in volumeNodes]
        masks = None
        if model is not None:
            # The foreground is taken from the original intensities: standardisation also maps the
            # background, which would otherwise count as foreground after it.
            masks = [self._foregroundMask(image, model.config) for image in images]
            images = [nyul.apply(image, model) for image in images]
        config = model.config if model is not None else None
        curves = nyul.histograms(images, masks, config, bins=self.HISTOGRAM_BINS)
        table = self._helperNode(scene, "vtkMRMLTableNode", f"nyul-table-{stage}", f"Nyul histograms {stage}")
        columns, names = [], []
        for node, (centres, density) in zip(volumeNodes, curves):
            columns += [np.asarray(centres, float), np.asarray(density, float)]
            names += [f"{node.GetName()} intensity", f"{node.GetName()} density"]
        table.RemoveAllColumns()
        slicer.util.updateTableFromArray(table, columns, names)

        chart = self._helperNode(scene, "vtkMRMLPlotChartNode", f"nyul-chart-{stage}", f"Nyul histograms {stage}")
        chart.RemoveAllPlotSeriesNodeIDs()
        chart.SetTitle("Histograms after Nyul standardisation" if model else "Histograms before standardisation")
        chart.SetXAxisTitle("Standardised intensity" if model else "Intensity")
        chart.SetYAxisTitle("Density")
        chart.SetLegendVisibility(True)
        for index, node in enumerate(volumeNodes):
            series = self._helperNode(scene, "vtkMRMLPlotSeriesNode", f"nyul-{stage}-{index}", node.GetName())
            series.SetName(node.GetName())
            self._lineSeries(series, table, f"{node.GetName()} intensity", f"{node.GetName()} density")
            series.SetUniqueColor()
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        self._removeExtraSeries(scene, stage, len(volumeNodes))
        if model is not None:
            top = max(float(np.max(density)) for _, density in curves) if curves else 1.0
            chart.AddAndObservePlotSeriesNodeID(self._landmarkSeries(scene, model.standard_landmarks, top).GetID())
        return chart

    @staticmethod
    def _foregroundMask(image: sitk.Image, config) -> sitk.Image:
        """uint8 mask of the voxels the Nyul foreground rule selects in the original image."""
        array = sitk.GetArrayFromImage(image)
        if config.foreground == "all":
            inside = np.ones(array.shape, dtype=bool)
        elif config.foreground == "above-mean":
            inside = array > array.mean()
        else:
            inside = array > 0
        mask = sitk.GetImageFromArray(inside.astype(np.uint8))
        mask.CopyInformation(image)
        return mask

    @staticmethod
    def _lineSeries(series, table, xColumn: str, yColumn: str) -> None:
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(xColumn)
        series.SetYColumnName(yColumn)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetLineStyle(series.LineStyleSolid)

    def _removeExtraSeries(self, scene, stage: str, count: int) -> None:
        """Drop series left from an earlier plot of more volumes."""
        prefix = f"nyul-{stage}-"
        for node in slicer.util.getNodesByClass("vtkMRMLPlotSeriesNode", scene):
            role = node.GetAttribute(self.ROLE_ATTRIBUTE) or ""
            if role.startswith(prefix) and role[len(prefix):].isdigit() and int(role[len(prefix):]) >= count:
                scene.RemoveNode(node)

    def _landmarkSeries(self, scene, landmarks, top: float):
        """Standard landmarks as a comb of vertical lines (0 → top at each landmark)."""
        xs = np.repeat(np.asarray(landmarks, float), 3)
        ys = np.tile([0.0, top, 0.0], len(landmarks))
        table = self._helperNode(scene, "vtkMRMLTableNode", "nyul-landmarks-table", "Nyul standard landmarks")
        table.RemoveAllColumns()
        slicer.util.updateTableFromArray(table, (xs, ys), ["landmark", "height"])
        series = self._helperNode(scene, "vtkMRMLPlotSeriesNode", "nyul-landmarks", "Standard landmarks")
        self._lineSeries(series, table, "landmark", "height")
        series.SetLineStyle(series.LineStyleDash)
        series.SetColor(0.2, 0.2, 0.2)
        return series

    # -- normalise ----------------------------------------------------------------------------------

    def normalizeVolume(self, inputNode, method: str = "percentile", maskNode=None, low: float = 1.0, high: float = 99.0):
        """Percentile ((I - p_low) / (p_high - p_low)) or z-score normalisation into a new node."""
        image = self._imageOf(inputNode)
        mask = self._imageOf(maskNode, "normalisation mask") if maskNode is not None else None
        out = mrnormalize.normalize(image, method, mask, float(low), float(high))
        return self._addOnGrid(inputNode, out, f"{inputNode.GetName()} {method}", f"normalize-{method}")

    # -- registration -------------------------------------------------------------------------------

    @staticmethod
    def registrationSettingsFromParameters(parameters) -> dict:
        return {
            "transform": parameters.transformType,
            "metric_on": parameters.metricOn,
            "restarts": int(parameters.restarts),
            "seed": int(parameters.seed),
            "iterations": int(parameters.registrationIterations),
        }

    @staticmethod
    def _transformFileName(transform: str) -> str:
        # Linear transforms as text .tfm; BSpline composites need HDF5.
        return "transform.h5" if transform == "bspline" else "transform.tfm"

    def startRegistrationJob(self, fixedNode, movingNode, settings=None, glandMaskNode=None):
        """Register moving (ADC/DWI) onto fixed (T2) out of process (`prostateai register`); returns (job, tempdir)."""
        settings = {"transform": "rigid", "metric_on": "intensity", "restarts": 1, "seed": 0, "iterations": 100,
                    **(settings or {})}
        if fixedNode is not None and movingNode is not None and fixedNode.GetID() == movingNode.GetID():
            raise InputError("Choose different fixed and moving volumes.")
        fixed = self._imageOf(fixedNode, "fixed volume")
        moving = self._imageOf(movingNode, "moving volume")
        mask = self._imageOf(glandMaskNode, "gland mask") if glandMaskNode is not None else None
        if mask is not None and not same_grid(fixed, mask, tolerance=1e-3):
            raise InputError(f"The gland mask '{glandMaskNode.GetName()}' is not on the fixed volume's grid.")
        tempdir = tempfile.mkdtemp(prefix="mrstandardize-register-")
        files = {key: os.path.join(tempdir, name) for key, name in self.REGISTRATION_FILES.items()}
        sitk.WriteImage(fixed, files["fixed"])
        sitk.WriteImage(moving, files["moving"])
        args = [
            "register", files["fixed"], files["moving"], files["resampled"],
            "--save-transform", os.path.join(tempdir, self._transformFileName(settings["transform"])),
            "--report", files["report"], "--transform", settings["transform"], "--metric-on", settings["metric_on"],
            "--restarts", str(int(settings["restarts"])), "--seed", str(int(settings["seed"])),
            "--iterations", str(int(settings["iterations"])),
        ]
        if mask is not None:
            sitk.WriteImage(mask, files["mask"])
            args += ["--selection-mask", files["mask"]]
        return start_job("MRStandardizeLib.cli", args, tempdir, "registration"), tempdir

    def finishRegistrationJob(self, job, tempdir: str, fixedNode, movingNode):
        """Load a finished registration: (transformNode, resampledNode on the fixed grid, report dict).

        The transform maps fixed → moving points (ITK convention), which Slicer reads as the moving
        volume's parent transform; it is added but not applied, so the moving volume stays as it is.
        """
        try:
            require_done(job, "Registration")
            files = {key: os.path.join(tempdir, name) for key, name in self.REGISTRATION_FILES.items()}
            report = json.loads(open(files["report"]).read())
            transformType = job.args[job.args.index("--transform") + 1]
            name = f"{movingNode.GetName()} to {fixedNode.GetName()}"
            transformNode = self.loadTransform(os.path.join(tempdir, self._transformFileName(transformType)),
                                               fixedNode.GetScene(), f"{name} {transformType}")
            resampled = self._addOnGrid(fixedNode, sitk.ReadImage(files["resampled"]), name, "registered")
            resampled.SetAttribute(self.REPORT_ATTRIBUTE, json.dumps(report))
            return transformNode, resampled, report
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)

    @staticmethod
    def loadTransform(path: str, scene, name: str):
        """Read an ITK transform file into a new node (linear → vtkMRMLLinearTransformNode, else vtkMRMLTransformNode).

        Uses the transform storage node directly (works without the application's IO manager); the
        storage node is removed afterwards because the file is temporary.
        """
        linear = sitk.ReadTransform(path).GetName() in ("Euler3DTransform", "AffineTransform", "VersorRigid3DTransform")
        className = "vtkMRMLLinearTransformNode" if linear else "vtkMRMLTransformNode"
        storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
        node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
        try:
            storage.SetFileName(path)
            if not storage.ReadData(node):
                scene.RemoveNode(node)
                raise InputError(f"Could not read the transform file '{os.path.basename(path)}'.")
        finally:
            scene.RemoveNode(storage)
        return node

    def createCheckerboard(self, fixedNode, resampledNode, pattern=(8, 8, 1)):
        """Checkerboard of fixed and registered moving (percentile-normalised) as a new node on the fixed grid."""
        fixed = self._imageOf(fixedNode, "fixed volume")
        resampled = self._imageOf(resampledNode, "registered volume")
        board = registration_check.checkerboard(fixed, resampled, pattern)
        return self._addOnGrid(fixedNode, board, f"{resampledNode.GetName()} checkerboard", "checkerboard")

    @staticmethod
    def describeRegistrationReport(report: dict) -> str:
        """One line for the correlation label: gradient correlation before → after, and the time."""
        before = report.get("gradient_correlation_before")
        after = report.get("gradient_correlation_after")
        if before is None or after is None:
            return "Gradient correlation: not reported"
        text = (
            f"Gradient correlation {float(before):.3f} → {float(after):.3f} "
            f"({report.get('transform_type', '?')}, {report.get('seconds', 0):.1f} s)"
        )
        # Registration that lowered the correlation: the scanner alignment was kept (or not); say so.
        return f"{text}. Warning: {report['warning']}" if report.get("warning") else text


#
# MRStandardizeTest
#


class MRStandardizeTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Self-test in Slicer on synthetic MR-like volumes (smooth bias field over a bright body)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_MRStandardize_synthetic()

    @staticmethod
    def _expect(condition, message):
        if not condition:
            raise AssertionError(message)

    @staticmethod
    def _syntheticVolume(name: str, scale: float, seed: int):
        rng = np.random.default_rng(seed)
        _, y, x = np.mgrid[0:12, 0:48, 0:48].astype(np.float32)
        body = ((x - 24) ** 2 + (y - 24) ** 2) < 18**2
        bias = 1.0 + 0.4 * (x / 47.0)  # smooth multiplicative bias along x
        array = (body * (100.0 + 20.0 * rng.random(body.shape)) * bias * scale).astype(np.float32)
        return slicer.util.addVolumeFromArray(array, name=name)

    def test_MRStandardize_synthetic(self):
        logic = MRStandardizeLogic()
        nodes = [self._syntheticVolume(f"mr{i}", 1.0 + 0.5 * i, i) for i in range(3)]
        before = np.array(slicer.util.arrayFromVolume(nodes[0]), copy=True)

        self.delayDisplay("N4 preview: corrected and bias field on the input grid")
        corrected, field = logic.previewN4(nodes[0])
        self._expect(corrected.GetImageData().GetDimensions() == nodes[0].GetImageData().GetDimensions(), "grid")
        self._expect(float(slicer.util.arrayFromVolume(field).min()) > 0, "bias field must be positive")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes[0]), before)

        self.delayDisplay("Normalise percentile")
        normalized = slicer.util.arrayFromVolume(logic.normalizeVolume(nodes[1], "percentile"))
        self._expect(abs(float(np.percentile(normalized, 99))- 1.0) < 1e-3, "p99 should map to 1")

        self.delayDisplay("Nyul fit, apply and histograms")
        modelPath = os.path.join(tempfile.mkdtemp(prefix="mrstandardize-test-"), "nyul.json")
        model = logic.fitNyul(nodes, modelPath)
        self._expect(os.path.exists(modelPath), "model JSON not written")
        logic.applyNyul(nodes[2], modelPath)
        chart = logic.updateHistogramPlots(nodes, model)
        self._expect(chart.GetNumberOfPlotSeriesNodes() == len(nodes) + 1, "one curve per volume + landmarks")
        shutil.rmtree(os.path.dirname(modelPath), ignore_errors=True)
        self.delayDisplay("Test passed")
