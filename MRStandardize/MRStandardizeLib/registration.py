"""ADC / high-b DWI → T2 registration (GUI-free: SimpleITK, numpy, matplotlib Agg only).

What it does (METHODS.md, "Prostate mpMRI pipeline — Registration"):

* Rigid (optionally → affine, or → rigid + BSpline) registration of a moving diffusion image onto
  a fixed T2 image: Mattes mutual information, regular-step gradient descent with scales from
  physical shift, a two-level pyramid, random metric sampling with a fixed seed.
* ``metric_on="gradient"`` registers the gradient-magnitude images (sigma in mm) instead of the
  intensities (the paper's choice: ADC and T2 contrasts differ, their edges agree).
* The T2 is bin-shrunk to about the moving voxel size (0.5 → 2 mm in-plane) for the optimisation;
  the result is still resampled onto the full T2 grid.
* Multi-start: restart 0 is the unperturbed initial transform, restarts 1..N-1 perturb it by
  uniform random rotations (±3°) and translations (±3 mm) from ``numpy.random.default_rng(seed)``.
  With a gland/zone label map (`selection_mask`) the best restart has the highest mean of the
  per-label gradient correlations and the negated loss (METHODS.md); without one, the lowest loss.
  The label map grown by 20 mm also becomes the metric region unless a `fixed_mask` is given.
* High-b DWI: its own edges are weak (gradient correlation ~0.28 inside the gland on
  ProstateX-0000) and direct registration is unreliable; it shares the ADC's acquisition and grid,
  so register the ADC and resample the high-b image with the same transform (CLI ``--also``).

Conventions:

* Everything happens in physical (LPS) space; no array-index correspondence between the two
  grids is assumed, so any grid, spacing and (oblique) orientation works.
* ``RegistrationResult.transform`` follows ITK: it maps points of the FIXED space to the MOVING
  space, which is what ``sitk.Resample(moving, fixed, transform)`` needs to bring the moving image
  onto the fixed grid (Slicer reads such a .tfm as the moving volume's parent transform).
* "before" numbers are for the identity transform: the images as acquired, in scanner space
  (series from one MR session share the patient coordinate system).
* Never silently worse: if the registered gradient correlation is below the "before" one, the
  result carries a `warning` and, by default (``keep_initial_if_worse=True``), is the scanner
  alignment itself (``kept_initial``); measured once on real data: 0.229 -> 0.177 unnoticed.
* ``gradient_correlation`` = Pearson correlation of the two gradient magnitudes
  (``GradientMagnitudeRecursiveGaussian``, sigma 2 mm) over the mask voxels, both computed on
  the fixed grid.
* Reproducible: the same seed gives bit-identical transforms. The metric's sampling seed is
  derived from `seed` and never 0 (SimpleITK's 0 means "wall clock"), and ITK runs single-threaded
  during registration by default (`threads=1`): with several threads results differ by ~1e-11.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import require_same_grid, same_grid
from ProstateAICore.imageio import atomic_path, validate_volume
from ProstateAICore.progress import ProgressFn

TRANSFORMS = ("rigid", "affine", "bspline")
METRIC_ON = ("intensity", "gradient")
INITS = ("scanner", "geometry", "moments")
TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5", ".mat")

# Defaults chosen on ProstateX-0000 (ADC 2 mm in-plane vs T2 0.5 mm): see registration_bench.
DEFAULT_GRADIENT_SIGMA_MM = 2.0  # about the ADC voxel size: finer T2 edges have no ADC counterpart
DEFAULT_MESH_SIZE = (4, 4, 2)
BSPLINE_MAX_SAMPLING = 0.2  # metric sampling fraction cap for the (costly) BSpline stage
MAX_ROTATION_DEG = 3.0  # restart perturbation ranges (uniform, ±)
MAX_TRANSLATION_MM = 3.0
MIN_OVERLAP_FRACTION = 0.01  # below this the images do not overlap in any useful way
# "Worse" = the registered gradient correlation is below the scanner alignment's by more than this:
# equal values (and float noise) are not worse.
WORSE_TOLERANCE = 1e-6


@dataclass
class RestartRecord:
    """One restart: how it was started and how it scored."""

    index: int
    rotation_deg: list[float]
    translation_mm: list[float]
    metric_after: float
    gradient_correlations: dict[str, float]
    score: float
    stop: str

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "rotation_deg": [round(v, 4) for v in self.rotation_deg],
            "translation_mm": [round(v, 4) for v in self.translation_mm],
            "metric_after": self.metric_after,
            "gradient_correlations": self.gradient_correlations,
            "score": self.score,
            "stop": self.stop,
        }


@dataclass
class RegistrationResult:
    transform: sitk.Transform  # fixed-space point -> moving-space point (ITK resampling convention)
    resampled: sitk.Image  # moving on the fixed grid, linear, float32, 0 outside the moving FOV
    metric_before: float  # Mattes MI loss (lower is better) at identity, all working-grid voxels
    metric_after: float
    gradient_correlation_before: float  # inside the selection mask / fixed mask / overlap
    gradient_correlation_after: float
    restarts: list[RestartRecord]
    best_restart: int
    seconds: float
    seed: int
    settings: dict = field(default_factory=dict)
    # The registration lowered the gradient correlation and the scanner alignment (identity) was
    # returned instead (keep_initial_if_worse); `warning` is set whenever it got worse, kept or not.
    kept_initial: bool = False
    warning: str | None = None
    # What the registration itself reached (equals gradient_correlation_after unless kept_initial).
    gradient_correlation_registered: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (no images)."""
        return {
            "transform_type": self.transform.GetName(),
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "gradient_correlation_before": self.gradient_correlation_before,
            "gradient_correlation_after": self.gradient_correlation_after,
            "gradient_correlation_registered": self.gradient_correlation_registered,
            "kept_initial": self.kept_initial,
            "warning": self.warning,
            "best_restart": self.best_restart,
            "restarts": [r.to_dict() for r in self.restarts],
            "seconds": round(self.seconds, 3),
            "seed": self.seed,
            "settings": self.settings,
        }


# --------------------------------------------------------------------------------------------
# Input checks and preparation


def _as_float(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(image, sitk.sitkFloat32)


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise InputError(f"Unknown {name} '{value}'; choose one of: {', '.join(choices)}.")


def _aligned_mask(fixed: sitk.Image, mask: sitk.Image | None, name: str) -> sitk.Image | None:
    """Mask/label map with the fixed image's exact geometry (tolerance check first), as UInt16."""
    if mask is None:
        return None
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {name} must be a scalar 3D label map.")
    aligned = require_same_grid(fixed, mask, names=("fixed image", name))
    values = sitk.GetArrayViewFromImage(aligned)
    if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
        raise InputError(f"The {name} must hold non-negative integer labels.")
    if not values.any():
        raise InputError(f"The {name} is empty (no non-zero voxels).")
    return sitk.Cast(aligned, sitk.sitkUInt16)


def gland_region(mask: sitk.Image, margin_mm: float = 10.0) -> sitk.Image:
    """Gland/zone mask grown by `margin_mm` (UInt8 0/1): a good `fixed_mask` for the metric.

    Why: DWI is EPI with its own distortions; over the whole field of view the metric is driven by
    the body outline and bowel gas, while the gland is what has to line up.
    """
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    radius = [max(0, int(round(margin_mm / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(binary, radius) if any(radius) else binary


def _working_fixed(fixed: sitk.Image, moving: sitk.Image) -> sitk.Image:
    """Bin-shrink the fixed image to about the moving image's voxel size.

    Why: the moving DWI/ADC (≈2 mm) carries no detail at the T2's 0.5 mm, so optimising on the
    full T2 grid only costs time (16× more voxels). BinShrink averages, so there is no aliasing.
    """
    target = min(moving.GetSpacing())
    factors = [max(1, int(math.floor(target / s + 1e-6))) for s in fixed.GetSpacing()]
    factors = [min(f, max(1, n // 4)) for f, n in zip(factors, fixed.GetSize())]  # keep ≥ 4 voxels
    return fixed if all(f == 1 for f in factors) else sitk.BinShrink(fixed, factors)


def _onto(mask: sitk.Image | None, reference: sitk.Image) -> sitk.Image | None:
    """Nearest-neighbour copy of a label map onto another grid (same physical space)."""
    if mask is None:
        return None
    if same_grid(mask, reference, tolerance=1e-6):
        return mask
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())


def _feature(image: sitk.Image, metric_on: str, sigma_mm: float) -> sitk.Image:
    """What the metric compares: the intensities, or the gradient magnitude (sigma in mm)."""
    if metric_on == "gradient":
        return sitk.GradientMagnitudeRecursiveGaussian(image, sigma_mm)
    return image


def _coverage(reference: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """UInt8 image on `reference`: 1 where the (transformed) moving field of view covers it."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    return sitk.Resample(ones, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _check_overlap(working: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: sitk.Image | None) -> None:
    """Refuse image pairs that do not overlap in physical space (no registration can fix that)."""
    covered = sitk.GetArrayFromImage(_coverage(working, moving, transform)) > 0
    fraction = covered.mean()
    if fraction < MIN_OVERLAP_FRACTION:
        raise InputError(
            f"The moving image does not overlap the fixed image in physical space "
            f"({100 * fraction:.2f}% of the fixed volume is covered); check that both series come from "
            f"the same patient and session (same frame of reference)."
        )
    if mask is not None:
        inside = sitk.GetArrayViewFromImage(mask) > 0
        if not covered[inside].any():
            raise InputError("The moving image does not cover the fixed mask at all; check the mask and the series.")


# --------------------------------------------------------------------------------------------
# Transforms


def _mask_centroid(mask: sitk.Image) -> tuple[float, float, float]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return stats.GetCentroid(1)


def _image_centre(image: sitk.Image) -> tuple[float, float, float]:
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])


def initial_transform(
    fixed: sitk.Image, moving: sitk.Image, init: str = "scanner", centre=None
) -> sitk.Euler3DTransform:
    """Starting rigid transform.

    "scanner": identity, rotating about `centre` (the gland centroid when known) — right for series
    of one session, which share the scanner's frame of reference. "geometry"/"moments": SimpleITK's
    CenteredTransformInitializer (aligns the volumes' centres / centres of mass); useful when the
    two images come from different frames of reference.
    """
    _check_choice(init, INITS, "initialisation")
    if init == "scanner":
        transform = sitk.Euler3DTransform()
        transform.SetCenter(centre if centre is not None else _image_centre(fixed))
        return transform
    mode = (
        sitk.CenteredTransformInitializerFilter.GEOMETRY
        if init == "geometry"
        else sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode))


def _perturbed(transform: sitk.Euler3DTransform, rotation_deg, translation_mm) -> sitk.Euler3DTransform:
    """A copy of a rigid transform with angles/translation offsets added (same centre)."""
    out = sitk.Euler3DTransform(transform)
    params = np.array(out.GetParameters(), dtype=float)
    params[:3] += np.deg2rad(rotation_deg)
    params[3:] += translation_mm
    out.SetParameters(tuple(params))
    return out


def _restart_offsets(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Perturbations for restarts 0..n-1; restart 0 is always unperturbed."""
    rng = np.random.default_rng(seed)
    offsets = [(np.zeros(3), np.zeros(3))]
    for _ in range(n - 1):
        offsets.append(
            (
                rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3),
                rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, 3),
            )
        )
    return offsets


def identity_like(transform: sitk.Transform) -> sitk.Transform:
    """The identity (scanner alignment) in the same transform type and layout as `transform`.

    Euler3D / affine keep their centre, a composite (rigid + BSpline) keeps its components with
    identity parameters (BSpline: zero displacements on the same mesh), so the saved .tfm has the
    shape the user asked for; anything else becomes an identity Euler3DTransform.
    """
    transform = transform.Downcast()
    if isinstance(transform, sitk.Euler3DTransform):
        out = sitk.Euler3DTransform()
        out.SetCenter(transform.GetCenter())
        return out
    if isinstance(transform, sitk.AffineTransform):
        out = sitk.AffineTransform(transform.GetDimension())
        out.SetCenter(transform.GetCenter())
        return out
    if isinstance(transform, sitk.BSplineTransform):
        out = sitk.BSplineTransform(transform)
        out.SetParameters((0.0,) * len(transform.GetParameters()))
        return out
    if isinstance(transform, sitk.CompositeTransform):
        out = sitk.CompositeTransform(transform.GetDimension())
        for i in range(transform.GetNumberOfTransforms()):
            out.AddTransform(identity_like(transform.GetNthTransform(i)))
        return out
    return sitk.Euler3DTransform()


def is_worse(before: float, after: float, tolerance: float = WORSE_TOLERANCE) -> bool:
    """True when the gradient correlation `after` registering is strictly below `before` by more than
    `tolerance` (equal values and float noise are not worse)."""
    return after < before - tolerance


def _worse_warning(before: float, after: float, kept: bool) -> str:
    digits = 3 if round(before, 3) != round(after, 3) else 6  # why: never "from 0.229 to 0.229"
    action = "kept the scanner alignment" if kept else "result kept as asked (--no-keep-initial-if-worse)"
    return f"registration lowered the gradient correlation from {before:.{digits}f} to {after:.{digits}f}; {action}"


def _affine_from_rigid(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine.SetCenter(rigid.GetCenter())
    return affine


@contextlib.contextmanager
def _thread_limit(threads: int | None):
    """Run with SimpleITK/ITK's global default thread count set to `threads` (None: unchanged).

    Why: the metric sums per-thread partial results in a scheduling-dependent order, so two runs
    with several threads differ by ~1e-11 in the parameters; with one thread they are
    bit-identical. `ImageRegistrationMethod.SetNumberOfThreads` alone was not enough (measured):
    the metric follows the global default.
    """
    if threads is None:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _sampling_seed(seed: int) -> int:
    """Seed for SimpleITK's metric sampling: never 0 (SimpleITK's 0 means 'use the wall clock')."""
    return int(seed) % 2_147_483_646 + 1


# --------------------------------------------------------------------------------------------
# Registration stages


@dataclass
class _Setup:
    """Everything the stages share (built once per `register` call)."""

    fixed: sitk.Image  # metric input on the working grid (intensity or gradient magnitude)
    moving: sitk.Image
    mask: sitk.Image | None  # on the working grid
    sampling_percentage: float
    iterations: int
    sampling_seed: int
    progress: ProgressFn | None = None
    progress_span: tuple[float, float] = (0.0, 1.0)


def _method(setup: _Setup, iterations: int, bspline: bool = False) -> sitk.ImageRegistrationMethod:
    """A Mattes-MI / regular-step gradient descent registration method.

    Linear stages: two pyramid levels (2 mm smoothing, then none) for capture range, and scales
    from physical shift (rotations in radians and translations in mm differ ~100× in effect).
    BSpline stage: one level (the linear stage already did the coarse work), unit scales (all
    BSpline parameters are displacements in mm) and half-size steps.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # Why the cap: a BSpline iteration costs ~64 control points × samples; at 0.5 the stage took
    # 45 s on ProstateX-0000, at 0.2 it took 26 s with an equal or better gradient correlation.
    fraction = min(setup.sampling_percentage, BSPLINE_MAX_SAMPLING) if bspline else setup.sampling_percentage
    method.SetMetricSamplingPercentage(fraction, setup.sampling_seed)
    if setup.mask is not None:
        method.SetMetricFixedMask(setup.mask)
    method.SetInterpolator(sitk.sitkLinear)
    # Regular-step gradient descent: on ProstateX-0000 plain gradient descent with an estimated
    # learning rate overshot and ended worse than it started in ~1/3 of the runs; regular steps
    # (halved on every change of direction) always improved the dense metric.
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=0.5 if bspline else 1.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-4,
    )
    if bspline:
        method.SetShrinkFactorsPerLevel([1])
        method.SetSmoothingSigmasPerLevel([0.0])
    else:
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    _observe(method, setup, iterations, levels=1 if bspline else 2)
    return method


def _observe(method: sitk.ImageRegistrationMethod, setup: _Setup, iterations: int, levels: int) -> None:
    """Forward optimizer iterations to the progress callback (installed even without one: the
    callback is where Ctrl-C / SIGTERM reach the optimizer, see ProstateAICore.commands)."""
    if setup.progress is None:
        method.AddCommand(sitk.sitkIterationEvent, lambda: None)
        return
    start, stop = setup.progress_span
    last = [-1.0]

    def on_iteration():
        done = (method.GetCurrentLevel() + method.GetOptimizerIteration() / max(iterations, 1)) / levels
        fraction = start + (stop - start) * min(done, 1.0)
        if fraction - last[0] >= 0.01:  # why: one line per iteration floods the job's stderr pipe
            last[0] = fraction
            setup.progress(fraction, f"registration level {method.GetCurrentLevel() + 1}/{levels}")

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)


def _run_linear(setup: _Setup, start: sitk.Transform) -> tuple[sitk.Transform, str]:
    method = _method(setup, setup.iterations)
    method.SetInitialTransform(start, inPlace=False)
    result = method.Execute(setup.fixed, setup.moving)
    return _unwrap(result), method.GetOptimizerStopConditionDescription()


def _unwrap(transform: sitk.Transform) -> sitk.Transform:
    """The concrete transform inside the CompositeTransform that Execute returns for linear stages."""
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    return transform.Downcast()


def _bspline_mesh(setup: _Setup, mesh_size) -> list[int]:
    """Mesh over the whole working image with `mesh_size` intervals across the metric region.

    Why: a BSpline transform is zero outside its domain, so a domain cut to the region leaves a
    visible step in the warped image at the domain's edge (seen in the check PNG). Covering the
    whole image with the region's control-point spacing keeps the resolution where the samples
    are; control points away from the region get no gradient, stay 0, and the warp fades out.
    """
    mesh = [int(m) for m in mesh_size]
    if setup.mask is None:
        return mesh
    _, region = _bounding_roi(setup.fixed, setup.mask, margin_mm=0.0)
    whole = setup.fixed.GetSize()
    return [max(m, int(math.ceil(m * n / max(r, 1)))) for m, n, r in zip(mesh, whole, region)]


def _run_bspline(setup: _Setup, linear: sitk.Transform, mesh_size) -> tuple[sitk.Transform, str]:
    """BSpline stage on top of the linear result: optimise only the BSpline, then compose."""
    bspline = sitk.BSplineTransformInitializer(setup.fixed, _bspline_mesh(setup, mesh_size), order=3)
    method = _method(setup, setup.iterations, bspline=True)
    method.SetMovingInitialTransform(linear)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(setup.fixed, setup.moving)
    # Fixed point x -> bspline(x) -> linear(...) -> moving: a composite applies its LAST-added
    # transform first, so add the linear one first.
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(linear)
    composite.AddTransform(bspline)
    return composite, method.GetOptimizerStopConditionDescription()


def _metric_value(setup: _Setup, transform: sitk.Transform) -> float:
    """Mattes MI at `transform` over ALL working-grid voxels (in the mask): deterministic, comparable."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if setup.mask is not None:
        method.SetMetricFixedMask(setup.mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(setup.fixed, setup.moving))


# --------------------------------------------------------------------------------------------
# Gradient correlation


def _bounding_roi(image: sitk.Image, mask: sitk.Image, margin_mm: float) -> tuple[list[int], list[int]]:
    """(index, size) of the mask's bounding box grown by `margin_mm`, inside the image, ≥ 4 voxels."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    box = stats.GetBoundingBox(1)
    index, size = [], []
    for axis, n in enumerate(image.GetSize()):
        pad = int(math.ceil(margin_mm / image.GetSpacing()[axis]))
        lo = max(0, box[axis] - pad)
        hi = min(n, box[axis] + box[axis + 3] + pad)
        if hi - lo < 4:  # recursive Gaussian filters need ≥ 4 voxels along each axis
            lo, hi = max(0, min(lo, n - 4)), min(n, max(hi, lo + 4))
        index.append(lo)
        size.append(hi - lo)
    return index, size


def _gradient_magnitude_array(image: sitk.Image, sigma_mm: float) -> np.ndarray:
    magnitude = sitk.GradientMagnitudeRecursiveGaussian(_as_float(image), sigma_mm)
    return sitk.GetArrayFromImage(magnitude).astype(np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def gradient_correlations(
    fixed, moving_resampled, labels: sitk.Image, sigma_mm=DEFAULT_GRADIENT_SIGMA_MM
) -> dict[str, float]:
    """Gradient correlation inside each non-zero label of `labels` (keys: label values as str)."""
    if not same_grid(fixed, moving_resampled):
        raise InputError("gradient_correlation needs the moving image resampled onto the fixed grid.")
    labels = require_same_grid(fixed, labels, names=("fixed image", "mask"))
    index, size = _bounding_roi(fixed, labels, margin_mm=4 * sigma_mm)
    crop = lambda im: sitk.RegionOfInterest(im, size, index)  # noqa: E731 - why: gradients only near the mask
    gf = _gradient_magnitude_array(crop(fixed), sigma_mm)
    gm = _gradient_magnitude_array(crop(moving_resampled), sigma_mm)
    label_array = sitk.GetArrayFromImage(crop(labels))
    out = {}
    for value in np.unique(label_array[label_array > 0]):
        inside = label_array == value
        out[str(int(value))] = _pearson(gf[inside], gm[inside])
    return out


def gradient_correlation(fixed, moving_resampled, mask=None, sigma_mm=DEFAULT_GRADIENT_SIGMA_MM) -> float:
    """Pearson correlation of the gradient magnitudes of two images on the same (fixed) grid.

    Gradient magnitude = ``GradientMagnitudeRecursiveGaussian`` with `sigma_mm` (physical units),
    computed on the fixed grid for both images; the correlation is taken over the voxels where
    `mask` > 0 (all labels together), or over the whole grid when `mask` is None. 1 = edges agree
    in place and relative strength; it does not care about the two contrasts' intensity scales.
    """
    if mask is None:
        mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(fixed)
    binary = sitk.Cast(require_same_grid(fixed, mask, names=("fixed image", "mask")) > 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise InputError("The mask for the gradient correlation is empty.")
    return gradient_correlations(fixed, moving_resampled, binary, sigma_mm)["1"]


def resample_onto(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None, reference=None
) -> sitk.Image:
    """Moving image on the fixed grid (or `reference`), linear, float32, 0 outside its field of view."""
    transform = transform if transform is not None else sitk.Transform()
    return sitk.Resample(_as_float(moving), reference or fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _selection_scores(fixed, moving, transform, selection, sigma_mm) -> dict[str, float]:
    """Per-label gradient correlations, resampling the moving image only around the labels (fast)."""
    index, size = _bounding_roi(fixed, selection, margin_mm=4 * sigma_mm)
    reference = sitk.RegionOfInterest(fixed, size, index)
    resampled = resample_onto(reference, moving, transform)
    return gradient_correlations(reference, resampled, sitk.RegionOfInterest(selection, size, index), sigma_mm)


# --------------------------------------------------------------------------------------------
# Public entry point


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: str = "rigid",
    metric_on: str = "intensity",
    fixed_mask: sitk.Image | None = None,
    restarts: int = 1,
    seed: int = 0,
    mesh_size: Sequence[int] = DEFAULT_MESH_SIZE,
    selection_mask: sitk.Image | None = None,
    sampling_percentage: float = 0.5,
    iterations: int = 100,
    init: str = "scanner",
    gradient_sigma_mm: float = DEFAULT_GRADIENT_SIGMA_MM,
    selection_margin_mm: float | None = 20.0,
    threads: int | None = 1,
    progress: ProgressFn | None = None,
    keep_initial_if_worse: bool = True,
) -> RegistrationResult:
    """Register `moving` (ADC / high-b DWI) onto `fixed` (T2). See the module docstring.

    fixed_mask: restricts the metric's samples (fixed grid). selection_mask: gland or zone label
    map on the fixed grid; chooses the best restart by the gradient correlation inside its labels
    and, when no fixed_mask is given, also restricts the metric to the labels grown by
    `selection_margin_mm` (None: whole field of view) — on ProstateX-0000 (ADC, rigid) the
    gland's gradient correlation went 0.63 → 0.68 with the whole field of view and → 0.75 with
    the gland + 20 mm (registration_bench).
    iterations: per pyramid level and stage. threads: ITK's global thread count while registering;
    1 (default) makes repeated runs bit-identical, None keeps the current setting (faster on many
    cores, repeatable to ~1e-10).
    keep_initial_if_worse: the registration is "worse" when its gradient correlation (same region
    as the reported numbers) is below the scanner alignment's (identity) by more than
    WORSE_TOLERANCE (1e-6; equal is not worse). Then `warning` says so, and with True (default)
    the result is the scanner alignment: `transform` = identity of the same type
    (`identity_like`), `resampled` = moving resampled with it, `metric_after` /
    `gradient_correlation_after` = the "before" values, `kept_initial` = True;
    `gradient_correlation_registered` keeps what the registration reached. With False the worse
    result is returned as it is (still with the warning). Nothing changes when it is not worse.
    """
    t0 = time.perf_counter()
    _check_arguments(transform, metric_on, restarts, sampling_percentage, iterations, mesh_size, gradient_sigma_mm)
    validate_volume(fixed, "fixed image")
    validate_volume(moving, "moving image")
    fixed_f, moving_f = _as_float(fixed), _as_float(moving)
    fixed_mask = _aligned_mask(fixed_f, fixed_mask, "fixed mask")
    selection_mask = _aligned_mask(fixed_f, selection_mask, "selection mask")
    metric_mask = fixed_mask
    if metric_mask is None and selection_mask is not None and selection_margin_mm is not None:
        metric_mask = gland_region(selection_mask, selection_margin_mm)

    with _thread_limit(threads):
        working = _working_fixed(fixed_f, moving_f)
        setup = _Setup(
            fixed=_feature(working, metric_on, gradient_sigma_mm),
            moving=_feature(moving_f, metric_on, gradient_sigma_mm),
            mask=_onto(metric_mask, working),
            sampling_percentage=sampling_percentage,
            iterations=iterations,
            sampling_seed=_sampling_seed(seed),
            progress=progress,
        )
        report_mask = selection_mask if selection_mask is not None else fixed_mask
        centre = _mask_centroid(report_mask) if report_mask is not None else None
        start = initial_transform(working, moving_f, init, centre)
        _check_overlap(working, moving_f, start, setup.mask)
        _report(progress, 0.02, "prepared images")

        records, candidates = _run_restarts(
            setup, start, transform, mesh_size, restarts, seed, fixed_f, moving_f, selection_mask, gradient_sigma_mm
        )
        best = int(np.argmax([r.score for r in records]))  # the first one wins ties: deterministic
        _report(progress, 0.95, "measuring gradient correlation")
        resampled = resample_onto(fixed_f, moving_f, candidates[best])
        gc_mask = report_mask if report_mask is not None else _overlap_mask(fixed_f, moving_f, gradient_sigma_mm)
        before = resample_onto(fixed_f, moving_f)
        chosen, metric_before = candidates[best], _metric_value(setup, sitk.Euler3DTransform())
        metric_after = records[best].metric_after
        gc_before = gradient_correlation(fixed_f, before, gc_mask, gradient_sigma_mm)
        gc_registered = gradient_correlation(fixed_f, resampled, gc_mask, gradient_sigma_mm)
        gc_after, kept, warning = gc_registered, False, None
        if is_worse(gc_before, gc_registered):
            kept = bool(keep_initial_if_worse)
            warning = _worse_warning(gc_before, gc_registered, kept)
            if kept:
                chosen = identity_like(chosen)
                resampled = resample_onto(fixed_f, moving_f, chosen)
                metric_after, gc_after = metric_before, gc_before
        result = RegistrationResult(
            transform=chosen,
            resampled=resampled,
            metric_before=metric_before,
            metric_after=metric_after,
            gradient_correlation_before=gc_before,
            gradient_correlation_after=gc_after,
            restarts=records,
            best_restart=best,
            seconds=0.0,
            seed=int(seed),
            settings={
                "transform": transform,
                "metric_on": metric_on,
                "init": init,
                "restarts": restarts,
                "mesh_size": [int(m) for m in mesh_size] if transform == "bspline" else None,
                "sampling_percentage": sampling_percentage,
                "iterations": iterations,
                "gradient_sigma_mm": gradient_sigma_mm,
                "threads": threads,
                "keep_initial_if_worse": bool(keep_initial_if_worse),
                "working_spacing": [float(s) for s in working.GetSpacing()],
                "metric_region": "fixed mask" if fixed_mask is not None
                else f"selection mask + {selection_margin_mm} mm" if metric_mask is not None
                else "whole field of view",
                "gradient_correlation_region": "selection mask" if selection_mask is not None
                else "fixed mask" if fixed_mask is not None
                else "field-of-view overlap",
            },
            kept_initial=kept,
            warning=warning,
            gradient_correlation_registered=gc_registered,
        )
    result.seconds = time.perf_counter() - t0
    _report(progress, 1.0, "registration done")
    return result


def _run_restarts(setup, start, transform, mesh_size, restarts, seed, fixed, moving, selection, sigma_mm):
    """Run every restart and score it; returns (records, transforms) in restart order."""
    records, candidates = [], []
    offsets = _restart_offsets(restarts, seed)
    for k, (rotation, translation) in enumerate(offsets):
        span = (0.05 + 0.85 * k / len(offsets), 0.05 + 0.85 * (k + 1) / len(offsets))
        candidate, stop = _run_restart(setup, _perturbed(start, rotation, translation), transform, mesh_size, span)
        metric_after = _metric_value(setup, candidate)
        correlations = _selection_scores(fixed, moving, candidate, selection, sigma_mm) if selection is not None else {}
        # METHODS.md: keep the run with the best mean of the zones' gradient correlations and the
        # loss (negated: Mattes MI is a loss, lower is better). Without zones: the loss alone.
        score = float(np.mean(list(correlations.values()) + [-metric_after]))
        rotation, translation = [float(v) for v in rotation], [float(v) for v in translation]
        records.append(RestartRecord(k, rotation, translation, metric_after, correlations, score, stop))
        candidates.append(candidate)
        _report(setup.progress, span[1], f"restart {k + 1}/{len(offsets)} done")
    return records, candidates


def _check_arguments(transform, metric_on, restarts, sampling_percentage, iterations, mesh_size, sigma) -> None:
    _check_choice(transform, TRANSFORMS, "transform")
    _check_choice(metric_on, METRIC_ON, "metric_on")
    if int(restarts) != restarts or restarts < 1:
        raise InputError(f"restarts must be a whole number ≥ 1 (got {restarts}).")
    if not 0 < sampling_percentage <= 1:
        raise InputError(f"sampling_percentage must be in (0, 1] (got {sampling_percentage}).")
    if int(iterations) != iterations or iterations < 1:
        raise InputError(f"iterations must be a whole number ≥ 1 (got {iterations}).")
    if len(mesh_size) != 3 or any(int(m) < 1 for m in mesh_size):
        raise InputError(f"mesh_size needs three whole numbers ≥ 1 (got {tuple(mesh_size)}).")
    if not sigma > 0:
        raise InputError(f"gradient sigma must be > 0 mm (got {sigma}).")


def _run_restart(setup: _Setup, start, transform: str, mesh_size, span) -> tuple[sitk.Transform, str]:
    """rigid → (affine) → (BSpline), each stage initialised from the previous one."""
    stages = 1 + (transform == "affine") + (transform == "bspline")
    step = (span[1] - span[0]) / stages
    setup.progress_span = (span[0], span[0] + step)
    result, stop = _run_linear(setup, start)
    if transform == "affine":
        setup.progress_span = (span[0] + step, span[1])
        result, stop = _run_linear(setup, _affine_from_rigid(result))
    elif transform == "bspline":
        setup.progress_span = (span[0] + step, span[1])
        result, stop = _run_bspline(setup, result, mesh_size)
    return result, stop


def _overlap_mask(fixed: sitk.Image, moving: sitk.Image, sigma_mm: float) -> sitk.Image:
    """Where the moving field of view covers the fixed grid, shrunk so FOV edges do not count as edges."""
    covered = _coverage(fixed, moving, sitk.Transform())
    radius = [max(1, int(math.ceil(3 * sigma_mm / s))) for s in fixed.GetSpacing()]
    eroded = sitk.BinaryErode(covered, radius)
    return eroded if sitk.GetArrayViewFromImage(eroded).any() else covered


def _report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


# --------------------------------------------------------------------------------------------
# Saving


def save_transform(transform: sitk.Transform, path) -> Path:
    """Write a transform atomically (.tfm/.txt text, .h5/.hdf5 HDF5, .mat ITK binary)."""
    path = Path(path)
    if not str(path).lower().endswith(TRANSFORM_SUFFIXES):
        raise InputError(f"Unsupported transform file '{path.name}'; use one of: {', '.join(TRANSFORM_SUFFIXES)}.")
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path
