"""CT Preprocess: Slicer module for CT intensity preprocessing (windowing, denoise, resample, normalise, crop/pad).

The computation lives in the GUI-free `CTPreprocessLib` (shared with the command line and the browser
app). This file only holds the Slicer glue:

- `CTPreprocessParameterNode`: the module state, saved with the scene and bound to the .ui widgets.
- `CTPreprocessWidget`: thin GUI; preset menu and level/width sliders change only the display of the
  input (live preview), a histogram marks the window, Apply writes a new output volume.
- `CTPreprocessLogic`: MRML glue (parameters -> `CTPipelineConfig`, volume nodes <-> SimpleITK images,
  display window/level, histogram table and plot nodes). Usable without the GUI.
- `CTPreprocessTest`: self-test on the bundled sample CT.
"""

import dataclasses
import enum
import json
import logging
import os
import time
from typing import Annotated

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from CTPreprocessLib.denoise import ANISOTROPIC_KINDS
from CTPreprocessLib.pipeline import (
    DENOISE_METHODS,
    DTYPES,
    INTERPOLATORS,
    NORMALIZE_METHODS,
    WINDOW_MODES,
    CTPipelineConfig,
    run_pipeline,
)
from CTPreprocessLib.window import (
    PRESET_LABELS,
    PRESETS,
    percentile_window,
    window_from_level_width,
    window_from_preset,
)
from ProstateAICore.errors import InputError
from ProstateAICore.intensity import histogram
from ProstateAIWidgetBase import ParameterNodeWidgetMixin
from ProstateAIMRML import add_volume_node, helper_node, image_from_volume_node, update_volume_node_from_image

SAMPLE_CT_FILE = "sample_ct_abdomen_pelvis.nii.gz"


def sampleDataPath() -> str:
    """The bundled sample CT (Resources/SampleData of the extension, two folders up from this file)."""
    extensionDir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(extensionDir, "Resources", "SampleData", SAMPLE_CT_FILE)


#
# CTPreprocess
#


class CTPreprocess(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = "CT Preprocess"
        self.parent.categories = ["ProstateAI"]
        self.parent.dependencies = ["ProstateAICommon"]  # ProstateAICore, MRML glue, widget base
        self.parent.contributors = ["ProstateAI contributors"]
        self.parent.helpText = """
Prepare CT volumes for analysis and deep learning, in the order the literature recommends:
denoise, resample, window/clip, normalise, crop/pad.
<ul>
<li><b>Window</b>: organ presets (brain, lungs, liver, bone...) or a custom level/width. Moving the
sliders only changes how the <i>input</i> is displayed (its voxels are never modified); the histogram
marks the window that Apply will use.</li>
<li><b>Apply</b> writes a <i>new</i> volume named "&lt;input&gt; preprocessed" (or the selected output).</li>
<li>For 8-bit output the window is applied first (the clip is irreversible); otherwise a wide clip to
[-1350, 2000] HU removes metal-artefact extremes.</li>
</ul>
See the <a href="https://github.com/prostateai/SlicerProstateAI">project page</a> for details.
"""
        self.parent.acknowledgementText = """
Part of the ProstateAI extension. The bundled sample CT is the TotalSegmentator test volume
<i>example_ct.nii.gz</i> (Apache-2.0): Wasserthal J. et al., "TotalSegmentator: Robust Segmentation of
104 Anatomic Structures in CT Images", Radiology: Artificial Intelligence 2023. Window presets follow
conventional radiology level/width values.
"""


#
# Parameters
#

# Preset menu: values are the library's preset names, labels what a radiologist expects to read.
CTWindowPreset = enum.Enum("CTWindowPreset", [(name, name) for name in PRESETS])


def _presetLabel(preset) -> str:
    level, width = PRESETS[preset.value]
    return f"{PRESET_LABELS.get(preset.value, preset.value)}: L {level:g} / W {width:g}"


CTWindowPreset.label = _presetLabel


@parameterNodeWrapper
class CTPreprocessParameterNode:
    """Module state. Numeric ranges bound the GUI widgets; 0 means "keep" for spacing and "no crop" for size."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    # window / clip
    windowMode: Annotated[str, Choice(WINDOW_MODES)] = "preset"
    preset: CTWindowPreset = CTWindowPreset["abdomen_soft_tissue"]
    windowLevel: Annotated[float, WithinRange(-1500.0, 3000.0)] = 50.0
    windowWidth: Annotated[float, WithinRange(1.0, 5000.0)] = 400.0
    clipLow: Annotated[float, WithinRange(-3024.0, 4000.0)] = -1350.0
    clipHigh: Annotated[float, WithinRange(-3024.0, 4000.0)] = 2000.0
    quantileLow: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    quantileHigh: Annotated[float, WithinRange(0.0, 1.0)] = 0.99
    # normalise / storage
    normalize: Annotated[str, Choice(NORMALIZE_METHODS)] = "none"
    dtype: Annotated[str, Choice(DTYPES)] = "float32"
    # denoise
    denoise: Annotated[str, Choice(DENOISE_METHODS)] = "none"
    denoiseIterations: Annotated[int, WithinRange(1, 100)] = 5
    denoiseTimeStep: Annotated[float, WithinRange(0.001, 0.0625)] = 0.0625
    denoiseConductance: Annotated[float, WithinRange(0.1, 20.0)] = 3.0
    anisotropicKind: Annotated[str, Choice(ANISOTROPIC_KINDS)] = "gradient"
    medianRadius: Annotated[int, WithinRange(1, 10)] = 1
    gaussianSigma: Annotated[float, WithinRange(0.1, 20.0)] = 1.0
    # resample (0 = keep the input spacing along that axis)
    spacingX: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    spacingY: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    spacingZ: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    interpolator: Annotated[str, Choice(INTERPOLATORS)] = "bspline"
    # crop / pad (0 = no crop/pad)
    cropSizeX: Annotated[int, WithinRange(0, 4096)] = 0
    cropSizeY: Annotated[int, WithinRange(0, 4096)] = 0
    cropSizeZ: Annotated[int, WithinRange(0, 4096)] = 0
    autoPadValue: bool = True
    padValue: Annotated[float, WithinRange(-3024.0, 65535.0)] = -1024.0


def _plain(value):
    """Enum members (preset menu) to their plain value; everything else unchanged."""
    return value.value if isinstance(value, enum.Enum) else value


#
# CTPreprocessWidget
#


class CTPreprocessWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Thin GUI: all state is in the parameter node, all work in CTPreprocessLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._plotWidget = None
        self._reacting = False
        self._lastWindowState = None
        self._percentileCache = (None, None)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405

        self.loadModuleUi("CTPreprocess")

        self.logic = CTPreprocessLogic()

        # Histogram view (MRML plot chart shown in an embedded plot widget).
        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.histogramPlotFrame.layout().addWidget(self._plotWidget)
        self.ui.progressBar.visible = False

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.restoreDisplayButton.connect("clicked(bool)", self.onRestoreDisplayButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def setParameterNode(self, inputParameterNode) -> None:
        self._lastWindowState = None  # a new node (or none): the next update re-applies the window
        super().setParameterNode(inputParameterNode)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Keep preset, sliders, display preview and histogram consistent; guard against re-entry."""
        if self._parameterNode is None or self._reacting:
            return
        self._reacting = True
        try:
            self._syncWindow()
            self._updateHistogram()
        except InputError as error:
            self.ui.statusLabel.text = str(error)
        finally:
            self._reacting = False
        self._checkCanApply()

    def _syncWindow(self) -> None:
        p = self._parameterNode
        inputNode = p.inputVolume
        preset = _plain(p.preset)
        previous = self._lastWindowState
        if previous is not None and preset != previous[1]:
            # A preset was chosen: move the sliders to it and make it the window Apply uses.
            p.windowLevel, p.windowWidth = PRESETS[preset]
            p.windowMode = "preset"
        elif (
            previous is not None
            and (p.windowLevel, p.windowWidth) != previous[2:]
            and p.windowMode == "preset"
            and (p.windowLevel, p.windowWidth) != tuple(PRESETS[preset])
        ):
            # Sliders moved away from the preset: the window is now a custom one.
            p.windowMode = "custom"
        state = (inputNode.GetID() if inputNode else None, preset, p.windowLevel, p.windowWidth)
        self._lastWindowState = state
        if inputNode is not None and previous is not None and state != previous:
            lo, hi = window_from_level_width(p.windowLevel, p.windowWidth)
            self.logic.previewWindow(inputNode, lo, hi)

    def _applyWindow(self):
        """The window Apply will use (None when the window mode is "none"), for the histogram."""
        p = self._parameterNode
        inputNode = p.inputVolume
        if p.windowMode == "percentile" and inputNode is not None:
            key = (inputNode.GetID(), inputNode.GetImageData().GetMTime(), p.quantileLow, p.quantileHigh)
            if self._percentileCache[0] != key:
                self._percentileCache = (key, self.logic.windowFromParameters(p, inputNode))
            return self._percentileCache[1]
        return self.logic.windowFromParameters(p, inputNode)

    def _updateHistogram(self) -> None:
        inputNode = self._parameterNode.inputVolume
        if inputNode is None or inputNode.GetImageData() is None:
            self._plotWidget.setMRMLPlotViewNode(None)
            return
        chartNode = self.logic.updateHistogramPlot(inputNode, self._applyWindow())
        viewNode = self.logic.histogramPlotViewNode()
        viewNode.SetPlotChartNodeID(chartNode.GetID())
        self._plotWidget.setMRMLPlotViewNode(viewNode)

    def _checkCanApply(self) -> None:
        if self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = "Preprocess the input into a new volume (the input is not modified)"
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = "Select an input CT volume"
            self.ui.applyButton.enabled = False

    def onRestoreDisplayButton(self) -> None:
        inputNode = self._parameterNode.inputVolume if self._parameterNode else None
        if inputNode is not None:
            self.logic.restoreAutoWindow(inputNode)

    def _onProgress(self, fraction: float, message: str = "") -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def onApplyButton(self) -> None:
        p = self._parameterNode
        self.ui.timeLabel.text = ""
        self.ui.statusLabel.text = ""
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.applyButton.enabled = False  # progress updates process events: no second run meanwhile
        failure = None
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            config = self.logic.configFromParameters(p, p.inputVolume)
            outputNode, report = self.logic.process(
                p.inputVolume, p.outputVolume, config, progress=self._onProgress, referenceVolumeNode=p.referenceVolume
            )
        except InputError as error:
            failure = str(error)
        except Exception as error:  # unexpected: the traceback goes to the log, the user gets the message
            logging.exception("CT preprocessing failed")
            failure = f"CT preprocessing failed: {error}"
        finally:
            qt.QApplication.restoreOverrideCursor()
            self.ui.progressBar.visible = False
            self._checkCanApply()
        if failure is not None:
            self.ui.statusLabel.text = failure
            slicer.util.errorDisplay(failure)
            return
        self.ui.timeLabel.text = (
            f"Done in {report['total_seconds']:.2f} s ({report['logic_seconds']:.2f} s with the scene update)"
        )
        self.ui.statusLabel.text = f"Output: {outputNode.GetName()} ({self.logic.describeReport(report)})"
        slicer.util.setSliceViewerLayers(background=outputNode)


#
# CTPreprocessLogic
#


class CTPreprocessLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """MRML glue around CTPreprocessLib; usable from the Python console and other modules without the GUI."""

    HISTOGRAM_BINS = 256
    HISTOGRAM_ROLE_ATTRIBUTE = "CTPreprocess.HistogramRole"
    HISTOGRAM_SOURCE_ATTRIBUTE = "CTPreprocess.HistogramSource"
    REPORT_ATTRIBUTE = "CTPreprocess.Report"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return CTPreprocessParameterNode(super().getParameterNode())

    # -- parameters -> configuration ------------------------------------------------------------

    def configFromParameters(self, parameters, inputVolumeNode=None) -> CTPipelineConfig:
        """A CTPipelineConfig from the module parameters (the parameter node or any object with its fields).

        Spacing 0 keeps the input spacing along that axis (needs `inputVolumeNode`) and is ignored when a
        reference volume is selected; crop size 0 on all three axes means no crop/pad. The pad value is in HU.
        """
        return CTPipelineConfig(
            denoise=parameters.denoise,
            denoise_iterations=int(parameters.denoiseIterations),
            denoise_time_step=float(parameters.denoiseTimeStep),
            denoise_conductance=float(parameters.denoiseConductance),
            anisotropic_kind=parameters.anisotropicKind,
            median_radius=int(parameters.medianRadius),
            gaussian_sigma_mm=float(parameters.gaussianSigma),
            # A reference grid (passed to process()) replaces the spacing.
            spacing=None if parameters.referenceVolume else self._spacingFromParameters(parameters, inputVolumeNode),
            interpolator=parameters.interpolator,
            window_mode=parameters.windowMode,
            preset=_plain(parameters.preset),
            level=float(parameters.windowLevel),
            width=float(parameters.windowWidth),
            clip=(float(parameters.clipLow), float(parameters.clipHigh)),
            quantiles=(float(parameters.quantileLow), float(parameters.quantileHigh)),
            normalize=parameters.normalize,
            dtype=parameters.dtype,
            size=self._sizeFromParameters(parameters),
            pad_value=None if parameters.autoPadValue else float(parameters.padValue),
        )

    @staticmethod
    def _spacingFromParameters(parameters, inputVolumeNode):
        spacing = [float(parameters.spacingX), float(parameters.spacingY), float(parameters.spacingZ)]
        if not any(spacing):
            return None
        if not all(spacing):
            if inputVolumeNode is None:
                raise InputError("Output spacing: select an input volume to keep its spacing on the axes left at 0.")
            inputSpacing = inputVolumeNode.GetSpacing()
            spacing = [s if s else float(inputSpacing[axis]) for axis, s in enumerate(spacing)]
        return tuple(spacing)

    @staticmethod
    def _sizeFromParameters(parameters):
        size = (int(parameters.cropSizeX), int(parameters.cropSizeY), int(parameters.cropSizeZ))
        if not any(size):
            return None
        if not all(size):
            raise InputError(
                f"Crop/pad size {size[0]} x {size[1]} x {size[2]}: set all three sizes, or 0 on all three for no crop/pad."
            )
        return size

    def windowFromParameters(self, parameters, volumeNode=None):
        """(low, high) HU window the parameters select, or None for window mode "none"."""
        mode = parameters.windowMode
        if mode == "none":
            return None
        if mode == "preset":
            return tuple(window_from_preset(_plain(parameters.preset)))
        if mode == "custom":
            return tuple(window_from_level_width(parameters.windowLevel, parameters.windowWidth))
        if mode == "clip":
            return (float(parameters.clipLow), float(parameters.clipHigh))
        if mode == "percentile":
            if volumeNode is None:
                return None
            return tuple(percentile_window(slicer.util.arrayFromVolume(volumeNode), parameters.quantileLow, parameters.quantileHigh))
        raise InputError(f"Unknown window mode '{mode}'. Choose one of: {', '.join(WINDOW_MODES)}.")

    # -- display (never touches voxels) ---------------------------------------------------------

    @staticmethod
    def _displayNode(volumeNode):
        if volumeNode is None:
            raise InputError("Select an input volume first.")
        displayNode = volumeNode.GetDisplayNode()
        if displayNode is None:
            volumeNode.CreateDefaultDisplayNodes()
            displayNode = volumeNode.GetDisplayNode()
        return displayNode

    def previewWindow(self, volumeNode, lo: float, hi: float):
        """Show `volumeNode` with the window [lo, hi] (display only; voxel values are untouched)."""
        if not hi > lo:
            raise InputError(f"Window [{lo:g}, {hi:g}]: the upper end must be above the lower end.")
        displayNode = self._displayNode(volumeNode)
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(float(lo), float(hi))
        return displayNode

    def applyPreset(self, volumeNode, presetName: str):
        """Show `volumeNode` with a named window preset; returns the (low, high) window."""
        if presetName not in PRESETS:
            raise InputError(f"Unknown window preset '{presetName}'. Choose one of: {', '.join(PRESETS)}.")
        lo, hi = window_from_preset(presetName)
        self.previewWindow(volumeNode, lo, hi)
        return lo, hi

    def restoreAutoWindow(self, volumeNode):
        """Give the display back its automatic window/level."""
        displayNode = self._displayNode(volumeNode)
        displayNode.AutoWindowLevelOn()
        return displayNode

    # -- histogram plot ---------------------------------------------------------------------------

    def _histogramNode(self, scene, className: str, role: str, name: str):
        """The module's histogram helper node with this role (one set per scene), created when missing."""
        return helper_node(scene, className, self.HISTOGRAM_ROLE_ATTRIBUTE, role, name,
                           hidden=className != "vtkMRMLPlotChartNode")

    def histogramPlotViewNode(self, scene=None):
        """The plot view node the widget's embedded plot shows (one per scene)."""
        scene = scene or slicer.mrmlScene
        return self._histogramNode(scene, "vtkMRMLPlotViewNode", "view", "CT Preprocess histogram view")

    def updateHistogramPlot(self, volumeNode, window=None, bins: int = HISTOGRAM_BINS):
        """Histogram of `volumeNode` with `window` (low, high) marked; returns the vtkMRMLPlotChartNode.

        Table "HU"/"Voxels" (bin centres, counts), a bar series for the histogram and a line series
        framing the window. Counts are recomputed only when the volume's voxels change.
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError("Select an input volume with voxel data to show its histogram.")
        scene = volumeNode.GetScene()
        table = self._histogramNode(scene, "vtkMRMLTableNode", "table", "CT Preprocess histogram")
        source = f"{volumeNode.GetID()}:{volumeNode.GetImageData().GetMTime()}:{bins}"
        if table.GetAttribute(self.HISTOGRAM_SOURCE_ATTRIBUTE) != source:
            counts, edges = histogram(slicer.util.arrayFromVolume(volumeNode), bins=bins)
            edges = np.asarray(edges, dtype=float)
            centres = 0.5 * (edges[:-1] + edges[1:])
            slicer.util.updateTableFromArray(
                table, (centres, np.asarray(counts, dtype=float)), ["HU", "Voxels"]
            )
            table.SetAttribute(self.HISTOGRAM_SOURCE_ATTRIBUTE, source)

        series = self._histogramNode(scene, "vtkMRMLPlotSeriesNode", "histogram", "CT Preprocess histogram counts")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("HU")
        series.SetYColumnName("Voxels")
        series.SetPlotType(series.PlotTypeScatterBar)
        series.SetColor(0.35, 0.55, 0.75)

        chart = self._histogramNode(scene, "vtkMRMLPlotChartNode", "chart", "CT Preprocess histogram chart")
        chart.SetTitle(f"{volumeNode.GetName()}: histogram")
        chart.SetXAxisTitle("Intensity (HU)")
        chart.SetYAxisTitle("Voxels")
        chart.SetLegendVisibility(False)
        if not chart.HasPlotSeriesNodeID(series.GetID()):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())

        windowSeries = self._histogramNode(scene, "vtkMRMLPlotSeriesNode", "window", "CT Preprocess histogram window")
        if window is None:
            if chart.HasPlotSeriesNodeID(windowSeries.GetID()):
                chart.RemovePlotSeriesNodeID(windowSeries.GetID())
            return chart
        lo, hi = (float(v) for v in window)
        top = float(np.max(slicer.util.arrayFromTableColumn(table, "Voxels"))) if table.GetNumberOfRows() else 1.0
        windowTable = self._histogramNode(scene, "vtkMRMLTableNode", "windowTable", "CT Preprocess histogram window")
        slicer.util.updateTableFromArray(
            windowTable, (np.array([lo, lo, hi, hi]), np.array([0.0, top, top, 0.0])), ["HU", "Voxels"]
        )
        windowSeries.SetAndObserveTableNodeID(windowTable.GetID())
        windowSeries.SetXColumnName("HU")
        windowSeries.SetYColumnName("Voxels")
        windowSeries.SetPlotType(windowSeries.PlotTypeScatter)
        windowSeries.SetLineStyle(windowSeries.LineStyleSolid)
        windowSeries.SetMarkerStyle(windowSeries.MarkerStyleNone)
        windowSeries.SetLineWidth(3)
        windowSeries.SetColor(1.0, 0.62, 0.11)
        if not chart.HasPlotSeriesNodeID(windowSeries.GetID()):
            chart.AddAndObservePlotSeriesNodeID(windowSeries.GetID())
        return chart

    # -- processing -------------------------------------------------------------------------------

    def process(self, inputVolumeNode, outputVolumeNode=None, config=None, progress=None, referenceVolumeNode=None):
        """Run the CT pipeline on `inputVolumeNode`; returns (outputVolumeNode, report).

        The input node is never modified. With `outputVolumeNode` None a new scalar volume
        "<input> preprocessed" is added, only after the pipeline succeeded (bad input raises
        InputError and adds nothing). `referenceVolumeNode` resamples onto that volume's grid.
        """
        start = time.perf_counter()
        if inputVolumeNode is None:
            raise InputError("Select an input CT volume.")
        if not inputVolumeNode.IsA("vtkMRMLScalarVolumeNode") or inputVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"'{inputVolumeNode.GetName()}' is not a scalar (CT) volume.")
        if inputVolumeNode.GetImageData() is None:
            raise InputError(f"'{inputVolumeNode.GetName()}' has no voxel data.")
        if outputVolumeNode is not None and outputVolumeNode.GetID() == inputVolumeNode.GetID():
            raise InputError("Choose an output volume other than the input: the input is never overwritten.")
        config = config if config is not None else CTPipelineConfig()
        if referenceVolumeNode is not None:
            if referenceVolumeNode.GetImageData() is None:
                raise InputError(f"Reference volume '{referenceVolumeNode.GetName()}' has no voxel data.")
            if referenceVolumeNode.GetTransformNodeID() != inputVolumeNode.GetTransformNodeID():
                raise InputError(
                    f"Reference volume '{referenceVolumeNode.GetName()}' is under a different transform than the input;"
                    " harden or remove the transforms first."
                )
            config = dataclasses.replace(config, reference=image_from_volume_node(referenceVolumeNode))

        image = image_from_volume_node(inputVolumeNode)
        result, report = run_pipeline(image, config, progress=progress)

        if outputVolumeNode is None:
            scene = inputVolumeNode.GetScene()
            outputVolumeNode = add_volume_node(scene, result, f"{inputVolumeNode.GetName()} preprocessed")
        else:
            update_volume_node_from_image(outputVolumeNode, result)
            if outputVolumeNode.GetDisplayNode() is None:
                outputVolumeNode.CreateDefaultDisplayNodes()
        outputVolumeNode.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
        outputVolumeNode.GetDisplayNode().AutoWindowLevelOn()
        report = dict(report)
        report["logic_seconds"] = time.perf_counter() - start
        outputVolumeNode.SetAttribute(self.REPORT_ATTRIBUTE, json.dumps(report, default=str))
        logging.info(f"CT Preprocess: {outputVolumeNode.GetName()} in {report['logic_seconds']:.2f} s")
        return outputVolumeNode, report

    @staticmethod
    def describeReport(report) -> str:
        """One line for the status label: the window used and the steps run."""
        parts = []
        window = report.get("window")
        if window is not None:
            if isinstance(window, dict):
                lo, hi = window.get("low", window.get("lo")), window.get("high", window.get("hi"))
            else:
                lo, hi = window
            if lo is not None and hi is not None:
                parts.append(f"window [{float(lo):g}, {float(hi):g}] HU")
        steps = report.get("steps") or []
        names = [step.get("name", str(step)) if isinstance(step, dict) else str(step) for step in steps]
        if names:
            parts.append("steps: " + ", ".join(names))
        return "; ".join(parts) if parts else "done"


#
# CTPreprocessTest
#


class CTPreprocessTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Self-test in Slicer on the bundled sample CT (abdomen + pelvis with lung bases)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_CTPreprocess_lungs_uint8()

    @staticmethod
    def _expect(condition, message):
        if not condition:
            raise AssertionError(message)

    def test_CTPreprocess_lungs_uint8(self):
        self.delayDisplay("Loading the bundled sample CT")
        inputNode = slicer.util.loadVolume(sampleDataPath())
        before = np.array(slicer.util.arrayFromVolume(inputNode), copy=True)
        beforeMatrix = vtk.vtkMatrix4x4()
        inputNode.GetIJKToRASMatrix(beforeMatrix)
        logic = CTPreprocessLogic()

        self.delayDisplay("Preset preview changes the display only")
        lo, hi = logic.applyPreset(inputNode, "lungs")
        displayNode = inputNode.GetDisplayNode()
        self._expect(abs(displayNode.GetWindow() - (hi - lo)) < 1e-6, "preset window width not shown")
        self._expect(abs(displayNode.GetLevel() - (hi + lo) / 2) < 1e-6, "preset window level not shown")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), before)

        self.delayDisplay("Histogram with the window marked")
        chart = logic.updateHistogramPlot(inputNode, (lo, hi))
        self._expect(chart.GetNumberOfPlotSeriesNodes() == 2, "histogram chart should hold counts and window")
        table = chart.GetNthPlotSeriesNode(0).GetTableNode()
        self._expect(
            int(slicer.util.arrayFromTableColumn(table, "Voxels").sum()) == before.size,
            "histogram counts must add up to the voxel count",
        )

        self.delayDisplay("Lungs window to uint8 into a new volume")
        config = CTPipelineConfig(window_mode="preset", preset="lungs", dtype="uint8")
        outputNode, report = logic.process(inputNode, None, config)
        self._expect(outputNode.GetID() != inputNode.GetID(), "output must be a new node")
        self._expect(outputNode.GetName() == f"{inputNode.GetName()} preprocessed", "unexpected output name")
        expected = np.clip(np.round((before.astype(np.float64) - lo) / (hi - lo) * 255.0), 0, 255)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(outputNode).astype(np.float64), expected)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), before)
        afterMatrix = vtk.vtkMatrix4x4()
        outputNode.GetIJKToRASMatrix(afterMatrix)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(afterMatrix), slicer.util.arrayFromVTKMatrix(beforeMatrix), atol=1e-9
        )
        self.delayDisplay(f"Test passed ({report['total_seconds']:.2f} s)")
