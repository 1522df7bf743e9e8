"""The browser app: trame-slicer views and segment editor around the Slicer module's own Logic.

Layout and callbacks only. Every step is a call to `ProstateAI.ProstateAILogic` (the class the Slicer
module runs, imported with `slicer_module`) or to a Lib function: Segment = startSegmentJob, Job
polling, finishSegmentJob; Review = setPreviewThreshold, setPreviewOpacity, acceptPreview,
rejectPreview, undoAccept, describeQuality, describeReport, describeRun; Correct = trame-slicer's segment
editor (paint / erase on the segmentation node), recomputeZones and psaDensity; Save = exportSegmentation,
reviewRecord and saveReviewRecord (the QA record). The scene is trame-slicer's MRML scene; errors are
shown on the page and the server keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import slicer

from trame.app import TrameApp
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import SegmentEditorLogic
from trame_slicer.app.ui import (SegmentEditorUI, SegmentEditorUndoRedoUI, create_vertical_slice_view_gutter_ui,
                                create_vertical_view_gutter_ui)
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import RemoteViewFactory
from trame_slicer.rca_view.rca_view_factory import RcaRenderStrategy
from trame_slicer.segmentation import SegmentationOverwriteMode
from trame_slicer.views import (Layout, LayoutDirection, NoScheduleRendering, SliceView, ThreeDView,
                                ViewLayoutDefinition, ViewType)

from CTPreprocessLib import window as ct_window
from ProstateAICore.errors import Cancelled, InputError
from ProstateAICore.intensity import percentiles
from ProstateAICore.jobs import discard_job

from . import case as cases
from . import slicer_module
from .teaching import TeachingPanels

log = logging.getLogger("prostateai.view")

# Window presets for MR (no Hounsfield units): percentiles of the T2's voxels, or Slicer's automatic window.
WINDOW_PRESETS = {"Auto": None, "Soft tissue (1-99.5 %)": (1.0, 99.5), "High contrast (5-95 %)": (5.0, 95.0),
                  "Full range": (0.0, 100.0)}
# On a CT: the organ presets of CTPreprocessLib.window (level / width in HU), the same the CT module uses.
CT_WINDOW_PRESETS = {"Auto": None, **{label: key for key, label in ct_window.PRESET_LABELS.items()}}
SAVE_FORMATS = {".seg.nrrd": "seg.nrrd", ".nii.gz": "nifti", ".dcm": "dicom-seg"}  # Save as suffix -> export format
VIEW_NAMES = {"Red": "axial", "Yellow": "sagittal", "Green": "coronal", "ThreeD": "3d"}


def window_line(name: str, how: str, lo: float, hi: float, array, unit: str = "") -> str:
    """"Soft tissue (abdomen): level 50 HU, width 400 HU: -150 to 250 HU from black to white; 31.2 % of
    the voxels in between (darker ones black, brighter ones white)." """
    inside = 100.0 * float(np.count_nonzero((array >= lo) & (array <= hi))) / max(array.size, 1)
    unit = f" {unit}" if unit else ""
    return (f"{name}: {how}: {lo:.0f} to {hi:.0f}{unit} from black to white; {inside:.1f} % of the voxels in "
            "between (darker ones black, brighter ones white).")


def main_layout() -> Layout:
    """Axial view large on the left; sagittal, coronal and 3D on the right."""
    return Layout(LayoutDirection.Horizontal, [
        ViewLayoutDefinition.axial_view(),
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.coronal_view(),
                                          ViewLayoutDefinition.threed_view()]),
    ])


def _fast_lossless_png() -> None:
    """Encode the views' PNG frames with zlib level 1 instead of Pillow's default 6.

    trame-rca offers PNG (lossless: the page shows the exact overlay colours) but not its compression
    level; level 6 takes ~80 ms for an 850 x 503 slice view on one core (~200 ms while the views render),
    level 1 ~20 ms for ~15 % more bytes, which is most of a slice-scroll frame. Other formats are untouched.
    """
    from io import BytesIO

    from PIL import Image
    from trame_rca.encoders import image_encoder, img

    original = getattr(image_encoder, "encode_pil", None)
    if original is None or getattr(original, "fast_png", False):
        return

    def encode(np_image, img_format, cols, rows, quality, now_ms):
        if img_format != "png" or not (cols and rows):
            return original(np_image, img_format, cols, rows, quality, now_ms)
        rgbx = img.rgbx_view(np_image)
        image = (Image.frombuffer("RGBX", rgbx.shape[1::-1], rgbx, "raw", "RGBX", 0, 1).convert("RGB")
                 if rgbx is not None else Image.fromarray(np_image))
        buffer = BytesIO()
        image.save(buffer, "png", compress_level=1)
        meta = dict(type="image/png", codec="", w=cols, h=rows, st=now_ms, key="key", quality=quality)
        return buffer.getvalue(), meta, now_ms

    encode.fast_png = True
    image_encoder.encode_pil = encode


def _quiet_view(view_class):
    """A view that does not render while it is set up (the remote strategy takes over at the end) and
    without multisampling: on software OpenGL trame-slicer's defaults (a render after each of ~240 set-up
    steps, 8x multisampling) cost ~2 s at start and ~30 ms per frame."""
    def make(**kwargs):
        view = view_class(scheduled_render_strategy=NoScheduleRendering(), **kwargs)
        view.render_window().SetMultiSamples(0)
        return view
    return make


class _Focus:
    """The view the user last sent a mouse or wheel event to, and when (monotonic s)."""
    view: str | None = None
    since: float = 0.0
    HOLD_S = 1.0  # a view keeps the focus this long after its last event


class _FocusedViewFirst(RcaRenderStrategy):
    """Render at once when this view has the focus (or none has); otherwise DELAY_S after the last request.

    Why: scrolling the axial view changes the 3D view (it shows the slices) and the other slice views
    too; each render blocks the server's one event loop for tens of ms on software OpenGL, and when
    they run first the axial frame waits. Deferred, they render in the pause after the scroll."""

    DELAY_S = 0.15

    def __init__(self, scheduler, name: str):
        super().__init__(scheduler)
        self._name, self._pending = name, None

    def schedule_render(self):
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        idle = time.monotonic() - _Focus.since > _Focus.HOLD_S
        if idle or _Focus.view in (None, self._name):
            super().schedule_render()
        else:
            self._pending = asyncio.get_event_loop().call_later(self.DELAY_S, self._render_now)

    def _render_now(self):
        self._pending = None
        super().schedule_render()


class _FocusFirstViewFactory(RemoteViewFactory):
    """trame-slicer's remote view factory whose views render the focused view first (`_FocusedViewFirst`)."""

    def _create_view(self, view, scene, app_logic):
        created = super()._create_view(view, scene, app_logic)
        adapter, name = created.view_adapter, view.singleton_tag
        interact = adapter.on_interaction

        def on_interaction(origin, event):
            _Focus.view, _Focus.since = name, time.monotonic()
            interact(origin, event)

        adapter.on_interaction = on_interaction
        created.slicer_view.set_scheduled_render(_FocusedViewFirst(adapter._scheduler, name))
        return created


def _register_view_factories(view_manager, server) -> None:
    """trame-slicer's remote (RCA) slice and 3D view factories, as `register_rca_factories` makes them,
    with lossless PNG frames (exact colours on the page), interactive quality = still quality (a change
    is rendered and encoded once, no second "still" frame) and the focused view rendered first."""
    _fast_lossless_png()
    for view_class, view_type, populate in ((SliceView, ViewType.SLICE_VIEW, _marked_slice_view_ui),
                                            (ThreeDView, ViewType.THREE_D_VIEW, _marked_3d_view_ui)):
        view_manager.register_factory(_FocusFirstViewFactory(
            server, _quiet_view(view_class), view_type, populate_view_ui_f=populate, target_fps=30.0, blur_fps=10.0,
            interactive_quality=90, rca_encoder="png"))


def _marked_slice_view_ui(server, view_id, view):
    """trame-slicer's slice gutter (slice slider) plus a marker naming the view in the page."""
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    html.Div(classes=f"prostateai-view prostateai-view-{VIEW_NAMES.get(view.get_singleton_tag(), 'other')}",
             style="display: none;")


def _marked_3d_view_ui(server, view_id, view):
    create_vertical_view_gutter_ui(server, view_id, view)
    html.Div(classes="prostateai-view prostateai-view-3d", style="display: none;")


class ProstateAIViewApp(TrameApp):
    def __init__(self, server=None, inputs=(), segmentation=None, save_dir=None):
        super().__init__(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        slicer_module.attach_scene(self.slicer_app)
        self.module = slicer_module.import_module_file("ProstateAI")
        self.logic = self.module.ProstateAILogic()
        self.logic.useWorker(True)  # as the Slicer widget: a session's next segmentation skips the process start
        self._mrml = slicer_module.import_module_file("ProstateAIMRML")
        self.repo = slicer_module.module_folders()[0].parent
        self.save_dir = Path(save_dir or Path.cwd())

        _register_view_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout("ProstateAI", main_layout())
        self.layout_manager.set_layout("ProstateAI")
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)

        self.volumes = {}  # role -> volume node
        self.preview = None  # AI result under review
        self.current = None  # the segmentation Correct and Save work on (accepted or loaded)
        self.t2_dicom = None  # the T2's DICOM folder when it has one (DICOM SEG export)
        self.is_ct = False  # the open image is a CT in HU: CT organ window presets
        self.before_accept = None  # what `current` was before the last Accept (Undo puts it back)
        self.running = None  # (job, tempdir) of the segmentation job
        self.watched = None  # (segmentation, observer tag): edits to `current` mark it unsaved
        self.discard_confirmed = False  # Open was clicked once with unsaved edits: the next click discards them

        self._init_state()
        self.teaching = TeachingPanels(self)
        self._build_ui()
        self.editor_logic.set_ui(self.editor_ui)
        self.open_case(list(inputs) if inputs else [str(cases.sample_case(self.repo))], segmentation)

    # -- state -------------------------------------------------------------------------------------

    def _init_state(self):
        s = self.state
        s.trame__title = "ProstateAI"
        s.update(dict(case_name="", case_lines=[], open_path="", error="", message="", window_preset="Auto",
                      window_presets=list(WINDOW_PRESETS), window_text="",
                      window=1.0, level=0.5, window_max=1.0, level_min=0.0, level_max=1.0, job_running=False,
                      progress=0, progress_message="", has_preview=False, threshold=0.5, opacity=0.4,
                      quality_text="", quality_colour="#dddddd", volumes_text="", run_text="", has_result=False,
                      can_undo=False, result_name="", unsaved=False, save_path="", psa="", psa_text="", reviewer="",
                      lesion_rows=[], operating_point="balanced",
                      operating_points=list(self.logic.OPERATING_POINTS), lesion_note=""))
        s.change("window_preset")(self.on_window_preset)
        s.change("window", "level")(self.on_window_level)
        s.change("threshold")(self.on_threshold)
        s.change("opacity")(self.on_opacity)
        s.change("operating_point")(self.on_operating_point)
        s.change("psa")(self.on_psa)

    def _step(self, what: str, action) -> bool:
        """Run one user action; its message goes to the status line, its error to the error banner."""
        self.state.error = ""
        try:
            message = action()
        except Cancelled:
            message = "Cancelled: nothing was added to the scene."
        except InputError as error:
            self.state.error = str(error)
            return False
        except Exception as error:  # unexpected: logged with its traceback, shown in one line
            log.exception("%s failed", what)
            self.state.error = f"{what} failed: {type(error).__name__}: {error}"
            return False
        if message:
            self.state.message = message
        return True

    # -- case --------------------------------------------------------------------------------------

    def open_case(self, inputs: list, segmentation=None) -> bool:
        return self._step("Open", lambda: self._open(inputs, segmentation))

    def _open(self, inputs, segmentation):
        case = cases.read_case(inputs)  # read first: a bad path leaves the open case as it is
        self._discard_job()
        self.editor_logic.segmentation_editor.clear()
        self._watch_edits(None)
        for node in list(self.volumes.values()) + [n for n in (self.preview, self.current, self.before_accept) if n]:
            if node.GetScene() is not None:
                self.slicer_app.scene.RemoveNode(node)
        self.volumes, self.preview, self.current, self.before_accept = {}, None, None, None
        scene = self.slicer_app.scene
        self.volumes = {role: self._mrml.add_volume_node(scene, image, f"{case.name} {role}")
                        for role, image in case.images.items()}
        self.teaching.reset()
        t2 = self.volumes["T2"]
        self.slicer_app.display_manager.show_volume_in_slice_background(t2)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        self.slicer_app.display_manager.reset_views()
        self._oblique_3d_camera()
        lo, hi = (float(v) for v in percentiles(slicer.util.arrayFromVolume(t2), [0, 100]))
        s = self.state
        s.case_name, s.case_lines = case.name, case.lines
        self.is_ct = case.is_ct
        s.window_presets = list(CT_WINDOW_PRESETS if self.is_ct else WINDOW_PRESETS)
        if s.window_preset not in s.window_presets:
            s.window_preset = "Auto"
        self.t2_dicom = case.t2_dicom
        s.window_max, s.level_min, s.level_max = max(hi - lo, 1.0), lo, hi
        s.save_path = str(self.save_dir / f"{case.name}-segmentation.seg.nrrd")
        self._apply_window_preset(s.window_preset)
        self._reset_review()
        message = f"Opened {case.name}: {self._mrml.describe_volume(t2)}"
        if segmentation:
            layers, segments = cases.segmentation_layers(segmentation, case.images["T2"])
            node = self._mrml.add_segmentation_node(scene, t2, layers, segments,
                                                    f"{Path(segmentation).name.split('.')[0]}")
            self._set_current(node, saved=True)
            message += f"; segmentation '{node.GetName()}' ({', '.join(s[0] for s in segments)})"
        return message

    def _oblique_3d_camera(self):
        """Look at the slice planes from the front-left and above rather than straight from the front."""
        for view in self.slicer_app.view_manager.get_threed_views():
            view.set_background_color([20, 20, 24])
            camera_node = view.get_camera_node()
            if camera_node is not None:
                camera = camera_node.GetCamera()
                camera.Azimuth(35)
                camera.Elevation(25)
                camera.OrthogonalizeViewUp()
                camera.Dolly(1.8)
                camera_node.Modified()
                view.schedule_render()

    def on_open(self):
        if self.current is not None and self.state.unsaved and not self.discard_confirmed:
            self.discard_confirmed = True
            self.state.error = (f"'{self.current.GetName()}' has changes that are not saved: Save them, or click "
                                "Open again to discard them.")
            return
        path = (self.state.open_path or "").strip()
        self.open_case([path] if path else [str(cases.sample_case(self.repo))])  # resets discard_confirmed

    def _apply_window_preset(self, name):
        """Set the preset's window on the main image and say in one line what it shows (teaching)."""
        display = self.volumes["T2"].GetDisplayNode() if "T2" in self.volumes else None
        if display is None:
            return
        array = slicer.util.arrayFromVolume(self.volumes["T2"])
        presets = CT_WINDOW_PRESETS if self.is_ct else WINDOW_PRESETS
        if presets.get(name) is None:
            display.AutoWindowLevelOn()
            how = "Slicer's automatic window"
        elif self.is_ct:
            level, width = ct_window.PRESETS[presets[name]]
            lo, hi = ct_window.window_from_preset(presets[name])
            how = f"level {level:g} HU, width {width:g} HU"
        else:
            lo, hi = percentiles(array, presets[name])
            how = "percentiles {:g}-{:g} % of the image".format(*presets[name])
        if presets.get(name) is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(float(lo), float(hi))
        self.state.window, self.state.level = float(display.GetWindow()), float(display.GetLevel())
        self.state.window_text = window_line(name, how, display.GetWindowLevelMin(), display.GetWindowLevelMax(), array,
                                             "HU" if self.is_ct else "")

    def on_window_preset(self, window_preset, **_):
        self._step("Window preset", lambda: self._apply_window_preset(window_preset))

    def on_window_level(self, window, level, **_):
        """The W / L sliders (a preset sets them to its window, which then changes nothing here)."""
        display = self.volumes["T2"].GetDisplayNode() if "T2" in self.volumes else None
        if display is not None and (abs(display.GetWindow() - window) > 1e-6
                                    or abs(display.GetLevel() - level) > 1e-6):
            display.AutoWindowLevelOff()
            display.SetWindowLevel(float(window), float(level))

    # -- segment (out of process) ------------------------------------------------------------------

    def on_segment(self):
        def start():
            if self.running is not None:
                raise InputError("A segmentation is already running.")
            job, tempdir = self.logic.startSegmentJob(self.volumes.get("T2"), self.volumes.get("ADC"),
                                                      self.volumes.get("HBV"))
            self.running = (job, tempdir)
            self.state.job_running, self.state.progress, self.state.progress_message = True, 0, "starting"
            create_task(self._watch(job, tempdir))
            return "Segmenting in the background..."
        self._step("Segment", start)

    async def _watch(self, job, tempdir):
        while job.poll() == "running":
            with self.state:
                self.state.progress = round(100 * job.progress)
                self.state.progress_message = job.message
            await asyncio.sleep(0.25)
        with self.state:
            if self.running is None or self.running[0] is not job:  # discarded (a new case was opened)
                return
            self.running = None
            self.state.job_running = False
            self.state.message = ""  # not "Segmenting in the background..." above a failure
            self._step("Segmentation", lambda: self._finish(job, tempdir))

    def _finish(self, job, tempdir):
        t2 = self.volumes["T2"]
        node, report = self.logic.finishSegmentJob(job, tempdir, t2)
        if self.preview is not None:  # one preview at a time: the newer replaces it
            self.logic.rejectPreview(self.preview)
        self.preview = node
        node.CreateClosedSurfaceRepresentation()  # shown in the 3D view
        text, colour = self.logic.describeQuality(report)
        s = self.state
        s.has_preview, s.quality_text, s.quality_colour = True, text, colour
        s.volumes_text, s.run_text = self.logic.describeReport(report), self.logic.describeRun(report)
        s.opacity = float(node.GetDisplayNode().GetOpacity2DFill())
        s.threshold = self.logic.previewThreshold(node)
        self._show_lesions()
        return f"'{node.GetName()}': {self.logic.describeReport(report)}. Review the preview, then Accept or Reject."

    def on_cancel(self):
        async def cancel():
            running = self.running
            if running is None:
                return
            await asyncio.get_running_loop().run_in_executor(None, running[0].cancel)
        create_task(cancel())

    def _discard_job(self):
        if self.running is not None:
            job, tempdir = self.running
            self.running = None
            discard_job(job, tempdir)
            self.state.job_running = False

    def close(self):
        """Stop a running segmentation and the background worker (whole process trees); remove temporary folders."""
        self._discard_job()
        self.logic.useWorker(False)

    # -- review ------------------------------------------------------------------------------------

    def _reset_review(self):
        s = self.state
        s.has_preview = self.preview is not None
        s.has_result = self.current is not None
        s.result_name = self.current.GetName() if self.current is not None else ""
        s.can_undo = self.logic.canUndoAccept(self.current)
        if self.preview is None:
            s.quality_text, s.volumes_text, s.run_text = "", "", ""
        self._show_lesions()

    # -- lesions -----------------------------------------------------------------------------------

    def _lesion_node(self):
        """The segmentation whose lesion candidates are listed: the preview under review, else the accepted one."""
        return self.preview if self.preview is not None else self.current

    def _show_lesions(self):
        node = self._lesion_node()
        rows = self.logic.lesionTable(node) if node is not None else []
        self.state.lesion_rows = [{"id": r["id"], "score": f"{r['score']:.2f}", "isup": r.get("isup_class") or "—",
                                   "ml": f"{r['volume_ml']:.2f}", "zone": r.get("zone") or "",
                                   "passed": ", ".join(r["passed"]) or "none"} for r in rows]
        if rows:
            self.logic.showLesionMarkups(node)
            self.on_operating_point(self.state.operating_point)

    def on_operating_point(self, operating_point, **_):
        node = self._lesion_node()
        if node is None or not self.state.lesion_rows:
            return
        def apply():
            shown = self.logic.setOperatingPoint(node, operating_point)
            self.state.lesion_note = (f"{len(shown)} of {len(self.state.lesion_rows)} candidate(s) shown at "
                                      f"'{operating_point}'")
            return ""
        self._step("Operating point", apply)

    def on_lesion(self, lesion_id):
        node = self._lesion_node()
        self._step("Lesion", lambda: "Centred on lesion {} at RAS ({:.1f}, {:.1f}, {:.1f}) mm".format(
            lesion_id, *self.logic.centreOnLesion(node, int(lesion_id))))

    def on_threshold(self, threshold, **_):
        preview = self.preview
        if preview is None or abs(float(threshold) - self.logic.previewThreshold(preview)) < 1e-9:
            return
        self._step("Threshold", lambda: "Preview at threshold {:.2f}: Prostate {Prostate:.1f} mL (PZ {PZ:.1f}, "
                   "TZ {TZ:.1f})".format(float(threshold), **self.logic.setPreviewThreshold(
                       preview, float(threshold), self.volumes["T2"])))

    def on_opacity(self, opacity, **_):
        if self.preview is not None:
            self.logic.setPreviewOpacity(self.preview, float(opacity))

    def on_accept(self):
        def accept():
            previous = self.current
            target = self.logic.acceptPreview(self.preview, self.volumes["T2"])
            self.preview = None
            self.before_accept = previous
            self._set_current(target)
            return f"Accepted into '{target.GetName()}'. Correct it (Paint / Erase), then Save."
        self._step("Accept", accept)
        self._reset_review()

    def on_reject(self):
        def reject():
            self.logic.rejectPreview(self.preview)
            self.preview = None
            return "Rejected: the preview was removed."
        self._step("Reject", reject)
        self._reset_review()

    def on_undo(self):
        def undo():
            node = self.current
            self.editor_logic.segmentation_editor.clear()
            self.logic.undoAccept(node)
            self.current = None
            self._watch_edits(None)
            self.state.unsaved = False
            if self.before_accept is not None and self.before_accept.GetScene() is not None:
                self._set_current(self.before_accept)
            self.before_accept = None
            return "Accept undone."
        self._step("Undo", undo)
        self._reset_review()

    # -- correct and save --------------------------------------------------------------------------

    def _set_current(self, node, saved=False):
        """Make `node` the segmentation that trame-slicer's segment editor paints on and Save writes;
        `saved`: it is already in a file (an opened segmentation), else it shows as not saved."""
        self.current = node
        editor = self.editor_logic.segmentation_editor
        editor.set_active_segmentation(node, self.volumes["T2"])
        editor.set_surface_representation_enabled(True)  # shown in the 3D view
        # Prostate contains PZ and TZ: painting one segment must not erase the others.
        editor.set_overwrite_mode(SegmentationOverwriteMode.ALLOW_OVERLAP)
        display = node.GetDisplayNode()
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)
        display.SetOpacity2DFill(0.4)
        self._watch_edits(node)  # after the editor's own set-up: only the user's changes count
        self.state.unsaved = not saved
        self._show_psa_density()
        self._reset_review()

    def _watch_edits(self, node):
        """Observe `node`'s segments (paint, erase, scissors, islands, recomputed zones all change its source
        representation): any change marks the result unsaved until the next Save."""
        if self.watched is not None:
            self.watched[0].RemoveObserver(self.watched[1])
            self.watched = None
        self.discard_confirmed = False
        if node is not None:
            segmentation = node.GetSegmentation()
            tag = segmentation.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified, self._on_edit)
            self.watched = (segmentation, tag)

    def _on_edit(self, *_):
        with self.state:  # from a view interaction (a brush stroke): push the change to the page now
            self.state.unsaved = True
            self._show_psa_density()
        self.discard_confirmed = False

    def on_psa(self, psa, **_):
        self._show_psa_density()

    def _show_psa_density(self):
        """PSA / gland volume of the current segmentation (`psaDensity`), kept up to date with its edits."""
        psa, text = str(self.state.psa or "").strip(), ""
        if psa and self.current is not None:
            try:
                text = f"PSA density {self.logic.psaDensity(self.current, self.volumes['T2'], float(psa)):.3f} ng/mL/mL"
            except ValueError:
                text = f"PSA must be a number in ng/mL (got '{psa}')."
            except InputError as error:
                text = str(error)
        self.state.psa_text = text

    def on_save_record(self):
        def save():
            path = self._record_path()
            reviewer = (self.state.reviewer or "").strip() or None
            record = self.logic.reviewRecord(self.current, self.volumes["T2"], reviewer)
            self.logic.saveReviewRecord(record, path)
            return f"Wrote {path} (edited: {'yes' if record['edited'] else 'no'})"
        self._step("QA record", save)

    def _record_path(self) -> str:
        """The QA record beside the segmentation's file: <name>.review.json."""
        if not (self.state.save_path or "").strip():
            raise InputError("Give the segmentation's file name first: the QA record is saved beside it.")
        return self._beside_save_path(".review.json")

    def _beside_save_path(self, suffix: str) -> str:
        """The "Save as" name with its format suffix replaced by `suffix` (the case's default name when empty)."""
        path = (self.state.save_path or "").strip() or str(self.save_dir / f"{self.state.case_name}-segmentation")
        for known in SAVE_FORMATS:
            if path.lower().endswith(known):
                return path[: -len(known)] + suffix
        return path + suffix

    def keep_unsaved(self) -> str | None:
        """When the server stops: changes no file holds go to <Save as name>.unsaved.seg.nrrd (never over the
        user's own file); returns that path, or None when there was nothing unsaved."""
        if self.current is None or not self.state.unsaved:
            return None
        path = self._beside_save_path(".unsaved.seg.nrrd")
        self.logic.exportSegmentation(self.current, self.volumes["T2"], path, "seg.nrrd")
        return path

    def on_recompute_zones(self):
        self._step("Recompute zones", lambda: " ".join(self.logic.recomputeZones(self.current, self.volumes["T2"]))
                   or "Zones already agree with the gland.")

    def on_save(self):
        def save():
            path = (self.state.save_path or "").strip()
            if not path:
                raise InputError("Give a file name for the segmentation (.seg.nrrd, .nii.gz or .dcm).")
            fmt = next((f for suffix, f in SAVE_FORMATS.items() if path.lower().endswith(suffix)), None)
            if fmt is None:
                raise InputError(f"'{path}': save as .seg.nrrd (Slicer), .nii.gz (label maps + JSON table) or .dcm "
                                 "(DICOM SEG).")
            if self.current is None:
                raise InputError("Accept a result (or open a segmentation) first.")
            written = self.logic.exportSegmentation(self.current, self.volumes["T2"], path, fmt, self.t2_dicom)
            self.state.unsaved = False
            return f"Wrote {written}"
        self._step("Save", save)

    # -- page --------------------------------------------------------------------------------------

    def _build_ui(self):
        with VAppLayout(self.server, full_height=True) as self.ui:
            self.ui.root.theme = "dark"
            with v3.VAppBar(density="compact"):
                v3.VAppBarTitle("ProstateAI  {{ case_name }}")
            with v3.VNavigationDrawer(permanent=True, width=390, classes="pa-2"):
                self._case_panel()
                self._segment_panel()
                self._review_panel()
                self._lesions_panel()
                self._correct_panel()
                self.teaching.build()
            with v3.VMain(), html.Div(style="height: calc(100vh - 80px); position: relative;", classes="d-flex"):
                self.layout_manager.initialize_layout_grid(self.ui)
            with v3.VFooter(app=True, height=32, classes="py-0 text-body-2"):
                html.Div("{{ message }}", classes="prostateai-message text-truncate", title=("message",))

    def _case_panel(self):
        v3.VAlert(v_if="error", text=("error",), type="error", density="compact", closable=True,
                  classes="mb-2 prostateai-error", click_close="error = ''")
        with v3.VCard(title="Case", variant="tonal", density="compact", classes="mb-2"):
            with v3.VCardText():
                with html.Div(classes="d-flex align-center"):
                    v3.VTextField(v_model=("open_path",), label="Open (T2, study folder or image on the server)",
                                  density="compact", hide_details=True, classes="prostateai-open-path",
                                  placeholder="empty: the bundled sample case")
                    v3.VBtn("Open", click=self.on_open, size="small", classes="ml-2")
                html.Div("{{ line }}", v_for="line in case_lines", classes="text-caption",
                         style="white-space: nowrap; overflow: hidden; text-overflow: ellipsis;")
                v3.VSelect(v_model=("window_preset",), items=("window_presets",),
                           label="Window preset", density="compact", hide_details=True, classes="mt-2")
                html.Div("{{ window_text }}", classes="text-caption prostateai-window-text")
                v3.VSlider(v_model=("window",), min=1, max=("window_max",), label="W", density="compact",
                           hide_details=True, step=1)
                v3.VSlider(v_model=("level",), min=("level_min",), max=("level_max",), label="L",
                           density="compact", hide_details=True, step=1)

    def _segment_panel(self):
        with v3.VCard(title="Segment", variant="tonal", density="compact", classes="mb-2"):
            with v3.VCardText():
                with html.Div(classes="d-flex"):
                    v3.VBtn("Segment", click=self.on_segment, disabled=("job_running",), color="primary",
                            size="small", classes="prostateai-segment")
                    v3.VBtn("Cancel", click=self.on_cancel, v_if="job_running", size="small", classes="ml-2")
                v3.VProgressLinear(v_if="job_running", model_value=("progress",), height=16,
                                   classes="mt-2 prostateai-progress", children=["{{ progress }} %"])
                html.Div("{{ progress_message }}", v_if="job_running", classes="text-caption")

    def _review_panel(self):
        with v3.VCard(title="Review", variant="tonal", density="compact", classes="mb-2",
                      v_if="has_preview || can_undo"):
            with v3.VCardText():
                html.Div("{{ quality_text }}", v_if="has_preview", classes="pa-1 mb-1 prostateai-quality",
                         style=("{ background: quality_colour, color: 'black' }",))
                html.Div("{{ volumes_text }}", v_if="has_preview", classes="text-caption")
                html.Div("{{ run_text }}", v_if="has_preview", classes="text-caption prostateai-run")
                with html.Div(v_if="has_preview", classes="prostateai-threshold"):
                    v3.VSlider(v_model=("threshold",), min=0.05, max=0.95, step=0.01, label="Threshold",
                               density="compact", hide_details=True, thumb_label=True)
                v3.VSlider(v_if="has_preview", v_model=("opacity",), min=0, max=1, step=0.05, label="Fill",
                           density="compact", hide_details=True)
                with html.Div(classes="d-flex"):
                    v3.VBtn("Accept", click=self.on_accept, v_if="has_preview", color="success", size="small")
                    v3.VBtn("Reject", click=self.on_reject, v_if="has_preview", color="error", size="small",
                            classes="ml-2")
                    v3.VBtn("Undo accept", click=self.on_undo, v_if="can_undo", size="small", classes="ml-2")

    def _lesions_panel(self):
        with v3.VCard(title="Lesion candidates", variant="tonal", density="compact", classes="mb-2 prostateai-lesions",
                      v_if="lesion_rows.length", subtitle="rule-based baseline on T2 + ADC + HBV: review each"):
            with v3.VCardText():
                v3.VSelect(v_model=("operating_point",), items=("operating_points",), label="Operating point",
                           density="compact", hide_details=True, classes="prostateai-operating-point")
                html.Div("{{ lesion_note }}", classes="text-caption mb-1")
                with v3.VTable(density="compact", hover=True, classes="prostateai-lesion-table"):
                    with html.Thead(), html.Tr():
                        for title in ("Lesion", "Score", "ISUP", "mL", "Zone", "Passes"):
                            html.Th(title)
                    with html.Tbody():
                        with html.Tr(v_for="row in lesion_rows", key="row.id", style="cursor: pointer;",
                                     click=(self.on_lesion, "[row.id]"), classes="prostateai-lesion-row"):
                            for key in ("id", "score", "isup", "ml", "zone", "passed"):
                                html.Td(f"{{{{ row.{key} }}}}")

    def _correct_panel(self):
        with v3.VCard(title="Correct and save", variant="tonal", density="compact", v_if="has_result",
                      subtitle=("result_name",)):
            with v3.VCardText():
                with html.Div(style="height: 430px; display: flex; flex-direction: column;"):
                    self.editor_ui = SegmentEditorUI()
                with html.Div(classes="d-flex align-center prostateai-edit-history"):
                    html.Span("Edits:", classes="text-caption mr-2")
                    SegmentEditorUndoRedoUI(self.editor_ui, row=True)
                v3.VBtn("Recompute zones", click=self.on_recompute_zones, size="small", classes="mt-2")
                with html.Div(classes="d-flex align-center mt-2"):
                    v3.VTextField(v_model=("save_path",), label="Save as (.seg.nrrd, .nii.gz or .dcm on the server)",
                                  density="compact", hide_details=True, classes="prostateai-save-path")
                    v3.VBtn("Save", click=self.on_save, size="small", classes="ml-2")
                html.Div("Not saved: changes since the last Save", v_if="unsaved",
                         classes="text-caption text-warning mt-1 prostateai-unsaved")
                with html.Div(classes="d-flex align-center mt-2"):
                    v3.VTextField(v_model=("psa",), label="PSA (ng/mL)", density="compact", hide_details=True,
                                  classes="prostateai-psa", style="max-width: 140px;")
                    html.Div("{{ psa_text }}", classes="text-caption ml-2 prostateai-psa-density")
                with html.Div(classes="d-flex align-center mt-2"):
                    v3.VTextField(v_model=("reviewer",), label="Reviewer", density="compact", hide_details=True,
                                  classes="prostateai-reviewer")
                    v3.VBtn("Save QA record", click=self.on_save_record, size="small", classes="ml-2")
