"""The CT preprocessing chain and its configuration (shared by the CLI, the Slicer Logic and the browser app).

CONTRACT (used by CTPreprocess.py Logic/Widget and the CLI): keep these field names.

Order (../shared/METHODS.md): denoise -> resample -> window/clip -> normalise -> crop/pad.
`run_pipeline` never modifies its input image; every step makes a new image.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import geometry, require_same_grid
from ProstateAICore.intensity import MINMAX_DTYPES
from ProstateAICore.progress import ProgressFn, scaled

from . import croppad, denoise as denoise_mod, normalize as normalize_mod, resample as resample_mod, window as window_mod
from .hu import fill_padding, validate_ct

DENOISE_METHODS = ("none", "curvature_flow", "anisotropic", "median", "gaussian")
WINDOW_MODES = ("none", "preset", "custom", "clip", "percentile")
NORMALIZE_METHODS = ("none", "minmax", "zscore")
DTYPES = MINMAX_DTYPES  # output types of the min-max step (float32 for the others)
INTERPOLATORS = ("bspline", "linear", "nearest")
CROP_CENTERS = ("center", "mask")

__all__ = ["CTPipelineConfig", "validate_config", "validate_ct", "resolve_window", "run_pipeline", "output_dtype"]


@dataclass
class CTPipelineConfig:
    # denoise
    denoise: str = "none"
    denoise_iterations: int = 5          # curvature flow / anisotropic diffusion
    denoise_time_step: float = 0.0625    # curvature flow / anisotropic diffusion (stable for 3D: <= 0.0625)
    denoise_conductance: float = 3.0     # anisotropic diffusion
    median_radius: int = 1               # voxels
    gaussian_sigma_mm: float = 1.0
    # resample (to a spacing, or onto a reference grid; None = keep the grid)
    spacing: tuple[float, float, float] | None = None
    reference: sitk.Image | None = None
    interpolator: str = "bspline"
    # window / clip
    window_mode: str = "none"
    preset: str | None = None
    level: float | None = None
    width: float | None = None
    clip: tuple[float, float] = (-1350.0, 2000.0)
    quantiles: tuple[float, float] = (0.6, 0.99)
    # normalise
    normalize: str = "none"
    dtype: str = "float32"
    zscore_mask: sitk.Image | None = None
    # crop / pad
    size: tuple[int, int, int] | None = None
    pad_value: float | None = None        # in HU (input units); None: the window's low end, else the image minimum
    crop_center: str = "center"
    crop_mask: sitk.Image | None = None
    extras: dict = field(default_factory=dict)
    # added after the first contract (defaults keep old callers working)
    anisotropic_kind: str = "gradient"   # "gradient" or "curvature" anisotropic diffusion
    padding_value: float | None = None   # DICOM PixelPaddingValue in HU (CTLoadInfo.padding_value_hu): those
                                         # voxels (outside the field of view) become the lowest real HU first


def _choice(value, allowed, what: str) -> None:
    if value not in allowed:
        raise InputError(f"Unknown {what} '{value}'; choose one of: {', '.join(allowed)}.")


def output_dtype(config: CTPipelineConfig) -> tuple[str, str]:
    """(normalize, dtype) actually used: an integer output implies min-max (z-scores are signed reals)."""
    if config.dtype in ("uint8", "uint16") and config.normalize == "none":
        return "minmax", config.dtype
    return config.normalize, config.dtype


def validate_config(config: CTPipelineConfig) -> None:
    """Check names and numbers before any work, so a bad setting fails at once with a clear message."""
    _choice(config.denoise, DENOISE_METHODS, "denoising method")
    _choice(config.window_mode, WINDOW_MODES, "window mode")
    _choice(config.normalize, NORMALIZE_METHODS, "normalisation")
    _choice(config.dtype, DTYPES, "output type")
    _choice(config.interpolator, INTERPOLATORS, "interpolator")
    _choice(config.crop_center, CROP_CENTERS, "crop centre")
    _choice(config.anisotropic_kind, denoise_mod.ANISOTROPIC_KINDS, "anisotropic diffusion kind")
    if config.window_mode == "percentile":
        window_mod.check_quantiles(*config.quantiles)
    else:
        _fixed_window(config)
    if config.spacing is not None and config.reference is not None:
        raise InputError("Give either a target spacing or a reference image for resampling, not both.")
    if config.spacing is not None:
        resample_mod.check_spacing(config.spacing, 3)
    normalize, dtype = output_dtype(config)
    if normalize == "zscore" and dtype != "float32":
        raise InputError(f"Z-score output is signed and real; it needs dtype float32 (got {dtype}).")
    if config.size is not None:
        croppad.check_size(config.size, 3)
        if config.crop_center == "mask" and config.crop_mask is None:
            raise InputError("Crop centre 'mask' needs a crop mask.")
    for name in ("pad_value", "padding_value"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(float(value)):
            raise InputError(f"The {name.replace('_', ' ')} must be a finite number (got {value}).")


def _fixed_window(config: CTPipelineConfig) -> tuple[float, float] | None:
    """The window of every mode that does not look at the image (all but "percentile"), checked."""
    mode = config.window_mode
    _choice(mode, WINDOW_MODES, "window mode")
    if mode == "preset":
        if config.preset is None:
            raise InputError(f"Window mode 'preset' needs a preset name; valid presets: {', '.join(window_mod.PRESETS)}.")
        return window_mod.window_from_preset(config.preset)
    if mode == "custom":
        if config.level is None or config.width is None:
            raise InputError("Window mode 'custom' needs a level (WL) and a width (WW).")
        return window_mod.window_from_level_width(config.level, config.width)
    if mode == "clip":
        return window_mod.validate_window(*config.clip, what="clip range")
    return None


def resolve_window(image: sitk.Image, config: CTPipelineConfig) -> tuple[float, float] | None:
    """The (lo, hi) window in HU the config asks for on this image, or None for no window."""
    if config.window_mode != "percentile":
        return _fixed_window(config)
    lo, hi = window_mod.percentile_window(image, *config.quantiles)
    if lo >= hi:
        raise InputError(
            f"The percentile window is empty: quantiles {config.quantiles[0]:g} and {config.quantiles[1]:g} "
            f"both equal {lo:g}. Choose quantiles further apart or a preset."
        )
    return lo, hi


def _mask_for(mask: sitk.Image | None, image: sitk.Image, name: str) -> sitk.Image | None:
    """Masks are given on the input CT's grid; check that before any work."""
    return None if mask is None else require_same_grid(image, mask, ("CT image", name))


def _follow_grid(mask: sitk.Image | None, grid: sitk.Image) -> sitk.Image | None:
    """Bring a mask onto a resampled grid (nearest neighbour keeps it binary)."""
    return None if mask is None else resample_mod.resample_to_reference(mask, grid, "nearest", 0, label=True)


class _Steps:
    """Runs, times and records steps; progress advances in proportion to rough step costs."""

    WEIGHTS = {"validate": 1, "padding": 1, "denoise": 6, "resample": 4, "window": 1, "normalize": 1, "crop_pad": 1}

    def __init__(self, names: list[str], progress: ProgressFn | None):
        total = sum(self.WEIGHTS[n] for n in names)
        self.spans, done = {}, 0
        for name in names:
            self.spans[name] = (done / total, (done + self.WEIGHTS[name]) / total)
            done += self.WEIGHTS[name]
        self.progress = progress
        self.records: list[dict] = []

    def run(self, name: str, message: str, func):
        """func(progress) -> (result, details dict for the report)."""
        begin, end = self.spans[name]
        if self.progress is not None:
            self.progress(begin, message)
        start = time.perf_counter()
        result, details = func(scaled(self.progress, begin, end))
        self.records.append({"name": name, "seconds": round(time.perf_counter() - start, 4), **details})
        return result


def _resample_step(image: sitk.Image, config: CTPipelineConfig, progress) -> tuple[sitk.Image, dict]:
    if config.reference is not None:
        out = resample_mod.resample_to_reference(image, config.reference, config.interpolator, progress=progress)
    else:
        out = resample_mod.resample_to_spacing(image, config.spacing, config.interpolator, progress=progress)
    return out, {"interpolator": config.interpolator, "spacing": list(out.GetSpacing()), "size": list(out.GetSize())}


def _validate_step(image: sitk.Image) -> tuple[None, dict]:
    validate_ct(image)
    return None, {}


def _normalize_step(image, normalize, dtype, window, mask):
    """((image, to_output), details): to_output maps a (clipped) HU value to output units, for the pad value."""
    if normalize == "minmax":
        lo, hi = window if window else normalize_mod.image_range(image)
        out = normalize_mod.minmax(image, lo, hi, dtype)
        to_output = lambda v: normalize_mod.minmax_array(v, lo, hi, dtype)  # noqa: E731
        return (out, to_output), {"method": "minmax", "lo": lo, "hi": hi, "dtype": dtype}
    if normalize == "zscore":
        mean, std = normalize_mod.zscore_stats(image, mask)
        out = sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), -mean, 1.0 / std)
        to_output = lambda v: normalize_mod.zscore_array(v, mean, std)  # noqa: E731
        return (out, to_output), {"method": "zscore", "mean": mean, "std": std, "masked": mask is not None, "dtype": dtype}
    return (sitk.Cast(image, sitk.sitkFloat32), np.float32), {"method": "none", "dtype": "float32"}


def run_pipeline(image: sitk.Image, config: CTPipelineConfig, progress: ProgressFn | None = None) -> tuple[sitk.Image, dict]:
    """Run denoise -> resample -> window/clip -> normalise -> crop/pad on a copy; returns (output, report).

    report: steps [{"name", "seconds", ...}], window (lo, hi) in HU or None, normalize, dtype,
    geometry (output) and input_geometry, total_seconds, notes.
    """
    validate_config(config)
    normalize, dtype = output_dtype(config)
    resampling = config.spacing is not None or config.reference is not None
    enabled = {
        "validate": True, "padding": config.padding_value is not None, "denoise": config.denoise != "none",
        "resample": resampling, "window": config.window_mode != "none", "normalize": True,
        "crop_pad": config.size is not None,
    }
    steps = _Steps([name for name, on in enabled.items() if on], progress)
    started = time.perf_counter()
    notes = [f"dtype {dtype} implies min-max normalisation."] if normalize != config.normalize else []

    steps.run("validate", "Checking the CT", lambda p: _validate_step(image))
    zscore_mask = _mask_for(config.zscore_mask, image, "z-score mask")
    crop_mask = _mask_for(config.crop_mask, image, "crop mask")

    current = image
    if enabled["padding"]:
        def padding_step(p):
            out, count, fill = fill_padding(image, float(config.padding_value))
            return out, {"padding_value": float(config.padding_value), "voxels": count, "filled_with": fill}
        current = steps.run("padding", "Filling padding outside the field of view", padding_step)
    if enabled["denoise"]:
        def denoise_step(p):
            details = {"method": config.denoise}
            if config.denoise == "anisotropic":  # ITK's stability limit may lower the time step
                details["time_step"] = denoise_mod.stable_time_step(current, config.denoise_time_step)
            return denoise_mod.denoise(current, config, p), details
        current = steps.run("denoise", f"Denoising ({config.denoise})", denoise_step)
    if resampling:
        current = steps.run("resample", "Resampling", lambda p: _resample_step(current, config, p))
        zscore_mask, crop_mask = _follow_grid(zscore_mask, current), _follow_grid(crop_mask, current)

    window = None
    if enabled["window"]:
        def window_step(p):
            lo, hi = resolve_window(current, config)
            clipped = window_mod.apply_window(current, lo, hi)
            return ((lo, hi), clipped), {"mode": config.window_mode, "preset": config.preset, "lo": lo, "hi": hi}
        window, current = steps.run("window", "Windowing", window_step)

    current, to_output = steps.run("normalize", "Normalising",
                                   lambda p: _normalize_step(current, normalize, dtype, window, zscore_mask))

    if enabled["crop_pad"]:
        def crop_step(p):
            if config.pad_value is not None or window is not None:
                pad_hu = float(config.pad_value) if config.pad_value is not None else window[0]
                pad = float(to_output(np.clip(pad_hu, *window) if window else pad_hu))
            else:
                pad_hu, pad = None, float(sitk.GetArrayViewFromImage(current).min())  # already output units
            out = croppad.crop_or_pad(current, config.size, pad, config.crop_center, crop_mask)
            return out, {"size": list(config.size), "center": config.crop_center, "pad_value_hu": pad_hu, "pad_value": pad}
        current = steps.run("crop_pad", "Cropping / padding", crop_step)

    if progress is not None:
        progress(1.0, "Done")
    report = {
        "steps": steps.records,
        "window": list(window) if window else None,
        "normalize": normalize,
        "dtype": dtype,
        "geometry": geometry(current),
        "input_geometry": geometry(image),
        "total_seconds": round(time.perf_counter() - started, 4),
        "notes": notes,
    }
    return current, report

