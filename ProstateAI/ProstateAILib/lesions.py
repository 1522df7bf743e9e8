"""Interpretable baseline csPCa lesion detector (no training) and PI-CAI-style lesion candidates.

Input: T2, ADC and high-b-value DWI (HBV) on the T2 grid (as `pipeline.prepare_inputs` makes them), the
gland mask and the zones (1 = PZ, 2 = TZ) of the same run. Output: a voxel likelihood in [0, 1] inside the
gland, non-overlapping lesion candidates, a patient score and two operating points.

Rules (PI-RADS v2.1 reading, written as robust z-scores; every constant below says why it has its value)
1. Normalise per case and per zone: z = (I - median) / (IQR / 1.349) over the zone's voxels (the IQR / 1.349
   of a normal distribution is its standard deviation), after a light in-plane Gaussian (`CHANNEL_SIGMA_MM`).
   Each zone is its own reference because normal PZ and TZ differ (TZ: lower T2 and ADC); a lesion fills a
   small part of a zone, so median and IQR describe the normal tissue around it. A zone under
   `MIN_ZONE_ML` falls back to the whole gland. Scanner units (ADC in 10^-6 or 10^-3 mm^2/s, arbitrary T2 /
   DWI units) cancel out. z is clipped to +-`Z_CLIP` so that one sequence (an artefact, a calcification with
   very low ADC) cannot carry a voxel alone.
2. Combine, by zone (PI-RADS: DWI leads in the PZ, T2 in the TZ):
     PZ: s = 1.0 * z_HBV - 1.0 * z_ADC                      (restricted diffusion: bright HBV, dark ADC)
     TZ: s = -1.0 * z_T2 - 1.0 * z_ADC - 0.5 * z_CV + 0.5 * z_HBV
   z_CV is the z-score of the local T2 coefficient of variation (std / mean in a `CV_WINDOW_MM` window):
   the "homogeneous" of PI-RADS' "homogeneous moderately hypointense" TZ lesion (heterogeneous, encapsulated
   BPH nodules are the TZ's usual low-T2 false positives); HBV keeps half a weight in the TZ because DWI
   still upgrades a TZ score. The leading terms weigh 1.0, the modifiers 0.5.
3. Average s over a `SCORE_SIGMA_MM` Gaussian inside the gland (normalised convolution, so the gland
   border does not pull the average towards 0): a csPCa lesion is a region of several mm, not a voxel;
   this removes single-voxel noise peaks.
4. Likelihood = logistic((s - `SCORE_CENTRE`) / `SCORE_SCALE`) inside the gland, 0 outside.
   `SCORE_CENTRE` = 4: both leading sequences 2 robust SDs abnormal (or one of them 4) gives 0.5.

Candidates (PI-CAI's `extract_lesion_candidates`, "dynamic" mode): take the highest remaining likelihood,
grow the region of voxels >= `REGION_FRACTION` x peak connected to it (26-connectivity), fill it with the
peak, remove it and a one-voxel ring around it (so that no two candidates touch: `evaluate-lesions` reads a
detection map's connected regions as candidates), repeat until the peak falls below `CANDIDATE_FLOOR` or
`MAX_CANDIDATES` were found. Regions smaller than `MIN_CANDIDATE_ML` are removed but not reported.
Patient score = the highest candidate likelihood (0 without candidates).

Operating points (not fitted: there is no labelled cohort here; they follow from the z-score meaning):
- "balanced": likelihood >= 0.5, s >= 4 (both leading sequences 2 SDs abnormal);
- "max_sensitivity": likelihood >= logistic(-1) = 0.269, s >= 3 (1.5 SDs each).

The weights and the rule structure come from PI-RADS; `SCORE_CENTRE`, `SCORE_SCALE` and the smoothing
widths were checked on two cases only (ProstateX-0000, csPCa; PI-CAI 10000_1000000, negative), which are
also the test cases: read their numbers in the tests as a plumbing check, not as validation. Measured there
(`segment --no-tta`, gland model v1.2): the expert ProstateX-0000 lesion is candidate 1 (0.62), the negative
case scores 0.42; with `SCORE_SIGMA_MM` = 1 the negative case would score higher (0.85 vs 0.81). With gland
model v2.0, whose mask covers the negative case's whole gland, the negative case scores 0.65 (the positive
0.61): it was read PI-RADS 4 and was benign at biopsy, so a PI-RADS-like rule set flagging it is expected,
and these two cases cannot rank the detector. Known false positive: the anterior fibromuscular stroma
(low T2 and ADC) along the TZ's anterior edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ProstateAICore.geometry import LPS_TO_RAS
from ProstateAICore.intensity import percentiles

DETECTOR = {"name": "mpmri-rules-baseline", "version": "1.0"}  # what reports and DICOM SEG name

CHANNEL_SIGMA_MM = 1.0  # in-plane denoising of each sequence (T2 voxels ~0.5 mm; ADC/HBV acquired at ~2 mm)
CV_WINDOW_MM = 3.0  # in-plane window of the T2 homogeneity measure (a few mm: the texture of a nodule)
MIN_ZONE_ML = 1.0  # a zone smaller than this gives unstable statistics: the whole gland is the reference
Z_CLIP = 4.0  # robust SDs; beyond this one sequence would decide alone
WEIGHTS = {  # zone -> sequence -> weight of its robust z-score (sign: +1 = bright is suspicious)
    "PZ": {"HBV": 1.0, "ADC": -1.0},
    "TZ": {"T2": -1.0, "ADC": -1.0, "CV": -0.5, "HBV": 0.5},
}
SCORE_SIGMA_MM = 2.0  # regional evidence: a ~5 mm (FWHM) neighbourhood, the smallest lesions PI-RADS scores
SCORE_CENTRE = 4.0  # s giving likelihood 0.5: two leading sequences each 2 robust SDs abnormal
SCORE_SCALE = 1.0  # one unit of s (one SD on one leading sequence) changes the odds e-fold
REGION_FRACTION = 0.4  # PI-CAI dynamic threshold: voxels >= 40 % of the peak (dynamic_threshold_factor 2.5)
CANDIDATE_FLOOR = 0.1  # peaks below this likelihood (s < 1.8) are not candidates
MAX_CANDIDATES = 5  # PI-CAI's num_lesions_to_extract
MAX_REGIONS_EXAMINED = 50  # tiny regions skipped count too: bounds the time on a noisy map
MIN_CANDIDATE_ML = 0.01  # 10 mm^3 (a 2 mm cube, 13 voxels of 0.5 x 0.5 x 3 mm): below anything readable
OPERATING_POINTS = {  # name -> likelihood threshold (a candidate passes when its score >= threshold)
    "max_sensitivity": round(1.0 / (1.0 + math.exp(-(3.0 - SCORE_CENTRE) / SCORE_SCALE)), 4),
    "balanced": round(1.0 / (1.0 + math.exp(-(4.0 - SCORE_CENTRE) / SCORE_SCALE)), 4),
}
ZONE_NAMES = {1: "PZ", 2: "TZ"}
CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connectivity, as lesion_metrics reads detection maps


@dataclass
class Detection:
    """Arrays (z, y, x) on the T2 grid given to `detect`."""

    likelihood: np.ndarray  # float32 voxel likelihood in [0, 1], 0 outside the gland
    detection_map: np.ndarray  # float32, each candidate filled with its likelihood, 0 elsewhere
    labels: np.ndarray  # uint8 candidate ids 1..N (1 = highest score; N <= MAX_CANDIDATES)
    candidates: list[dict] = field(default_factory=list)  # id, score, zone, voxels, peak_index (z, y, x)

    @property
    def patient_score(self) -> float:
        return max((c["score"] for c in self.candidates), default=0.0)


# ---------------------------------------------------------------- likelihood

def _bounding_box(mask: np.ndarray, spacing_xyz, margin_mm: float) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    margin = [int(math.ceil(margin_mm / s)) for s in spacing_xyz][::-1]
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + np.array(margin) + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values - median) / (IQR / 1.349) of `reference` (1D), clipped to +-Z_CLIP."""
    q25, q50, q75 = percentiles(reference, [25, 50, 75])
    spread = (q75 - q25) / 1.349
    if not spread > 0:  # a constant zone (a missing sequence filled with zeros): no evidence
        return np.zeros(values.shape, np.float32)
    return np.clip((values - q50) / spread, -Z_CLIP, Z_CLIP).astype(np.float32)


def _in_plane_sigma(sigma_mm: float, spacing_xyz) -> list[float]:
    return [0.0, sigma_mm / spacing_xyz[1], sigma_mm / spacing_xyz[0]]  # (z, y, x) voxels


def likelihood_map(t2: np.ndarray, adc: np.ndarray, hbv: np.ndarray, zones: np.ndarray, spacing_xyz,
                   gland: np.ndarray | None = None) -> np.ndarray:
    """Voxel likelihood in [0, 1] (module docstring, rules 1-4); arrays (z, y, x) on one grid.

    `zones`: 1 = PZ, 2 = TZ; `gland` (default zones > 0): gland voxels without a zone count as PZ.
    """
    gland = (zones > 0) if gland is None else (np.asarray(gland) > 0) | (zones > 0)
    out = np.zeros(gland.shape, np.float32)
    if not gland.any():
        return out
    box = _bounding_box(gland, spacing_xyz, 3 * max(SCORE_SIGMA_MM, CV_WINDOW_MM))
    inside = gland[box]
    zone = np.where(zones[box] == 2, 2, 1) * inside  # no zone -> PZ
    sigma = _in_plane_sigma(CHANNEL_SIGMA_MM, spacing_xyz)
    smooth = {name: ndimage.gaussian_filter(np.asarray(a[box], np.float32), sigma)
              for name, a in (("T2", t2), ("ADC", adc), ("HBV", hbv))}
    raw_t2 = np.asarray(t2[box], np.float32)
    window = [1] + [max(3, int(round(CV_WINDOW_MM / s)) | 1) for s in (spacing_xyz[1], spacing_xyz[0])]
    mean = ndimage.uniform_filter(raw_t2, window)
    square = ndimage.uniform_filter(raw_t2 * raw_t2, window)
    smooth["CV"] = np.sqrt(np.maximum(square - mean * mean, 0.0)) / np.maximum(np.abs(mean), 1e-6)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    score = np.zeros(inside.shape, np.float32)
    for value, name in ZONE_NAMES.items():
        where = zone == value
        if not where.any():
            continue
        reference = where if where.sum() * voxel_ml >= MIN_ZONE_ML else inside
        for sequence, weight in WEIGHTS[name].items():
            score[where] += weight * _robust_z(smooth[sequence][where], smooth[sequence][reference])
    # normalised convolution: the average of s over gland voxels only
    sigma = [SCORE_SIGMA_MM / s for s in spacing_xyz][::-1]
    weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
    regional = ndimage.gaussian_filter(score * inside, sigma) / np.maximum(weight, 1e-6)
    likelihood = 1.0 / (1.0 + np.exp(-(regional - SCORE_CENTRE) / SCORE_SCALE))
    out[box] = np.where(inside, likelihood, 0.0)
    return out


# ---------------------------------------------------------------- candidates

def extract_candidates(likelihood: np.ndarray, spacing_xyz, zones: np.ndarray | None = None,
                       fraction: float = REGION_FRACTION, floor: float = CANDIDATE_FLOOR,
                       max_candidates: int = MAX_CANDIDATES, min_ml: float = MIN_CANDIDATE_ML):
    """(detection_map, labels, candidates) from a likelihood map (module docstring, "Candidates")."""
    max_candidates = min(int(max_candidates), 255)  # ids are stored as uint8
    work = np.array(likelihood, np.float32)
    detection = np.zeros(work.shape, np.float32)
    labels = np.zeros(work.shape, np.uint8)
    candidates: list[dict] = []
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    for _ in range(MAX_REGIONS_EXAMINED):
        if len(candidates) >= max_candidates:
            break
        peak_index = np.unravel_index(int(np.argmax(work)), work.shape)
        peak = float(work[peak_index])
        if not peak >= floor:
            break
        above = work >= fraction * peak
        box = _bounding_box(above, (1.0, 1.0, 1.0), 1.0)  # one voxel wider than every voxel above
        local = tuple(p - b.start for p, b in zip(peak_index, box))
        components, _ = ndimage.label(above[box], structure=CONNECTIVITY)
        inner = components == components[local]
        # the region and its neighbours leave the map: the next candidate cannot touch this one
        work[box][ndimage.binary_dilation(inner, CONNECTIVITY)] = 0.0
        region = np.zeros(work.shape, bool)
        region[box] = inner
        if inner.sum() * voxel_ml < min_ml:
            continue
        number = len(candidates) + 1
        detection[region] = peak
        labels[region] = number
        zone = "PZ"
        if zones is not None:
            values, counts = np.unique(zones[region], return_counts=True)
            named = [(c, v) for v, c in zip(values, counts) if v in ZONE_NAMES]
            zone = ZONE_NAMES[max(named)[1]] if named else "outside zones"
        candidates.append({"id": number, "score": peak, "zone": zone, "voxels": int(region.sum()),
                           "peak_index": [int(v) for v in peak_index]})
    return detection, labels, candidates


def detect(t2: np.ndarray, adc: np.ndarray, hbv: np.ndarray, zones: np.ndarray, spacing_xyz,
           gland: np.ndarray | None = None) -> Detection:
    """Likelihood map and candidates; arrays (z, y, x) on one grid, `spacing_xyz` in mm (x, y, z)."""
    likelihood = likelihood_map(t2, adc, hbv, zones, spacing_xyz, gland)
    detection, labels, candidates = extract_candidates(likelihood, spacing_xyz, zones)
    return Detection(likelihood, detection, labels, candidates)


# ---------------------------------------------------------------- lesions.json

def passed(score: float) -> list[str]:
    """The operating points a candidate with this likelihood passes."""
    return [name for name, threshold in OPERATING_POINTS.items() if score >= threshold]


def lesion_table(detection: Detection, grid: sitk.Image) -> dict:
    """lesions.json: patient score, operating points and the candidates (sorted by score, highest
    first), centroids in LPS (ITK/DICOM) and RAS (Slicer) mm, from `grid` (the arrays' image geometry)."""
    ml = float(np.prod(grid.GetSpacing())) / 1000.0
    lesions = []
    if detection.candidates:
        ids = [c["id"] for c in detection.candidates]
        centres = ndimage.center_of_mass(np.ones(detection.labels.shape, np.uint8), detection.labels, ids)
        for candidate, centre in zip(detection.candidates, centres):
            lps = np.array(grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in reversed(centre)]))
            lesions.append({
                "id": candidate["id"], "score": round(float(candidate["score"]), 4),
                "centroid_lps_mm": [round(float(v), 2) for v in lps],
                "centroid_ras_mm": [round(float(v), 2) for v in LPS_TO_RAS @ lps],
                "volume_ml": round(candidate["voxels"] * ml, 4), "zone": candidate["zone"],
                "operating_points_passed": passed(candidate["score"]),
            })
    lesions.sort(key=lambda entry: -entry["score"])
    return {
        "detector": dict(DETECTOR),
        "patient_score": round(float(detection.patient_score), 4),
        "operating_points": {name: {"threshold": threshold,
                                    "lesions": [e["id"] for e in lesions if e["score"] >= threshold]}
                             for name, threshold in OPERATING_POINTS.items()},
        "lesions": lesions,
        "detection_map": "detection_map.nii.gz: each candidate filled with its score, 0 elsewhere",
        "labels": "lesions.nii.gz: voxel value = lesion id",
    }
