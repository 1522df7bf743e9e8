"""The teaching panels of the browser app: N4 bias field, Nyul histograms, registration check.

Each panel is a button that runs the GUI-free Lib function in a background thread (SimpleITK releases
the GIL, so the page stays responsive), then shows its result in the slice views or as an image, with
one line saying what the step does and its number:

- N4: `MRStandardizeLib.n4.n4_correct(T2, quality="preview")`; Before / After switches the slice views'
  background between the T2 and the corrected volume; Bias field shows the field as a heat map in the
  foreground (colour table of `MRStandardize.MRStandardizeLogic.biasFieldColorNodeID`).
- Nyul: `nyul.fit` on the T2 (plus the bundled sample's T2 when another case is open), `nyul.apply`,
  `nyul.save_histograms_png` -> an image in the panel.
- Registration: `registration.register(T2, ADC, transform="rigid")`, `registration_check.checkerboard`
  before and after as volumes; the line is `MRStandardizeLogic.describeRegistrationReport`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
from pathlib import Path

import numpy as np
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task

from MRStandardizeLib import n4, nyul, registration, registration_check
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import image_like
from ProstateAICore.imageio import read_image

from . import case as cases
from . import slicer_module

log = logging.getLogger("prostateai.view")

REGISTRATION_ITERATIONS = 40  # per pyramid level: a few seconds on 2 cores (the Slicer module's default is 100)
FIELD_OPACITY = 0.6


class TeachingPanels:
    """State, callbacks and cards of the three panels; `app` is the ProstateAIViewApp."""

    def __init__(self, app):
        self.app = app
        self.mrstandardize = slicer_module.import_module_file("MRStandardize").MRStandardizeLogic
        self.nodes = {}  # "n4_corrected", "n4_field", "reg_before", "reg_after" -> volume node
        self.generation = 0  # bumped when a case is opened: a result of the previous case is dropped
        app.state.update(dict(teach_busy="", teach_view="t2", n4_text="", nyul_text="", nyul_png="", reg_text="",
                              has_adc=False))
        app.state.change("teach_view")(self.on_teach_view)

    # -- case --------------------------------------------------------------------------------------

    def reset(self):
        """A new case: remove the previous case's teaching volumes and texts."""
        self.generation += 1
        for node in self.nodes.values():
            if node.GetScene() is not None:
                node.GetScene().RemoveNode(node)
        self.nodes = {}
        s = self.app.state
        s.update(dict(teach_busy="", teach_view="t2", n4_text="", nyul_text="", nyul_png="", reg_text="",
                      has_adc="ADC" in self.app.volumes))

    def _image(self, role):
        node = self.app.volumes.get(role)
        if node is None:
            raise InputError(f"No {role} is loaded.")
        return self.app._mrml.image_from_volume_node(node)

    def _add(self, key, image, name):
        old = self.nodes.pop(key, None)
        if old is not None and old.GetScene() is not None:
            old.GetScene().RemoveNode(old)
        node = self.app._mrml.add_volume_node(self.app.slicer_app.scene, image, name)
        self.nodes[key] = node
        return node

    # -- background work ---------------------------------------------------------------------------

    def _run(self, what: str, prepare, finish):
        """prepare() on the loop (reads the scene) returns compute; compute() runs in a worker thread, then
        finish(result) on the server's loop (MRML, state). Errors of any of them go to the page."""
        def start():
            if self.app.state.teach_busy:
                raise InputError(f"{self.app.state.teach_busy} is still running.")
            compute = prepare()
            self.app.state.teach_busy = what
            create_task(self._watch(what, compute, finish, self.generation))
            return f"{what} running in the background..."
        self.app._step(what, start)

    async def _watch(self, what, compute, finish, generation):
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, compute)
        except Exception as error:  # shown on the page by _step below
            result = error
        with self.app.state:
            if generation != self.generation:  # another case was opened meanwhile
                return
            self.app.state.teach_busy = ""

            def done():
                if isinstance(result, BaseException):
                    raise result
                return finish(result)
            self.app._step(what, done)

    # -- views -------------------------------------------------------------------------------------

    def on_teach_view(self, teach_view, **_):
        self.app._step("Show", lambda: self._show(teach_view))

    def _show(self, which):
        display = self.app.slicer_app.display_manager
        background = {"n4_after": self.nodes.get("n4_corrected"), "reg_before": self.nodes.get("reg_before"),
                      "reg_after": self.nodes.get("reg_after")}.get(which) or self.app.volumes.get("T2")
        foreground = self.nodes.get("n4_field") if which == "n4_field" else None
        if background is None:
            return
        display.show_volume_in_slice_background(background)
        display.show_volume_in_slice_foreground(foreground)
        if foreground is not None:
            for view in self.app.slicer_app.view_manager.get_slice_views():
                view.set_foreground_opacity(FIELD_OPACITY)

    # -- N4 ----------------------------------------------------------------------------------------

    def on_n4(self):
        def prepare():
            t2 = self._image("T2")
            return lambda: n4.n4_correct(t2, quality="preview")
        self._run("N4", prepare, self._n4_done)

    def _n4_done(self, result):
        name = self.app.volumes["T2"].GetName()
        corrected = self._add("n4_corrected", result.corrected, f"{name} N4 preview")
        corrected.GetDisplayNode().AutoWindowLevelOn()
        field = self._add("n4_field", result.bias_field, f"{name} N4 bias field")
        display = field.GetDisplayNode()
        display.SetAndObserveColorNodeID(self.mrstandardize.biasFieldColorNodeID(field.GetScene()))
        low, high = field.GetImageData().GetScalarRange()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(low, high if high > low else low + 1e-6)
        self.app.state.n4_text = (
            f"N4 divides the T2 by a smooth multiplicative bias field (coil shading) fitted in the body. "
            f"Field {low:.3f}–{high:.3f} (×{high / low:.2f} across the image), {result.seconds:.1f} s "
            f"(preview, {sum(result.iterations)} iterations).")
        self.app.state.teach_view = "n4_field"
        self._show("n4_field")
        return f"N4 preview: bias field {low:.3f}–{high:.3f}, {result.seconds:.1f} s"

    # -- Nyul --------------------------------------------------------------------------------------

    def on_nyul(self):
        def prepare():
            t2 = self._image("T2")
            name = self.app.state.case_name
            sample = cases.sample_case(self.app.repo) / "t2w"
            with_sample = name != cases.SAMPLE_CASE and sample.exists()
            return lambda: self._nyul(t2, name, sample if with_sample else None)
        self._run("Nyul", prepare, self._nyul_done)

    @staticmethod
    def _nyul(t2, name, sample):
        images, labels = [t2], [name]
        if sample is not None:
            images.append(read_image(sample))
            labels.append(f"{cases.SAMPLE_CASE} (bundled)")
        model = nyul.fit(images)
        after = [nyul.apply(image, model) for image in images]
        raw = nyul.landmarks(t2, config=model.config)
        with tempfile.TemporaryDirectory(prefix="prostateai-nyul-") as folder:
            path = nyul.save_histograms_png(images, after, Path(folder) / "histograms.png",
                                            landmarks=model.standard_landmarks, labels=labels, config=model.config)
            png = path.read_bytes()
        return model, raw, labels, png

    def _nyul_done(self, result):
        model, raw, labels, png = result
        standard = model.standard_landmarks
        self.app.state.nyul_png = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        self.app.state.nyul_text = (
            f"Nyul maps each volume's intensity percentiles (landmarks) piecewise-linearly onto standard landmarks "
            f"learned from a cohort, so a tissue gets a comparable number across scans. Model from "
            f"{model.n_images} T2 ({', '.join(labels)}): standard landmarks {standard[0]:.1f}–{standard[-1]:.1f}; "
            f"this T2's landmarks before: {raw[0]:.0f}–{raw[-1]:.0f}.")
        return f"Nyul: {len(standard)} standard landmarks {standard[0]:.1f}–{standard[-1]:.1f}"

    # -- registration ------------------------------------------------------------------------------

    def _gland_mask(self, t2):
        """The open segmentation's Prostate segment as a label map on the T2 grid (None without one)."""
        node = self.app.preview if self.app.preview is not None else self.app.current
        if node is None:
            return None
        gland = self.app._mrml.segment_arrays(node, self.app.volumes["T2"]).get("Prostate")
        if gland is None or not gland.any():
            return None
        return image_like(gland, t2, np.uint8)

    def on_register(self):
        def prepare():
            t2, adc = self._image("T2"), self._image("ADC")
            gland = self._gland_mask(t2)  # read here, on the server's thread: the scene is not thread-safe

            def compute():
                # With a gland, the metric looks at the gland + 20 mm and the best of 3 starts is chosen
                # there (on ProstateX-0000 the whole field of view keeps the scanner alignment).
                result = registration.register(t2, adc, transform="rigid", iterations=REGISTRATION_ITERATIONS,
                                               selection_mask=gland, restarts=3 if gland is not None else 1)
                return (result, registration_check.checkerboard(t2, adc),
                        registration_check.checkerboard(t2, result.resampled), gland is not None)
            return compute
        self._run("Registration", prepare, self._register_done)

    def _register_done(self, result):
        report, before, after, on_gland = result
        name = self.app.volumes["T2"].GetName()
        for key, image, label in (("reg_before", before, "before"), ("reg_after", after, "after")):
            display = self._add(key, image, f"{name} T2/ADC checkerboard {label}").GetDisplayNode()
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
        line = self.mrstandardize.describeRegistrationReport(report.to_dict())
        self.app.state.reg_text = (
            "Registration moves the ADC onto the T2 (rigid: rotation and shift) so a voxel means the same place in "
            f"both; the checkerboard alternates T2 and ADC squares, edges should continue across them. "
            f"{'Metric on the gland + 20 mm (the open segmentation), best of 3 starts. ' if on_gland else ''}{line}.")
        self.app.state.teach_view = "reg_after"
        self._show("reg_after")
        return line

    # -- page --------------------------------------------------------------------------------------

    def build(self):
        busy = "teach_busy !== ''"
        with v3.VCard(title="Teaching: N4, Nyul, registration", variant="tonal", density="compact", classes="mb-2"):
            with v3.VCardText():
                v3.VProgressLinear(v_if="teach_busy", indeterminate=True, height=14,
                                   classes="mb-1 prostateai-teach-busy", children=["{{ teach_busy }} running"])
                with html.Div(classes="d-flex flex-wrap ga-2"):
                    v3.VBtn("N4 bias field", click=self.on_n4, disabled=(busy,), size="small", classes="prostateai-n4")
                    v3.VBtn("Nyul histograms", click=self.on_nyul, disabled=(busy,), size="small",
                            classes="prostateai-nyul")
                    v3.VBtn("Registration", click=self.on_register, disabled=(f"{busy} || !has_adc",), size="small",
                            classes="prostateai-register", title="rigid T2 <- ADC (needs an ADC)")
                # Two rows on one v_model: a row shows its button selected only when the view is one of its own.
                for row, items, text in (("n4", (("T2", "t2"), ("N4 after", "n4_after"), ("Bias field", "n4_field")),
                                          "n4_text"),
                                         ("reg", (("T2", "t2"), ("Check before", "reg_before"),
                                                  ("Check after", "reg_after")), "reg_text")):
                    with v3.VBtnToggle(v_model=("teach_view",), density="compact", divided=True, v_if=text,
                                       classes=f"mt-2 prostateai-{row}-view"):
                        for label, value in items:
                            v3.VBtn(label, value=value, size="x-small")
                    html.Div(f"{{{{ {text} }}}}", v_if=text, classes=f"text-caption mt-1 prostateai-{row}-text")
                html.Div("{{ nyul_text }}", v_if="nyul_text", classes="text-caption mt-2 prostateai-nyul-text")
                html.Img(v_if="nyul_png", src=("nyul_png",), style="width: 100%; background: white;",
                         classes="mt-1 prostateai-nyul-image")
