"""Click-to-grow: a lesion mask grown from one seed point (`prostateai grow`).

Method (Pellicer-Valero et al. 2022, Sci Rep, and their public preprocessing code, `grow_regions_sitk`):
a threshold level set (SimpleITK `ThresholdSegmentationLevelSetImageFilter`) grows from a small seed region
independently on each sequence, and the voxels found on at least 2 of the 3 sequences are kept. They grew on
T2, b800 and Ktrans; here the sequences are T2, the high-b-value DWI (HBV) and the inverted ADC (max - ADC:
a lesion is dark on ADC; the band threshold below is symmetric, so inverting changes nothing but the
reading), each resampled onto the T2 grid (third-order B-spline, `pipeline.prepare_inputs`, which also
refuses a sequence that does not overlap the T2).

Per sequence, as in their code:
- seed region: the seed voxel grown by `SEED_RADIUS_MM` (their 5 x 5 x 3 voxel box at 0.5 x 0.5 x 3 mm);
- intensity band: mean +- f * SD of the seed region, f = `FACTORS` (see "Tuned" below; their code has
  `LITERATURE_FACTORS`: 2.5 for T2 and b800, 3.5 for ADC);
- level set: initial = signed distance to the seed region (inside positive), propagation 1, curvature 0,
  `ITERATIONS` iterations (their 120, RMS-error stop 0: all iterations run), reverse expansion direction;
  mask = level set > 0, then a binary closing with a radius-1 ball (their clean-up).
Votes: a voxel is kept when `min(2, number of sequences)` sequences found it (only a T2: the T2 alone;
T2 and one of ADC/HBV: both), then the connected part holding the seed. With a gland mask, the result is
limited to the gland grown by `GLAND_MARGIN_MM` (their 8 x 8 x 1 voxel dilation), and a seed outside the
gland gives a warning.

Tuned (the one departure from their code): with `LITERATURE_FACTORS` the mask grown from the expert
lesion's centre on ProstateX-0000 is 4x too large (1.28 mL for a 0.31 mL lesion, Dice 0.39). `FACTORS` are
theirs times 0.6 (T2 1.5, HBV 1.5, ADC 2.1): Dice 0.60 there, and 0.53-0.62 with the seed moved 1 mm in
any in-plane direction (0.5-0.6 times theirs is a plateau; 0.7: Dice 0.52). That one case, ProstateX-0000,
is the only labelled lesion available here and is also the test case: its Dice is a tuning result, not a
validation.

Speed: everything runs on a box of `ROI_HALF_MM` around the seed (lesions are far smaller), so ADC and HBV
are resampled onto that box only. Measured on ProstateX-0000 (2 CPU cores): see README.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import LPS_TO_RAS
from ProstateAICore.imageio import validate_volume

SEED_RADIUS_MM = (1.0, 1.0, 3.0)  # x, y, z: 2 voxels in-plane and 1 slice on a 0.5 x 0.5 x 3 mm T2
LITERATURE_FACTORS = {"T2": 2.5, "HBV": 2.5, "ADC": 3.5}  # band half-width in seed SDs (Pellicer-Valero's code)
FACTORS = {"T2": 1.5, "HBV": 1.5, "ADC": 2.1}  # theirs x 0.6, tuned on ProstateX-0000 (module docstring)
ITERATIONS = 120  # level-set iterations (their iters_max)
ROI_HALF_MM = (30.0, 30.0, 15.0)  # x, y, z half-size of the working box around the seed
GLAND_MARGIN_MM = (4.0, 4.0, 3.0)  # their 8 x 8 x 1 voxel dilation of the gland at 0.5 x 0.5 x 3 mm


@dataclass
class Grown:
    mask: sitk.Image  # uint8 on the T2 grid, 1 = grown lesion
    sequences: list[str]  # the sequences grown on
    votes_needed: int
    per_sequence_ml: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def volume_ml(self) -> float:
        return float(np.count_nonzero(sitk.GetArrayViewFromImage(self.mask))) * float(
            np.prod(self.mask.GetSpacing())) / 1000.0


def seed_to_lps(seed_lps=None, seed_ras=None) -> tuple[float, float, float]:
    """The seed in LPS mm (ITK/DICOM) from either LPS or RAS (Slicer) coordinates."""
    if (seed_lps is None) == (seed_ras is None):
        raise InputError("Give the seed once: in LPS (--seed-lps) or in RAS (--seed-ras) mm.")
    point = np.asarray(seed_lps if seed_lps is not None else LPS_TO_RAS @ np.asarray(seed_ras, float), float)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise InputError(f"The seed must be three finite coordinates in mm, got {list(np.ravel(point))}.")
    return tuple(float(v) for v in point)


def seed_index(t2: sitk.Image, seed_lps) -> tuple[int, int, int]:
    """The T2 voxel (x, y, z) holding the seed; InputError when the seed is outside the image."""
    continuous = np.array(t2.TransformPhysicalPointToContinuousIndex([float(v) for v in seed_lps]))
    size = np.array(t2.GetSize())
    if np.any(continuous < -0.5) or np.any(continuous > size - 0.5):
        ras = LPS_TO_RAS @ np.asarray(seed_lps, float)
        raise InputError(
            f"The seed (LPS {', '.join(f'{v:.1f}' for v in seed_lps)} mm; RAS {', '.join(f'{v:.1f}' for v in ras)} mm) "
            f"lies outside the T2 image (voxel {', '.join(f'{v:.1f}' for v in continuous)} of size "
            f"{' x '.join(str(s) for s in size)}). Check the coordinates and whether they are LPS or RAS.")
    return tuple(int(v) for v in np.clip(np.rint(continuous), 0, size - 1))


def _box(t2: sitk.Image, index) -> tuple[list[int], list[int]]:
    half = [int(np.ceil(h / s)) for h, s in zip(ROI_HALF_MM, t2.GetSpacing())]
    lo = [max(0, i - h) for i, h in zip(index, half)]
    hi = [min(n, i + h + 1) for i, h, n in zip(index, half, t2.GetSize())]
    return lo, [b - a for a, b in zip(lo, hi)]


def _seed_region(shape_zyx, local_xyz, spacing) -> np.ndarray:
    radius = [int(round(r / s)) for r, s in zip(SEED_RADIUS_MM, spacing)]  # x, y, z voxels
    region = np.zeros(shape_zyx, np.uint8)
    x, y, z = local_xyz
    region[max(0, z - radius[2]):z + radius[2] + 1, max(0, y - radius[1]):y + radius[1] + 1,
           max(0, x - radius[0]):x + radius[0] + 1] = 1
    return region


def grow_one(image: sitk.Image, seed: sitk.Image, factor: float, iterations: int = ITERATIONS) -> np.ndarray:
    """Threshold level set from the seed region (module docstring) -> bool array (z, y, x)."""
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(seed) > 0]
    mean, sd = float(values.mean()), float(values.std())
    if not sd > 0:  # a flat seed region: a band of +-1 % of the mean instead of an empty one
        sd = max(abs(mean) * 0.01, 1e-6)
    initial = sitk.SignedMaurerDistanceMap(seed, insideIsPositive=True, useImageSpacing=True)
    level_set = sitk.ThresholdSegmentationLevelSetImageFilter()
    level_set.SetLowerThreshold(mean - factor * sd)
    level_set.SetUpperThreshold(mean + factor * sd)
    level_set.SetMaximumRMSError(0.0)
    level_set.SetNumberOfIterations(int(iterations))
    level_set.SetCurvatureScaling(0.0)
    level_set.SetPropagationScaling(1.0)
    level_set.ReverseExpansionDirectionOn()
    grown = level_set.Execute(initial, sitk.Cast(image, sitk.sitkFloat32)) > 0
    grown = sitk.BinaryMorphologicalClosing(grown, [1, 1, 1], sitk.sitkBall)
    return sitk.GetArrayFromImage(grown) > 0


def grow(t2: sitk.Image, seed_lps, adc: sitk.Image | None = None, hbv: sitk.Image | None = None,
         gland: sitk.Image | None = None, factors: dict[str, float] | None = None) -> Grown:
    """Grow a lesion mask from `seed_lps` (mm) on T2 (+ inverted ADC, HBV); see the module docstring.
    `factors`: band half-widths by sequence (default `FACTORS`; `LITERATURE_FACTORS` for theirs)."""
    from .pipeline import prepare_inputs

    start = time.perf_counter()
    validate_volume(t2, "T2")
    index = seed_index(t2, seed_lps)
    warnings = []
    gland_array = None
    if gland is not None:
        from ProstateAICore.geometry import require_same_grid

        gland_array = sitk.GetArrayFromImage(require_same_grid(t2, gland, ("T2", "gland mask"))) > 0
        if not gland_array[index[2], index[1], index[0]]:
            warnings.append("the seed lies outside the gland mask; the mask is grown anyway, limited to the gland "
                            f"and {GLAND_MARGIN_MM[0]:g} mm around it")
    lo, size = _box(t2, index)
    roi = sitk.RegionOfInterest(sitk.Cast(t2, sitk.sitkFloat32), size, lo)
    inputs = prepare_inputs(roi, {"ADC": adc, "HBV": hbv})  # overlap check + resampling onto the box
    images = {"T2": inputs.t2}
    if "HBV" in inputs.extra:
        images["HBV"] = inputs.extra["HBV"]
    if "ADC" in inputs.extra:
        adc_roi = inputs.extra["ADC"]
        images["ADC"] = sitk.Cast(float(np.max(sitk.GetArrayViewFromImage(adc_roi))) - adc_roi, sitk.sitkFloat32)
    local = tuple(i - a for i, a in zip(index, lo))
    seed = sitk.GetImageFromArray(_seed_region(size[::-1], local, t2.GetSpacing()))
    seed.CopyInformation(roi)
    ml = float(np.prod(t2.GetSpacing())) / 1000.0
    votes = np.zeros(size[::-1], np.uint8)
    per_sequence = {}
    for name, image in images.items():
        found = grow_one(image, seed, (factors or FACTORS)[name])
        per_sequence[name] = round(float(found.sum()) * ml, 4)
        votes += found
    needed = min(2, len(images))
    kept = votes >= needed
    agreed_at_seed = bool(kept[local[2], local[1], local[0]])
    if gland_array is not None:
        margin = [max(1, int(round(m / s))) for m, s in zip(GLAND_MARGIN_MM, t2.GetSpacing())][::-1]
        near = ndimage.binary_dilation(gland_array[lo[2]:lo[2] + size[2], lo[1]:lo[1] + size[1], lo[0]:lo[0] + size[0]],
                                       np.ones([2 * m + 1 for m in margin], bool))
        kept &= near
    components, _ = ndimage.label(kept, np.ones((3, 3, 3), bool))
    at_seed = components[local[2], local[1], local[0]]
    kept = components == at_seed if at_seed else np.zeros_like(kept)
    if not kept.any():
        why = ("it is more than the margin away from the gland" if agreed_at_seed else
               f"fewer than {needed} sequence(s) grew there" if len(images) > 1 else "the T2 level set did not grow")
        warnings.append(f"nothing was kept at the seed ({why}); the mask is empty")
    full = np.zeros(t2.GetSize()[::-1], np.uint8)
    full[lo[2]:lo[2] + size[2], lo[1]:lo[1] + size[1], lo[0]:lo[0] + size[0]] = kept
    mask = sitk.GetImageFromArray(full)
    mask.CopyInformation(t2)
    return Grown(mask, list(images), needed, per_sequence, warnings, time.perf_counter() - start)
