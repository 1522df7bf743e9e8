"""Widget plumbing shared by the module widgets: the parameter node (all three) and background jobs
(MRStandardize, ProstateAI).

Each widget keeps its state in a parameter node (`parameterNodeWrapper`) bound to its .ui widgets
through their `SlicerParameterName` properties; this mixin owns that binding so CTPreprocess,
MRStandardize and ProstateAI do it one way. A widget using it inherits
`(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin)` and provides
`self.logic.getParameterNode()` and `_onParameterNodeModified()`. Widgets with background jobs
extend `onSceneStartClose` (discard the job, then `super()`).

`JobPollingWidgetMixin` runs one out-of-process `ProstateAICore.jobs.Job` at a time, polled from the
GUI thread by a QTimer (the GUI never blocks), with the job's progress and message shown and a real
Cancel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import qt
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


@dataclass
class RunningJob:
    job: object  # ProstateAICore.jobs.Job
    tempdir: str  # the job's private folder (outputs are read from it, then it is removed)
    what: str  # shown with the elapsed time, e.g. "Segmentation: 4.2 s"
    context: dict = field(default_factory=dict)  # whatever the finish step needs (input nodes, kind)
    start: float = field(default_factory=time.perf_counter)


class JobPollingWidgetMixin:
    """One background job at a time. The widget's .ui has `progressBar`, `statusLabel`, `timeLabel`
    and `cancelButton`; the widget calls `setupJobPolling()` in `setup`, `startJob(...)` with a started
    job, and provides `_finishJob(running)` (load results; the job has ended, maybe cancelled or
    failed) and `_updateButtons()` (which can test `self.jobRunning`)."""

    POLL_INTERVAL_MS = 200
    _job = None
    _timer = None

    @property
    def jobRunning(self) -> bool:
        return self._job is not None

    def setupJobPolling(self) -> None:
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)
        self.ui.progressBar.visible = False
        self.ui.cancelButton.enabled = False
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

    def startJob(self, job, tempdir: str, what: str, context: dict | None = None,
                 message: str = "Started in the background...") -> None:
        self._job = RunningJob(job, tempdir, what, dict(context or {}))
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = message
        self._updateButtons()
        self._timer.start()

    def _pollJob(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        job = self._job.job
        state = job.poll()
        self.ui.progressBar.value = int(round(100 * job.progress))
        if job.message:
            self.ui.statusLabel.text = job.message
        if state == "running":
            return
        self._timer.stop()
        running, self._job = self._job, None
        self.ui.progressBar.visible = False
        self._finishJob(running)
        self.ui.timeLabel.text = f"{running.what}: {time.perf_counter() - running.start:.1f} s"
        self._updateButtons()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.job.cancel()  # the next poll sees "cancelled" and the finish step cleans up
            self.ui.statusLabel.text = "Cancelling..."

    def discardRunningJob(self) -> None:
        """Stop polling and kill the job, removing its folder (module cleanup, scene close)."""
        from ProstateAICore.jobs import discard_job

        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            discard_job(self._job.job, self._job.tempdir)
            self._job = None

    def _fail(self, message: str) -> None:
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message)
