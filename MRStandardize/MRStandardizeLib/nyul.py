"""Nyul & Udupa piecewise-linear intensity standardisation, matching intensity-normalization.

Reference: the `intensity-normalization` package, version 3.0.1, class
`intensity_normalization.NyulNormalizer` (older 2.x releases called it `NyulNormalize`). With its
defaults this module gives the same standard landmarks and the same output voxels (tested to
1e-5 relative on PROMISE12 cases):

- landmarks = percentiles (1, 10, 20, ..., 90, 99) of the foreground voxels;
- foreground ("volume of interest") = the voxels where the mask is non-zero when a mask is
  given, otherwise the voxels with intensity **> 0** (the 3.x rule, `data[data > 0]`; the
  2.x releases used `image > image.mean()`, available here as foreground="above-mean");
- fit: per training image, map its landmarks linearly so that percentile 1 -> 1 and
  percentile 99 -> 100, then average over images -> standard landmarks;
- apply: piecewise-linear map from the image's own landmarks onto the standard ones, applied to
  EVERY voxel (background too), extrapolating linearly with the first / last segment's slope
  (scipy `interp1d(..., fill_value="extrapolate")`).

Differences, on purpose: an image whose landmarks are not strictly increasing (too few distinct
foreground intensities) is rejected with an InputError where the reference silently produces
NaN/inf; models are JSON (never pickle / np.save). Optional extras, off by default so the
reference is matched: `shift_positive` (add -min when the image has negative values, before
anything else) and `cut_tails` (clamp the output to the standard range instead of extrapolating).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from ProstateAICore import imageio
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import image_like
from ProstateAICore.intensity import integer_counts, is_integer_array, percentiles, quantiles_from_counts
from ProstateAICore.progress import ProgressFn

FORMAT = "prostateai-nyul-model"
FORMAT_VERSION = 1
FOREGROUND_RULES = ("positive", "above-mean", "all")


@dataclass(frozen=True)
class NyulConfig:
    """Settings of a Nyul model; the defaults are intensity-normalization's."""

    output_min: float = 1.0
    output_max: float = 100.0
    min_percentile: float = 1.0
    max_percentile: float = 99.0
    landmark_percentiles: tuple[float, ...] = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
    foreground: str = "positive"  # used only without a mask: "positive" (> 0), "above-mean", "all"
    shift_positive: bool = False
    cut_tails: bool = False

    def __post_init__(self):
        object.__setattr__(self, "landmark_percentiles", tuple(float(p) for p in self.landmark_percentiles))
        if self.foreground not in FOREGROUND_RULES:
            raise InputError(f"Unknown foreground rule '{self.foreground}'; use one of {', '.join(FOREGROUND_RULES)}.")
        percs = self.percentiles
        if not (0 <= percs[0] and percs[-1] <= 100 and np.all(np.diff(percs) > 0)):
            raise InputError(f"Nyul percentiles must increase strictly within [0, 100]; got {list(percs)}.")
        if not self.output_max > self.output_min:
            raise InputError(f"Nyul output range must increase; got [{self.output_min}, {self.output_max}].")

    @property
    def percentiles(self) -> np.ndarray:
        """All landmark percentiles: [min, 10, ..., 90, max] (11 with the defaults)."""
        return np.array([self.min_percentile, *self.landmark_percentiles, self.max_percentile])


@dataclass
class NyulModel:
    """A fitted standard scale: the mean (rescaled) landmarks of the training images."""

    standard_landmarks: list[float]
    config: NyulConfig = field(default_factory=NyulConfig)
    n_images: int = 0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        config = asdict(self.config)
        config["landmark_percentiles"] = list(config["landmark_percentiles"])
        payload = {
            "format": FORMAT,
            "format_version": self.format_version,
            "config": config,
            "percentiles": [float(p) for p in self.config.percentiles],
            "standard_landmarks": [float(v) for v in self.standard_landmarks],
            "n_images": self.n_images,
        }
        return json.dumps(payload, indent=2) + "\n"


# --- landmarks -------------------------------------------------------------------------------


def foreground_values(image: sitk.Image, mask: sitk.Image | None = None, config: NyulConfig | None = None) -> np.ndarray:
    """The voxels that define the landmarks (mask, else the config's foreground rule)."""
    config = config or NyulConfig()
    array = _prepared_array(image, config)
    inside = imageio.validate_mask(image, mask)
    if inside is not None:
        return array[inside]
    return _rule_values(array, config.foreground)


def landmarks(image: sitk.Image, mask: sitk.Image | None = None, config: NyulConfig | None = None) -> np.ndarray:
    """The image's intensities at the config's percentiles (11 with the defaults)."""
    config = config or NyulConfig()
    array = _prepared_array(image, config)
    return _landmarks_of(array, imageio.validate_mask(image, mask), config)


def _prepared_array(image: sitk.Image, config: NyulConfig) -> np.ndarray:
    array = imageio.validate_volume(image)
    if config.shift_positive and array.min() < 0:
        # Shift so the darkest voxel is 0 (then "> 0" drops only the darkest voxels); integers stay
        # integers so the fast histogram path still applies.
        wide = np.int64 if is_integer_array(array) else np.float64
        return array.astype(wide) - array.min().astype(wide)
    return array


def _rule_values(array: np.ndarray, rule: str) -> np.ndarray:
    if rule == "positive":
        values = array[array > 0]
    elif rule == "above-mean":
        values = array[array > array.mean()]
    else:
        values = array.ravel()
    if values.size == 0:
        raise InputError(f"The image has no foreground voxel under the '{rule}' rule (e.g. no voxel > 0); give a mask.")
    return values


def _landmarks_of(array: np.ndarray, inside: np.ndarray | None, config: NyulConfig) -> np.ndarray:
    percs = config.percentiles
    fast = inside is None and config.foreground == "positive" and is_integer_array(array) and array.min() >= 0
    counted = integer_counts(array) if fast else None
    if counted is not None:
        # Fast path (most MR files are unsigned/int16): one count of the whole volume, then drop
        # the count of zeros -- no boolean copy of the foreground needed.
        counts, offset = counted
        if offset == 0:
            counts[0] = 0
        if counts.sum() == 0:
            raise InputError("The image has no voxel > 0; give a foreground mask.")
        return quantiles_from_counts(counts, offset, np.asarray(percs, dtype=np.float64) / 100.0)
    values = array[inside] if inside is not None else _rule_values(array, config.foreground)
    return percentiles(values, percs)


# --- fit / apply -------------------------------------------------------------------------------


def fit(
    images: Sequence[sitk.Image],
    masks: Sequence[sitk.Image | None] | None = None,
    config: NyulConfig | None = None,
    progress: ProgressFn | None = None,
) -> NyulModel:
    """Learn the standard landmarks from training images (optionally with foreground masks)."""
    config = config or NyulConfig()
    images = list(images)
    if not images:
        raise InputError("Nyul fit needs at least one training image.")
    if masks is not None and len(masks) != len(images):
        raise InputError(f"Nyul fit got {len(images)} images but {len(masks)} masks; give one mask per image.")
    total = np.zeros(len(config.percentiles))
    for i, image in enumerate(images):
        mask = masks[i] if masks is not None else None
        marks = landmarks(image, mask, config)
        total += _rescaled(marks, config, index=i)
        if progress:
            progress((i + 1) / len(images), f"Nyul fit: image {i + 1}/{len(images)}")
    return NyulModel(standard_landmarks=[float(v) for v in total / len(images)], config=config, n_images=len(images))


def _rescaled(marks: np.ndarray, config: NyulConfig, index: int) -> np.ndarray:
    """Map an image's landmarks linearly so that its min / max percentiles go to the output range."""
    low, high = marks[0], marks[-1]
    if low == high:
        raise InputError(
            f"Training image {index + 1}: its {config.min_percentile}th and {config.max_percentile}th foreground "
            f"percentiles are equal ({low}); it cannot be standardised."
        )
    slope = (config.output_max - config.output_min) / (high - low)
    return config.output_min + (marks - low) * slope


def apply(image: sitk.Image, model: NyulModel, mask: sitk.Image | None = None) -> sitk.Image:
    """Standardise `image` with a fitted model; float32 on the input grid (background mapped too)."""
    config = model.config
    array = _prepared_array(image, config)
    marks = _landmarks_of(array, imageio.validate_mask(image, mask), config)
    standard = np.asarray(model.standard_landmarks, dtype=np.float64)
    _require_increasing(marks)
    out = _map_voxels(array, marks, standard)
    if config.cut_tails:
        np.clip(out, standard[0], standard[-1], out=out)
    return image_like(out, image)


def _require_increasing(marks: np.ndarray) -> None:
    if not np.all(np.diff(marks) > 0):
        raise InputError(
            "The image's foreground landmarks are not strictly increasing (too few distinct intensities: "
            f"{np.round(marks, 4).tolist()}); Nyul standardisation is undefined for it."
        )


def _map_voxels(array: np.ndarray, marks: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of every voxel; integer images go through a lookup table (fast)."""
    if is_integer_array(array):
        lo, hi = min(int(array.min()), 0), int(array.max())
        if hi - lo <= 4 * array.size + 65536:
            table = piecewise_linear(np.arange(lo, hi + 1, dtype=np.float64), marks, standard).astype(np.float32)
            # Non-negative images index the table directly (no int64 copy of the volume).
            return table[array] if lo == 0 else table[array.astype(np.int64) - lo]
    return piecewise_linear(array.astype(np.float64), marks, standard).astype(np.float32)


def piecewise_linear(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Interpolate through (xp, fp); beyond the ends extend the first / last segment (as interp1d)."""
    y = np.interp(x, xp, fp)
    below, above = x < xp[0], x > xp[-1]
    y[below] = fp[0] + (x[below] - xp[0]) * ((fp[1] - fp[0]) / (xp[1] - xp[0]))
    y[above] = fp[-1] + (x[above] - xp[-1]) * ((fp[-1] - fp[-2]) / (xp[-1] - xp[-2]))
    return y


# --- JSON model files --------------------------------------------------------------------------


def save_model(model: NyulModel, path: str | os.PathLike) -> Path:
    """Write the model as JSON, atomically (never pickle: a model file must not run code)."""
    return imageio.write_text(model.to_json(), path)


def load_model(path: str | os.PathLike) -> NyulModel:
    """Read a model written by save_model; any problem is an InputError naming the file."""
    path = Path(path)
    return model_from_dict(imageio.read_json(path, "Nyul model file"), source=str(path))


def model_from_dict(payload, source: str = "model") -> NyulModel:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"'{source}' is not a ProstateAI Nyul model (expected \"format\": \"{FORMAT}\").")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"Nyul model '{source}' has format_version {version!r}; this ProstateAI reads version {FORMAT_VERSION}. "
            "Refit the model with this version."
        )
    try:
        config = NyulConfig(**payload["config"])
        standard = [float(v) for v in payload["standard_landmarks"]]
        n_images = int(payload.get("n_images", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"Nyul model '{source}' is malformed ({type(exc).__name__}: {exc}).") from None
    if len(standard) != len(config.percentiles) or not all(math.isfinite(v) for v in standard):
        raise InputError(
            f"Nyul model '{source}' has {len(standard)} standard landmarks for {len(config.percentiles)} percentiles "
            "or non-finite values."
        )
    if not np.all(np.diff(standard) > 0):
        raise InputError(f"Nyul model '{source}': standard landmarks must increase strictly.")
    return NyulModel(standard_landmarks=standard, config=config, n_images=n_images, format_version=version)


# --- histograms for plotting -------------------------------------------------------------------


def histograms(
    images: Sequence[sitk.Image],
    masks: Sequence[sitk.Image | None] | None = None,
    config: NyulConfig | None = None,
    bins: int = 100,
    upper_percentile: float = 99.5,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Foreground histograms (bin centres, density) per image, each over [0 or min, p99.5]."""
    out = []
    for i, image in enumerate(images):
        values = foreground_values(image, masks[i] if masks is not None else None, config)
        lo = min(0.0, float(values.min()))
        hi = float(percentiles(values, [upper_percentile])[0])
        density, edges = np.histogram(values, bins=bins, range=(lo, hi if hi > lo else lo + 1), density=True)
        out.append(((edges[:-1] + edges[1:]) / 2, density))
    return out


def save_histograms_png(
    images_before: Sequence[sitk.Image],
    images_after: Sequence[sitk.Image],
    path: str | os.PathLike,
    landmarks: Sequence[float] | None = None,
    masks: Sequence[sitk.Image | None] | None = None,
    labels: Sequence[str] | None = None,
    config: NyulConfig | None = None,
) -> Path:
    """Two panels (raw / standardised), one curve per volume; `landmarks` drawn as dashed lines."""
    # Figure + Agg canvas, not pyplot: no global backend state (safe inside Slicer's Qt process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    config = config or NyulConfig()
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], images_before, "before (raw intensities)"), (axes[1], images_after, "after Nyul standardisation"))
    for ax, images, title in panels:
        for i, (centres, density) in enumerate(histograms(images, masks, config)):
            ax.plot(centres, density, lw=1, label=labels[i] if labels else None)
        ax.set_title(f"{title}: {len(images)} volumes")
        ax.set_xlabel("intensity")
        ax.set_ylabel("density (foreground voxels)")
    if landmarks is not None:
        for value in landmarks:
            axes[1].axvline(value, color="k", ls="--", lw=0.7, alpha=0.6)
        axes[1].set_xlabel("standardised intensity (dashed: standard landmarks)")
    if labels:
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with imageio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return Path(path)
