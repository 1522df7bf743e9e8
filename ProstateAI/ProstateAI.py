"""ProstateAI: Slicer module for deep-learning prostate gland and zone segmentation on T2-weighted MRI.

The computation lives in the GUI-free `ProstateAILib` (`pipeline`: the gland → zones cascade shared
with `prostateai segment`), with `ProstateAIMRML` as the MRML glue shared by the extension's modules.
This file only holds the Slicer glue:

- `ProstateAIParameterNode`: the module state, saved with the scene and bound to the .ui widgets.
- `ProstateAIWidget`: thin GUI. Segment runs `prostateai segment` out of process
  (`ProstateAICore.jobs.Job`), polled by a QTimer, with a progress bar and a real Cancel; the result
  is loaded as a segmentation node (Prostate, PZ, TZ) on the T2.
- `ProstateAILogic`: MRML glue (volume nodes <-> SimpleITK, in-process segmentation, job building and
  result loading). Usable from the Python console and other modules without the GUI.
- `ProstateAITest`: self-test on synthetic volumes (no model run, no data download).
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Annotated

import numpy as np
import qt
import SimpleITK as sitk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from ProstateAILib import models, pipeline, review
from ProstateAICore.errors import Cancelled, InputError
from ProstateAICore.imageio import read_image, read_json, validate_volume, write_text
from ProstateAICore.jobs import Worker, job_environment, job_python, require_done, start_job
from ProstateAIWidgetBase import JobPollingWidgetMixin, ParameterNodeWidgetMixin
from ProstateAIMRML import add_segmentation_node, describe_volume, image_from_volume_node, segment_arrays

DEVICES = ("auto", "cpu", "cuda")
SEGMENT_NAMES = tuple(entry[0] for entry in pipeline.SEGMENTS)  # Prostate, PZ, TZ

#
# ProstateAI
#


class ProstateAI(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = "ProstateAI"
        self.parent.categories = ["ProstateAI"]
        self.parent.dependencies = ["ProstateAICommon", "CTPreprocess", "MRStandardize"]  # their Lib packages
        self.parent.contributors = ["ProstateAI contributors"]
        self.parent.helpText = """
Segment the prostate gland and its zones on axial T2-weighted MRI with 3D convolutional networks:
the whole gland first, then the transition zone (TZ) from T2 and the gland; the peripheral zone (PZ)
is the rest of the gland. ADC and high-b DWI are optional: they are checked against the T2 and
resampled onto it. The result is a segmentation (Prostate, PZ, TZ) on the T2 grid, to review and
correct in the Segment Editor. Segmentation runs in the background; Cancel stops it.
Input volumes are never modified.
See the <a href="https://github.com/prostateai/SlicerProstateAI">project page</a> for details.
"""
        self.parent.acknowledgementText = """
Part of the ProstateAI extension. Cascade after Pellicer-Valero O.J. et al., "Deep learning for fully
automatic detection, segmentation, and Gleason grade estimation of prostate cancer in multiparametric
MRI", Sci Rep 2022. The models' training data and their attributions are listed on the project page.
"""


#
# ProstateAIParameterNode
#


@parameterNodeWrapper
class ProstateAIParameterNode:
    """Module state. `inputVolume` is the T2; ADC and HBV are optional."""

    inputVolume: vtkMRMLScalarVolumeNode
    adcVolume: vtkMRMLScalarVolumeNode
    hbvVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(DEVICES)] = "auto"
    testTimeAugmentation: bool = True
    targetSegmentation: vtkMRMLSegmentationNode  # Accept copies the AI result here (None: a new segmentation)
    psa: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0  # ng/mL; 0 = not given
    growSeed: vtkMRMLMarkupsFiducialNode  # its last point seeds click-to-grow


#
# ProstateAIWidget
#


class ProstateAIWidget(ParameterNodeWidgetMixin, JobPollingWidgetMixin, ScriptedLoadableModuleWidget,  # noqa: F405
                       VTKObservationMixin):
    """Thin GUI: state in the parameter node, work in ProstateAILogic, segmentation in a child process."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._preview = None  # the AI result under review (not accepted yet)
        self._accepted = None  # the segmentation the last Accept went into
        self._t2 = None  # the T2 both are on

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        self.loadModuleUi("ProstateAI")
        self.logic = ProstateAILogic()
        self.logic.useWorker(True)  # the second segmentation of a session starts in ~1 s, not ~3 s
        self.setupJobPolling()
        self._fillModelComboBoxes()

        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.operatingPointComboBox.connect("currentIndexChanged(int)", lambda *_: self.onOperatingPoint())
        self.ui.lesionTable.connect("cellClicked(int,int)", self.onLesionClicked)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        for button, handler in ((self.ui.acceptButton, self.onAccept), (self.ui.rejectButton, self.onReject),
                                (self.ui.undoButton, self.onUndo), (self.ui.editButton, self.onEdit),
                                (self.ui.recomputeZonesButton, self.onRecomputeZones),
                                (self.ui.exportButton, self.onExport), (self.ui.saveRecordButton, self.onSaveRecord),
                                (self.ui.growButton, self.onGrow)):
            button.connect("clicked(bool)", handler)
        self.ui.glandModelComboBox.connect("currentIndexChanged(int)", lambda *_: self._showModelInfo())
        self.ui.zonesModelComboBox.connect("currentIndexChanged(int)", lambda *_: self._showModelInfo())
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.discardRunningJob()
        self.logic.useWorker(False)
        self.removeObservers()

    def initializeParameterNode(self) -> None:
        """Empty series selectors get the loaded volumes that look like the T2, the ADC and the high-b DWI."""
        super().initializeParameterNode()
        p = self._parameterNode
        guesses = self.logic.guessInputVolumes(slicer.mrmlScene)
        for role, name in (("T2", "inputVolume"), ("ADC", "adcVolume"), ("HBV", "hbvVolume")):
            current = getattr(p, name)
            firstVolume = role == "T2" and current is not None and current.GetID() == self._firstVolumeID()
            if role in guesses and (current is None or firstVolume):
                setattr(p, name, guesses[role])

    @staticmethod
    def _firstVolumeID():
        node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        return node.GetID() if node else None

    def onSceneStartClose(self, caller, event) -> None:
        self.discardRunningJob()
        self._preview = self._accepted = self._t2 = self._lesionNode = None  # their nodes go with the scene
        super().onSceneStartClose(caller, event)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self.ui.inputInfoLabel.text = describe_volume(p.inputVolume)
        self._showPsaDensity()
        self._updateButtons()

    def _updateButtons(self) -> None:
        idle = not self.jobRunning
        hasModels = self.ui.glandModelComboBox.count > 0 and self.ui.zonesModelComboBox.count > 0
        hasT2 = self._parameterNode is not None and self._parameterNode.inputVolume is not None
        self.ui.segmentButton.enabled = idle and hasT2 and hasModels
        self.ui.cancelButton.enabled = not idle
        previewing, accepted = self._preview is not None, self._accepted is not None
        for widget in (self.ui.thresholdSlider, self.ui.opacitySlider, self.ui.acceptButton, self.ui.rejectButton):
            widget.enabled = previewing
        self.ui.undoButton.enabled = accepted and self.logic.canUndoAccept(self._accepted)
        for widget in (self.ui.editButton, self.ui.recomputeZonesButton, self.ui.exportButton, self.ui.saveRecordButton):
            widget.enabled = accepted

    # -- models -------------------------------------------------------------------------------------

    def _fillModelComboBoxes(self) -> None:
        try:
            choices = {task: self.logic.modelChoices(task) for task in ("gland", "zones")}
        except InputError as error:
            self.ui.statusLabel.text = str(error)
            return
        for task, comboBox in (("gland", self.ui.glandModelComboBox), ("zones", self.ui.zonesModelComboBox)):
            comboBox.clear()
            for name, description in choices[task]:
                comboBox.addItem(name)
                comboBox.setItemData(comboBox.count - 1, description, qt.Qt.ToolTipRole)
        self._showModelInfo()

    def _showModelInfo(self) -> None:
        self.ui.modelInfoLabel.text = self.logic.describeModels(
            self.ui.glandModelComboBox.currentText, self.ui.zonesModelComboBox.currentText
        )

    # -- segmentation job ---------------------------------------------------------------------------

    def onSegment(self) -> None:
        p = self._parameterNode
        self.ui.statusLabel.text = ""
        self.ui.timeLabel.text = ""
        try:
            job, tempdir = self.logic.startSegmentJob(
                p.inputVolume, p.adcVolume, p.hbvVolume,
                glandModel=self.ui.glandModelComboBox.currentText or None,
                zonesModel=self.ui.zonesModelComboBox.currentText or None,
                device=p.device, tta=p.testTimeAugmentation,
            )
        except InputError as error:
            self._fail(str(error))
            return
        except Exception as error:  # unexpected: the traceback goes to the log, the user gets the message
            logging.exception("ProstateAI: starting the segmentation failed")
            self._fail(f"Starting the segmentation failed: {error}")
            return
        self.startJob(job, tempdir, "Segmentation", {"t2": p.inputVolume}, "Segmenting in the background...")

    def _finishJob(self, running) -> None:
        t2Node = running.context["t2"]
        try:
            segmentationNode, report = self.logic.finishSegmentJob(running.job, running.tempdir, t2Node)
        except Cancelled:
            self.ui.statusLabel.text = "Cancelled: nothing was added to the scene."
            return
        except InputError as error:
            self._fail(str(error))
            return
        except Exception as error:
            logging.exception("ProstateAI: loading the segmentation failed")
            self._fail(f"Loading the segmentation failed: {error}")
            return
        self.logic.showSegmentation(segmentationNode, t2Node)
        self._preview, self._t2 = segmentationNode, t2Node
        self.ui.thresholdSlider.blockSignals(True)
        self.ui.thresholdSlider.value = self.logic.previewThreshold(segmentationNode)
        self.ui.thresholdSlider.blockSignals(False)
        self.ui.statusLabel.text = (f"'{segmentationNode.GetName()}': {self.logic.describeReport(report)}\n"
                                    f"{self.logic.describeRun(report)}")
        text, colour = self.logic.describeQuality(report)
        self.ui.qualityLabel.text = text
        self.ui.qualityLabel.setStyleSheet(f"QLabel {{ background-color: {colour}; color: black; padding: 4px; }}")
        self.ui.reviewStatusLabel.text = "Review the preview, then Accept or Reject."
        self._showLesions(segmentationNode)
        self._updateButtons()

    # -- lesions ------------------------------------------------------------------------------------

    def _showLesions(self, segmentationNode) -> None:
        """Fill the lesion table (and the markup points) from the segmentation's lesion candidates."""
        rows = self.logic.lesionTable(segmentationNode)
        self._lesionRows, self._lesionNode = rows, segmentationNode
        self.ui.lesionTable.setRowCount(len(rows))
        for index, row in enumerate(rows):
            values = (f"L{row['id']}", f"{row['score']:.2f}", str(row["isup_class"] or "-"), f"{row['volume_ml']:.2f}",
                      row["zone"] or "-")
            for column, value in enumerate(values):
                self.ui.lesionTable.setItem(index, column, qt.QTableWidgetItem(value))
        if rows:
            self.logic.showLesionMarkups(segmentationNode)
            self.onOperatingPoint()

    def onOperatingPoint(self) -> None:
        if getattr(self, "_lesionNode", None) is not None:
            self._review("Operating point", lambda: f"Showing lesion candidates {self.logic.setOperatingPoint(self._lesionNode, self.ui.operatingPointComboBox.currentText)}")

    def onGrow(self) -> None:
        p = self._parameterNode
        target = self._accepted or self._preview

        def grow():
            seed = p.growSeed
            if seed is None or seed.GetNumberOfControlPoints() == 0:
                raise InputError("Place a point on the lesion first (markups toolbar), and choose its point list.")
            point = [0.0, 0.0, 0.0]
            seed.GetNthControlPointPositionWorld(seed.GetNumberOfControlPoints() - 1, point)
            grown = self.logic.growLesion(target, p.inputVolume, point, p.adcVolume, p.hbvVolume)
            return (f"{grown['segment']}: {grown['volume_ml']:.2f} mL from {', '.join(grown['sequences'])} in "
                    f"{grown['seconds']:.1f} s. " + " ".join(grown["warnings"]))
        if target is None:
            self.ui.reviewStatusLabel.text = "Segment (and Accept) first: the grown lesion is added to that segmentation."
            return
        self._review("Grow", grow)

    def onLesionClicked(self, rowIndex: int, column: int) -> None:
        rows = getattr(self, "_lesionRows", [])
        if 0 <= rowIndex < len(rows):
            lesion = rows[rowIndex]["id"]
            self._review("Centre", lambda: "Centred on L{} at R {:.1f}, A {:.1f}, S {:.1f} mm".format(
                lesion, *self.logic.centreOnLesion(self._lesionNode, lesion)))

    # -- review -------------------------------------------------------------------------------------

    def _review(self, what: str, action) -> None:
        """Run a review action; its message (or its error) goes to the review status line."""
        try:
            message = action()
        except InputError as error:
            message = str(error)
        except Exception as error:
            logging.exception(f"ProstateAI: {what} failed")
            message = f"{what} failed: {error}"
        if message is not None:
            self.ui.reviewStatusLabel.text = message
        self._updateButtons()

    def onThresholdChanged(self, value: float) -> None:
        if self._preview is None:
            return
        self._review("Threshold", lambda: "Preview at threshold {:.2f}: Prostate {Prostate:.1f} mL (PZ {PZ:.1f}, "
                     "TZ {TZ:.1f})".format(value, **self.logic.setPreviewThreshold(self._preview, value, self._t2)))

    def onOpacityChanged(self, value: float) -> None:
        if self._preview is not None:
            self.logic.setPreviewOpacity(self._preview, value)

    def onAccept(self) -> None:
        def accept():
            self._accepted = self.logic.acceptPreview(self._preview, self._t2, self._parameterNode.targetSegmentation)
            self._preview = None
            self._showLesions(self._accepted)
            self._showPsaDensity()
            return f"Accepted into '{self._accepted.GetName()}'. Correct it in the Segment Editor, then export."
        self._review("Accept", accept)

    def onReject(self) -> None:
        def reject():
            self.logic.rejectPreview(self._preview)
            self._preview = None
            return "Rejected: the preview was removed."
        self._review("Reject", reject)

    def onUndo(self) -> None:
        def undo():
            self.logic.undoAccept(self._accepted)
            self._accepted = None
            return "Accept undone."
        self._review("Undo", undo)

    def onEdit(self) -> None:
        self._review("Edit", lambda: self.logic.editInSegmentEditor(self._accepted, self._t2))

    def onRecomputeZones(self) -> None:
        self._review("Recompute zones", lambda: " ".join(self.logic.recomputeZones(self._accepted, self._t2))
                     or "Zones already agree with the gland.")

    def _showPsaDensity(self) -> None:
        p = self._parameterNode
        if p is None or not p.psa or self._accepted is None:
            return
        self._review("PSA density", lambda: f"PSA density {self.logic.psaDensity(self._accepted, self._t2, p.psa):.3f} ng/mL/mL")

    def _savePath(self, title: str, default: str, pattern: str):
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, default, pattern)
        return path or None

    EXPORT_FILES = {"seg.nrrd": (".seg.nrrd", "Slicer segmentation (*.seg.nrrd)"),
                    "nifti": (".nii.gz", "NIfTI label map + JSON label table (*.nii.gz)"),
                    "dicom-seg": (".dcm", "DICOM SEG (*.dcm)")}

    def onExport(self) -> None:
        fmt = self.ui.exportFormatComboBox.currentText
        suffix, pattern = self.EXPORT_FILES[fmt]
        path = self._savePath("Export segmentation", f"{self._accepted.GetName()}{suffix}", pattern)
        if path:
            self._review("Export", lambda: f"Wrote {self.logic.exportSegmentation(self._accepted, self._t2, path, fmt)}")

    def onSaveRecord(self) -> None:
        path = self._savePath("Save review record", f"{self._accepted.GetName()}-review.json", "JSON (*.json)")
        if path:
            self._review("Review record", lambda: f"Wrote {self.logic.saveReviewRecord(self.logic.reviewRecord(self._accepted, self._t2), path)}")


#
# ProstateAILogic
#


class ProstateAILogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """MRML glue around ProstateAILib.pipeline; usable from the Python console and other modules."""

    REPORT_ATTRIBUTE = "ProstateAI.Report"  # JSON report of the run that made a segmentation node
    SOURCE_ATTRIBUTE = "ProstateAI.Source"  # ID of the T2 volume a segmentation was computed from
    SEGMENTATION_FILE = "segmentation.seg.nrrd"
    PREVIEW_ATTRIBUTE = "ProstateAI.Preview"  # "1" on an AI result not accepted yet
    LESIONS_ATTRIBUTE = "ProstateAI.Lesions"  # JSON lesions table (lesions.json) of the run

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405
        self.lastReport = None
        self._probabilities = {}  # preview node ID -> (p_prostate, p_tz, gland threshold, TZ threshold)
        self._undo = {}  # accepted-into node ID -> its segmentation before Accept (None: Accept created it)
        self._aiResults = {}  # accepted-into node ID -> {"masks": {name: array}, "report": report}
        self._worker = None  # persistent segmentation process (useWorker)

    def useWorker(self, enabled: bool = True) -> None:
        """Run segmentations in one persistent background process (ProstateAICore.jobs.Worker), so that
        the second run of a session pays no interpreter start or torch import; Cancel still ends it."""
        if enabled and self._worker is None:
            self._worker = Worker(python=job_python(), env=job_environment(), preload=("ProstateAILib.pipeline",))
        elif not enabled and self._worker is not None:
            self._worker.close()
            self._worker = None

    def getParameterNode(self):
        return ProstateAIParameterNode(super().getParameterNode())

    # -- inputs -------------------------------------------------------------------------------------

    @staticmethod
    def _imageOf(node, what: str) -> sitk.Image:
        """A validated SimpleITK copy of a volume node (exact geometry, LPS)."""
        if node is None:
            raise InputError(f"Select the {what}.")
        if node.GetImageData() is None:
            raise InputError(f"The {what} '{node.GetName()}' has no voxel data.")
        if node.GetTransformNodeID():
            raise InputError(f"The {what} '{node.GetName()}' is under a transform; harden or remove it first.")
        if node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise InputError(f"The {what} '{node.GetName()}' has several components per voxel; "
                             "a scalar MR volume is needed.")
        image = image_from_volume_node(node)
        validate_volume(image, f"{what} '{node.GetName()}'")
        return image

    def _inputImages(self, t2Node, adcNode=None, hbvNode=None) -> tuple:
        t2 = self._imageOf(t2Node, "T2 volume")
        extra = {}
        for name, node in (("ADC", adcNode), ("HBV", hbvNode)):
            if node is None:
                continue
            if node.GetID() == t2Node.GetID():
                raise InputError(f"The {name} volume is the T2 volume; choose the {name} series or leave it empty.")
            extra[name] = self._imageOf(node, f"{name} volume")
        return t2, extra

    @staticmethod
    def guessInputVolumes(scene) -> dict:
        """{"T2": node, "ADC": node, "HBV": node} among the scene's scalar volumes, classified as
        `prostateai segment --study` classifies series (ProstateAILib.study.classify): by the
        series description (a DICOM volume's name is "<number>: <description>") and, when Slicer's
        DICOM database knows the volume, its ImageType and b-value. Roles not found are left out."""
        from ProstateAILib import study

        found = {}
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetImageData() is None:
                continue
            description = node.GetName().split(":", 1)[-1].strip()
            kind, _ = study.classify(description, *ProstateAILogic._dicomTags(node))
            role = {"T2": "T2", "ADC": "ADC", "DWI": "HBV"}.get(kind)
            slices = node.GetImageData().GetDimensions()[2]
            if role and (role not in found or slices > found[role][1]):  # several: the one with most slices
                found[role] = (node, slices)
        return {role: node for role, (node, _) in found.items()}

    @staticmethod
    def _dicomTags(node) -> tuple:
        """(ImageType values, b-value) from Slicer's DICOM database for a volume loaded from DICOM."""
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return (), None
        try:
            image_type = (database.instanceValue(uids[0], "0008,0008") or "").split("\\")
            b_value = database.instanceValue(uids[0], "0018,9087")
            return image_type, float(b_value) if b_value else None
        except (AttributeError, ValueError):
            return (), None

    # -- models -------------------------------------------------------------------------------------

    @staticmethod
    def modelChoices(task: str) -> list:
        """[(name, description)] of the catalog's models for `task` ("gland" or "zones"), default first."""
        catalog = models.load_catalog()
        return [(name, entry.get("description", "")) for name, entry in catalog.items() if entry.get("task") == task]

    @staticmethod
    def describeModels(glandModel: str, zonesModel: str) -> str:
        """One line per selected model: version and validation Dice from the catalog."""
        try:
            catalog = models.load_catalog()
        except InputError as error:
            return str(error)
        lines = []
        for what, name in (("Gland", glandModel), ("Zones", zonesModel)):
            entry = catalog.get(name)
            if entry is None:
                continue
            dice = (entry.get("validation") or {}).get("mean_dice")
            quality = f"validation Dice {dice:.2f}" if isinstance(dice, (int, float)) else "not validated"
            lines.append(f"{what}: {name} v{entry.get('version', '?')} ({quality})")
        return "\n".join(lines)

    # -- in-process segmentation --------------------------------------------------------------------

    def segment(self, t2Node, adcNode=None, hbvNode=None, glandModel=None, zonesModel=None, device="auto",
                progress=None, tta=True, threads=None, name=None):
        """Segment prostate, PZ and TZ on the T2 in this process; returns a new vtkMRMLSegmentationNode.

        Inputs are converted to SimpleITK exactly (oblique geometry too) and never modified. The
        segmentation is on the T2 grid, with the T2 as reference geometry; the run's report (volumes,
        models, timings) is kept as the node's `ProstateAI.Report` attribute (JSON, see `reportOf`) and
        as `self.lastReport`. Raises InputError (pipeline.NoProstateFound when there is no gland).
        """
        t2, extra = self._inputImages(t2Node, adcNode, hbvNode)
        inputs = pipeline.prepare_inputs(t2, extra)
        inputs.sources = {key: {"node": node.GetName(), "size": list(node.GetImageData().GetDimensions())}
                          for key, node in (("T2", t2Node), ("ADC", adcNode), ("HBV", hbvNode)) if node is not None}
        result = pipeline.segment(inputs, glandModel, zonesModel, device=device, tta=tta, progress=progress,
                                  threads=threads)
        node = self.addSegmentation(t2Node, result, name)
        self._keepReport(node, t2Node, result.report)
        self._makePreview(node, result.report, result.probabilities["prostate"], result.probabilities["TZ"])
        return node

    @staticmethod
    def addSegmentation(t2Node, result, name=None):
        """A new segmentation node (Prostate, PZ, TZ, and Lesion <id> when lesions were detected) from a
        pipeline.Result on the T2 node's grid."""
        lesions = [(s.name, pipeline.LESION_SEGMENT[1], s.value, s.colour, s.code) for s in pipeline.lesion_segments(result)]
        node = add_segmentation_node(t2Node.GetScene(), t2Node, pipeline.label_layers(result),
                                     list(pipeline.SEGMENTS) + lesions, name or f"{t2Node.GetName()} segmentation")
        if result.lesions:
            node.SetAttribute(ProstateAILogic.LESIONS_ATTRIBUTE, json.dumps(result.lesions))
        return node

    def _keepReport(self, node, t2Node, report: dict) -> None:
        node.SetAttribute(self.REPORT_ATTRIBUTE, json.dumps(report))
        node.SetAttribute(self.SOURCE_ATTRIBUTE, t2Node.GetID())
        self.lastReport = report

    @classmethod
    def reportOf(cls, segmentationNode) -> dict:
        """The report of the run that made a segmentation node ({} when there is none)."""
        text = segmentationNode.GetAttribute(cls.REPORT_ATTRIBUTE) if segmentationNode is not None else None
        return json.loads(text) if text else {}

    @staticmethod
    def describeReport(report: dict) -> str:
        """One line with the volumes: "Prostate 23.4 mL (PZ 5.5 mL, TZ 18.0 mL)"."""
        volumes = report.get("volumes_ml") or {}
        if not volumes:
            return "no volumes reported"
        return (f"Prostate {volumes.get('prostate', 0.0):.1f} mL (PZ {volumes.get('PZ', 0.0):.1f} mL, "
                f"TZ {volumes.get('TZ', 0.0):.1f} mL)")

    @staticmethod
    def describeRun(report: dict) -> str:
        """One line on how the result was computed: "Gland model on its box (20 % of the volume),
        onnxruntime on cpu, 1.9 s"; a localiser fallback says why the whole volume was segmented."""
        localisation = report.get("localisation") or {}
        if localisation.get("fallback"):
            where = f"on the whole volume ({localisation['fallback'].split(':')[0]})"
        elif "box_fraction" in localisation:
            where = f"on its box ({100 * localisation['box_fraction']:.0f} % of the volume)"
        elif localisation.get("status") == "off":
            where = "on the whole volume (localisation off)"
        else:
            where = "on the whole volume"
        backend = ((report.get("models") or {}).get("gland") or {}).get("backend", "")
        engine = " on ".join(part for part in (backend, report.get("device", "")) if part)
        total = (report.get("timings_s") or {}).get("total")
        return ", ".join(part for part in (f"Gland model {where}", engine, total is not None and f"{total:.1f} s")
                         if part)

    @staticmethod
    def describeQuality(report: dict) -> tuple:
        """(banner text, background colour) of the report's quality verdict."""
        verdict = report.get("quality") or {}
        if verdict.get("status") == "ok":
            return "Quality: ok", "#b7e1b0"
        if verdict.get("status") == "check":
            return "Quality: CHECK - " + "; ".join(verdict.get("reasons") or []), "#ffcc80"
        return "Quality: not assessed", "#dddddd"

    # -- out-of-process segmentation ----------------------------------------------------------------

    def startSegmentJob(self, t2Node, adcNode=None, hbvNode=None, glandModel=None, zonesModel=None, device="auto",
                        tta=True, threads=None):
        """Start `prostateai segment` in a child process; returns (job, tempdir). Finish with finishSegmentJob.

        The inputs are checked here (clear errors before anything starts) and written to NRRD files in
        a fresh temporary folder; the command writes its outputs to `tempdir/out`.
        """
        t2, extra = self._inputImages(t2Node, adcNode, hbvNode)
        tempdir = tempfile.mkdtemp(prefix="prostateai-segment-")
        try:
            files = {"T2": os.path.join(tempdir, "t2.nrrd")}
            sitk.WriteImage(t2, files["T2"])
            for key, image in extra.items():
                files[key] = os.path.join(tempdir, f"{key.lower()}.nrrd")
                sitk.WriteImage(image, files[key])
        except Exception:
            shutil.rmtree(tempdir, ignore_errors=True)
            raise
        args = ["segment", "--t2", files["T2"], "--out", os.path.join(tempdir, "out"), "--device", str(device)]
        for key in ("ADC", "HBV"):
            if key in files:
                args += [f"--{key.lower()}", files[key]]
        if glandModel:
            args += ["--model", str(glandModel)]
        if zonesModel:
            args += ["--zones-model", str(zonesModel)]
        if not tta:
            args.append("--no-tta")
        if threads:
            args += ["--threads", str(int(threads))]
        if self._worker is None:
            return start_job("ProstateAILib.cli", args, tempdir, "segmentation"), tempdir
        try:
            return self._worker.submit("ProstateAILib.cli", args), tempdir
        except (OSError, InputError):
            shutil.rmtree(tempdir, ignore_errors=True)
            raise

    def finishSegmentJob(self, job, tempdir: str, t2Node, name=None):
        """Load a finished job's segmentation.seg.nrrd with the T2 as reference; returns (node, report).

        Raises Cancelled / InputError for a cancelled / failed job. The temporary folder is removed.
        """
        try:
            require_done(job, "The segmentation", self.jobErrorMessage(job))
            out = os.path.join(tempdir, "out")
            with open(os.path.join(out, "report.json")) as handle:
                report = json.load(handle)
            node = self.loadSegmentationFile(os.path.join(out, self.SEGMENTATION_FILE), t2Node,
                                             name or f"{t2Node.GetName()} AI preview")
            self._keepReport(node, t2Node, report)
            if os.path.isfile(os.path.join(out, "lesions.json")):
                node.SetAttribute(self.LESIONS_ATTRIBUTE, json.dumps(read_json(os.path.join(out, "lesions.json"))))
            probabilities = os.path.join(out, "probabilities")
            self._makePreview(node, report, read_image(os.path.join(probabilities, "prostate.nii.gz")),
                              read_image(os.path.join(probabilities, "TZ.nii.gz")))
            return node, report
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)

    @staticmethod
    def jobErrorMessage(job) -> str:
        """The command's own one-line error ("prostateai segment: error: ...") without the prefix."""
        message = job.error or f"exit status {job.returncode}"
        marker = "error: "
        return message.split(marker, 1)[1] if marker in message else f"The segmentation failed: {message}"

    @staticmethod
    def loadSegmentationFile(path: str, referenceNode, name: str):
        """Read a .seg.nrrd into a new segmentation node with `referenceNode` as reference geometry.

        In Slicer this is `slicer.util.loadSegmentation`; without the application's IO manager (tests
        on a bare scene) the segmentation storage node reads it. The file is temporary, so the storage
        node is dropped (saving the scene makes a new one).
        """
        scene = referenceNode.GetScene()
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "coreIOManager"):
            try:
                node = slicer.util.loadSegmentation(path, {"name": name})
            except RuntimeError as error:
                raise InputError(f"Could not read the segmentation file '{os.path.basename(path)}': {error}") from None
        else:
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
            storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
            try:
                storage.SetFileName(path)
                ok = storage.ReadData(node)
            finally:
                scene.RemoveNode(storage)
            if not ok:
                scene.RemoveNode(node)
                raise InputError(f"Could not read the segmentation file '{os.path.basename(path)}'.")
            node.CreateDefaultDisplayNodes()
        if node.GetStorageNode() is not None:
            scene.RemoveNode(node.GetStorageNode())
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceNode)
        segmentation = node.GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        if not set(SEGMENT_NAMES) <= names:
            scene.RemoveNode(node)
            raise InputError(f"The segmentation file has segments {sorted(names)}, expected {list(SEGMENT_NAMES)}.")
        return node


    # -- review: preview, then accept -----------------------------------------------------------------

    def _makePreview(self, node, report: dict, pProstate, pTz) -> None:
        """Mark a new AI result as a preview (outline and fill) and keep its probability maps for the slider."""
        node.SetAttribute(self.PREVIEW_ATTRIBUTE, "1")
        thresholds = [float((report.get("models") or {}).get(task, {}).get("threshold") or 0.5)
                      for task in ("gland", "zones")]
        self._probabilities[node.GetID()] = (sitk.GetArrayFromImage(pProstate), sitk.GetArrayFromImage(pTz),
                                             *thresholds)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)
        display.SetOpacity2DFill(0.4)

    def isPreview(self, node) -> bool:
        return node is not None and node.GetAttribute(self.PREVIEW_ATTRIBUTE) == "1"

    def _requirePreview(self, node) -> None:
        if not self.isPreview(node):
            raise InputError("Select an AI result that has not been accepted yet (a preview).")

    def previewThreshold(self, previewNode) -> float:
        """The gland probability threshold the preview shows now."""
        self._requirePreview(previewNode)
        return self._probabilities[previewNode.GetID()][2]

    def setPreviewThreshold(self, previewNode, threshold: float, t2Node) -> dict:
        """Recompute the preview's Prostate / PZ / TZ at another gland probability threshold; returns
        the volumes (mL). Only the preview changes; its probability maps stay as computed."""
        self._requirePreview(previewNode)
        pProstate, pTz, _, tzThreshold = self._probabilities[previewNode.GetID()]
        masks = review.masks_at_threshold(pProstate, pTz, float(threshold), tzThreshold)
        self._setSegmentArrays(previewNode, t2Node, masks)
        self._probabilities[previewNode.GetID()] = (pProstate, pTz, float(threshold), tzThreshold)
        ml = self._voxelMl(t2Node)
        return {name: round(float(mask.sum()) * ml, 3) for name, mask in masks.items()}

    @staticmethod
    def setPreviewOpacity(previewNode, opacity: float) -> None:
        previewNode.GetDisplayNode().SetOpacity2DFill(float(opacity))

    @staticmethod
    def _setSegmentArrays(segmentationNode, t2Node, masks: dict) -> None:
        segmentation = segmentationNode.GetSegmentation()
        for name, mask in masks.items():
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            if not segmentId:
                raise InputError(f"The segmentation '{segmentationNode.GetName()}' has no '{name}' segment.")
            slicer.util.updateSegmentBinaryLabelmapFromArray(np.asarray(mask, dtype=np.uint8), segmentationNode,
                                                             segmentId, t2Node)

    def acceptPreview(self, previewNode, t2Node, targetNode=None):
        """Copy the preview's segments (with their terminology) into `targetNode`, or a new segmentation;
        segments of the same name there are replaced. The preview is removed. `undoAccept` restores
        the target as it was. Returns the target node."""
        self._requirePreview(previewNode)
        scene = previewNode.GetScene()
        created = targetNode is None
        if created:
            name = previewNode.GetName().replace(" AI preview", "") or t2Node.GetName()
            targetNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{name} segmentation"))
            targetNode.CreateDefaultDisplayNodes()
            targetNode.SetReferenceImageGeometryParameterFromVolumeNode(t2Node)
            self._undo[targetNode.GetID()] = None
        else:
            snapshot = slicer.vtkSegmentation()
            snapshot.DeepCopy(targetNode.GetSegmentation())
            self._undo[targetNode.GetID()] = snapshot
        source, target = previewNode.GetSegmentation(), targetNode.GetSegmentation()
        for index in range(source.GetNumberOfSegments()):
            segmentId = source.GetNthSegmentID(index)
            existing = target.GetSegmentIdBySegmentName(source.GetSegment(segmentId).GetName())
            if existing:
                target.RemoveSegment(existing)
            target.CopySegmentFromSegmentation(source, segmentId, False)
        report = self.reportOf(previewNode)
        self._aiResults[targetNode.GetID()] = {"masks": segment_arrays(previewNode, t2Node), "report": report}
        targetNode.SetAttribute(self.REPORT_ATTRIBUTE, json.dumps(report))
        targetNode.SetAttribute(self.SOURCE_ATTRIBUTE, t2Node.GetID())
        if previewNode.GetAttribute(self.LESIONS_ATTRIBUTE):
            targetNode.SetAttribute(self.LESIONS_ATTRIBUTE, previewNode.GetAttribute(self.LESIONS_ATTRIBUTE))
        self.rejectPreview(previewNode)
        return targetNode

    def canUndoAccept(self, targetNode) -> bool:
        return targetNode is not None and targetNode.GetID() in self._undo

    def undoAccept(self, targetNode) -> None:
        """Put the target of the last Accept back as it was (a segmentation Accept created is removed)."""
        if not self.canUndoAccept(targetNode):
            raise InputError("Nothing to undo for this segmentation.")
        snapshot = self._undo.pop(targetNode.GetID())
        self._aiResults.pop(targetNode.GetID(), None)
        if snapshot is None:
            self._removeLesionMarkups(targetNode)
            targetNode.GetScene().RemoveNode(targetNode)
        else:
            targetNode.GetSegmentation().DeepCopy(snapshot)

    def rejectPreview(self, previewNode) -> None:
        """Remove the preview (with its probability maps and lesion markups); nothing else in the scene changes."""
        self._requirePreview(previewNode)
        self._probabilities.pop(previewNode.GetID(), None)
        self._removeLesionMarkups(previewNode)
        previewNode.GetScene().RemoveNode(previewNode)

    LESION_MARKUPS_ATTRIBUTE = "ProstateAI.LesionMarkups"  # ID of the point list showLesionMarkups made

    @classmethod
    def _removeLesionMarkups(cls, segmentationNode) -> None:
        scene = segmentationNode.GetScene()
        markups = scene.GetNodeByID(segmentationNode.GetAttribute(cls.LESION_MARKUPS_ATTRIBUTE) or "")
        if markups is not None:
            scene.RemoveNode(markups)


    # -- lesions ------------------------------------------------------------------------------------

    OPERATING_POINTS = ("all", "balanced", "max_sensitivity")

    @classmethod
    def lesionTable(cls, segmentationNode) -> list:
        """Rows of the lesion table (highest score first): id, score, ISUP class (when the detector gives
        one), volume (mL), zone, operating points passed, centroid (RAS mm). [] when none were detected."""
        text = segmentationNode.GetAttribute(cls.LESIONS_ATTRIBUTE) if segmentationNode is not None else None
        if not text:
            return []
        return [{"id": int(entry["id"]), "score": float(entry["score"]), "isup_class": entry.get("isup_class"),
                 "volume_ml": float(entry["volume_ml"]), "zone": entry.get("zone"),
                 "passed": list(entry.get("operating_points_passed") or []),
                 "centroid_ras_mm": [float(v) for v in entry["centroid_ras_mm"]]}
                for entry in sorted(json.loads(text)["lesions"], key=lambda e: -float(e["score"]))]

    def showLesionMarkups(self, segmentationNode):
        """One markup point per lesion candidate at its centroid, labelled "L<id> <score>" (a new or the
        segmentation's existing point list); returns the markups node (None without lesions)."""
        rows = self.lesionTable(segmentationNode)
        if not rows:
            return None
        scene = segmentationNode.GetScene()
        markups = scene.GetNodeByID(segmentationNode.GetAttribute(self.LESION_MARKUPS_ATTRIBUTE) or "")
        if markups is None:
            markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{segmentationNode.GetName()} lesions")
            segmentationNode.SetAttribute(self.LESION_MARKUPS_ATTRIBUTE, markups.GetID())
        markups.RemoveAllControlPoints()
        for row in rows:
            index = markups.AddControlPoint(*row["centroid_ras_mm"])
            markups.SetNthControlPointLabel(index, f"L{row['id']} {row['score']:.2f}")
            markups.SetNthControlPointLocked(index, True)
        return markups

    def setOperatingPoint(self, segmentationNode, name: str) -> list:
        """Show only the lesion segments that pass operating point `name` ("all": every candidate);
        returns the ids shown."""
        if name not in self.OPERATING_POINTS:
            raise InputError(f"Unknown operating point '{name}'; choose one of {', '.join(self.OPERATING_POINTS)}.")
        segmentation, display = segmentationNode.GetSegmentation(), segmentationNode.GetDisplayNode()
        shown = []
        for row in self.lesionTable(segmentationNode):
            segmentId = segmentation.GetSegmentIdBySegmentName(f"{pipeline.LESION_SEGMENT[0]} {row['id']}")
            visible = name == "all" or name in row["passed"]
            if segmentId and display is not None:
                display.SetSegmentVisibility(segmentId, visible)
            if visible:
                shown.append(row["id"])
        return shown

    def growLesion(self, segmentationNode, t2Node, pointRas, adcNode=None, hbvNode=None) -> dict:
        """Click-to-grow (ProstateAILib.grow, what `prostateai grow` runs): grow a lesion from a point
        (RAS mm, e.g. a markup placed on a slice view) on T2, HBV and inverted ADC (2 of 3 votes) and
        add it to the segmentation as "Lesion (grown) <n>"; returns volume, sequences and warnings."""
        from ProstateAILib import grow

        t2 = self._imageOf(t2Node, "T2 volume")
        extra = {name: self._imageOf(node, f"{name} volume") for name, node in (("ADC", adcNode), ("HBV", hbvNode))
                 if node is not None}
        gland = None
        arrays = segment_arrays(segmentationNode, t2Node) if segmentationNode is not None else {}
        if "Prostate" in arrays:
            gland = sitk.GetImageFromArray(arrays["Prostate"])
            gland.CopyInformation(t2)
        result = grow.grow(t2, grow.seed_to_lps(seed_ras=pointRas), extra.get("ADC"), extra.get("HBV"), gland)
        segmentation = segmentationNode.GetSegmentation()
        number = 1 + sum(segmentation.GetNthSegment(i).GetName().startswith("Lesion (grown)")
                         for i in range(segmentation.GetNumberOfSegments()))
        name = f"Lesion (grown) {number}"
        segmentId = segmentation.AddEmptySegment(name, name, list(pipeline.LESION_SEGMENT[2]))
        slicer.util.updateSegmentBinaryLabelmapFromArray(sitk.GetArrayFromImage(result.mask), segmentationNode,
                                                         segmentId, t2Node)
        return {"segment": name, "volume_ml": round(result.volume_ml, 3), "sequences": result.sequences,
                "warnings": result.warnings, "seconds": round(result.seconds, 2)}

    def centreOnLesion(self, segmentationNode, lesionId: int) -> list:
        """Centre every slice view on a lesion's centroid; returns that point (RAS mm)."""
        for row in self.lesionTable(segmentationNode):
            if row["id"] == int(lesionId):
                slicer.vtkMRMLSliceNode.JumpAllSlices(segmentationNode.GetScene(), *row["centroid_ras_mm"],
                                                      slicer.vtkMRMLSliceNode.CenteredJumpSlice)
                return row["centroid_ras_mm"]
        raise InputError(f"The segmentation has no lesion candidate {lesionId}.")

    # -- correct ------------------------------------------------------------------------------------

    def recomputeZones(self, segmentationNode, t2Node) -> list:
        """Make the zones agree with the (edited) gland: TZ clipped to the gland, PZ = gland - TZ.
        Returns warnings for what was inconsistent (zone voxels outside the gland, overlaps...)."""
        arrays = segment_arrays(segmentationNode, t2Node)
        missing = [name for name in review.ZONE_NAMES if name not in arrays]
        if missing:
            raise InputError(f"The segmentation has no {', '.join(missing)} segment.")
        check = review.consistent_zones(arrays["Prostate"], arrays["PZ"], arrays["TZ"])
        self._setSegmentArrays(segmentationNode, t2Node, {"PZ": check.masks["PZ"], "TZ": check.masks["TZ"]})
        return check.warnings

    @staticmethod
    def editInSegmentEditor(segmentationNode, t2Node) -> None:
        """Open the Segment Editor on the segmentation with the T2 as source volume."""
        modules = getattr(slicer, "modules", None)
        if getattr(slicer, "app", None) is None or not hasattr(modules, "segmenteditor"):
            raise InputError("The Segment Editor needs the Slicer application.")
        slicer.util.selectModule("SegmentEditor")
        editor = modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(t2Node)

    # -- quality assurance and export ---------------------------------------------------------------

    def reviewRecord(self, segmentationNode, t2Node, reviewer=None, final=None) -> dict:
        """The QA record of an accepted AI result: model, when, edited or not, Dice and volume change.
        `final`: the segmentation's arrays when the caller already has them."""
        accepted = self._aiResults.get(segmentationNode.GetID()) if segmentationNode is not None else None
        if accepted is None:
            raise InputError("No AI result was accepted into this segmentation in this session.")
        final = segment_arrays(segmentationNode, t2Node) if final is None else final
        return review.review_record(accepted["masks"], final, self._voxelMl(t2Node), accepted["report"].get("models"),
                                    reviewer)

    @staticmethod
    def _voxelMl(volumeNode) -> float:
        return float(np.prod(volumeNode.GetSpacing())) / 1000.0

    @staticmethod
    def saveReviewRecord(record: dict, path: str) -> str:
        write_text(json.dumps(record, indent=2) + "\n", path)
        return path

    @staticmethod
    def psaDensity(segmentationNode, t2Node, psa: float) -> float:
        """PSA / prostate volume (mL) of the segmentation's Prostate segment."""
        arrays = segment_arrays(segmentationNode, t2Node)
        if "Prostate" not in arrays:
            raise InputError("The segmentation has no Prostate segment.")
        return review.psa_density(psa, float(arrays["Prostate"].sum()) * ProstateAILogic._voxelMl(t2Node))

    EXPORT_FORMATS = ("seg.nrrd", "nifti", "dicom-seg")

    def exportSegmentation(self, segmentationNode, t2Node, path: str, fmt: str = "seg.nrrd", t2Source=None) -> str:
        """Write the segmentation on the T2 grid as a .seg.nrrd, NIfTI label maps + JSON label table, or
        a DICOM SEG (ProstateAILib.export, the code `prostateai export` runs).

        The DICOM SEG references the T2's DICOM files: `t2Source` (its series folder) or, in Slicer,
        the files Slicer's DICOM database loaded the T2 from. AI segments are identified by the model
        that made them; segments a person changed after Accept (or drew) are MANUAL.
        """
        from ProstateAILib import export

        if fmt not in self.EXPORT_FORMATS:
            raise InputError(f"Unknown export format '{fmt}'; choose one of {', '.join(self.EXPORT_FORMATS)}.")
        t2 = image_from_volume_node(t2Node)
        arrays, segments = segment_arrays(segmentationNode, t2Node), []
        for name, array in arrays.items():
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(t2)
            segments.append(export.known_segment(name, image))
        algorithms = export.algorithms_from_report(self.reportOf(segmentationNode))
        corrected = {s.name for s in segments if s.name not in algorithms}  # drawn by a person
        accepted = self._aiResults.get(segmentationNode.GetID())
        if accepted is not None:
            record = self.reviewRecord(segmentationNode, t2Node, final=arrays)
            corrected |= {name for name, facts in record["segments"].items() if facts["edited"]}
        source = t2Source or (self._dicomFolderOf(t2Node) if fmt == "dicom-seg" else None)
        if fmt == "dicom-seg" and source is None:
            raise InputError(f"A DICOM SEG needs the T2's DICOM files; '{t2Node.GetName()}' was not loaded from "
                             "Slicer's DICOM database. Export .seg.nrrd or NIfTI instead.")
        export.export_segmentation(segments, source, fmt, path, algorithms, sorted(corrected))
        return path

    @staticmethod
    def _dicomFolderOf(volumeNode):
        """The folder of the DICOM files Slicer loaded a volume from (None when it did not come from DICOM)."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        files = [database.fileForInstance(uid) for uid in uids]
        folders = {os.path.dirname(f) for f in files if f}
        return folders.pop() if len(folders) == 1 else None

    # -- display ------------------------------------------------------------------------------------

    @staticmethod
    def showSegmentation(segmentationNode, t2Node) -> None:
        """Show the T2 in the slice views with the segmentation's outlines over it."""
        slicer.util.setSliceViewerLayers(background=t2Node)
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility2DFill(True)
            displayNode.SetOpacity2DFill(0.3)
            displayNode.SetVisibility2DOutline(True)


#
# ProstateAITest
#


class ProstateAITest(ScriptedLoadableModuleTest):  # noqa: F405
    """Self-test in Slicer on synthetic volumes (the segmentation node glue and input checks)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_ProstateAI_parameters()
        self.test_ProstateAI_segmentationNode()
        self.test_ProstateAI_badInput()

    @staticmethod
    def _expect(condition, message):
        if not condition:
            raise AssertionError(message)

    def test_ProstateAI_parameters(self):
        self.delayDisplay("Parameter node keeps the input volume")
        array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
        volumeNode = slicer.util.addVolumeFromArray(array, name="t2")
        parameters = ProstateAILogic().getParameterNode()
        parameters.inputVolume = volumeNode
        self._expect(parameters.inputVolume is volumeNode, "input volume not stored in the parameter node")
        self._expect(describe_volume(volumeNode) == "6 x 5 x 4 voxels, spacing 1 x 1 x 1 mm",
                     f"unexpected volume description: {describe_volume(volumeNode)}")
        self.delayDisplay("Test passed")

    def test_ProstateAI_segmentationNode(self):
        self.delayDisplay("Label maps -> segmentation node (Prostate, PZ, TZ) and back, voxel for voxel")
        array = np.random.default_rng(0).random((6, 20, 24)).astype(np.float32)
        # oblique: in-plane axes rotated by 30 degrees about S, anisotropic spacing
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        ijkToRAS = np.array([[0.7 * c, -0.7 * s, 0, 5], [0.7 * s, 0.7 * c, 0, -3], [0, 0, 2.5, 1], [0, 0, 0, 1]])
        t2Node = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRAS, name="t2 oblique")
        zones = np.zeros(array.shape, np.uint8)
        zones[2:5, 5:15, 6:18] = 1
        zones[2:5, 8:12, 9:15] = 2
        prostate = (zones > 0).astype(np.uint8)
        node = add_segmentation_node(slicer.mrmlScene, t2Node, {"prostate": prostate, "zones": zones}, pipeline.SEGMENTS)
        segmentation = node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self._expect(names == list(SEGMENT_NAMES), f"segments {names}")
        for segmentName, expected in (("Prostate", prostate), ("PZ", zones == 1), ("TZ", zones == 2)):
            segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
            exported = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, t2Node)
            self._expect(np.array_equal(exported > 0, expected > 0), f"{segmentName} voxels differ")
        self.delayDisplay("Test passed")

    def test_ProstateAI_badInput(self):
        self.delayDisplay("A constant volume is refused with a clear message")
        constant = slicer.util.addVolumeFromArray(np.full((5, 16, 16), 7, np.int16), name="constant")
        try:
            ProstateAILogic().segment(constant)
        except InputError as error:
            self._expect("constant" in str(error).lower(), f"unclear message: {error}")
        else:
            raise AssertionError("a constant volume was accepted")
        self.delayDisplay("Test passed")
