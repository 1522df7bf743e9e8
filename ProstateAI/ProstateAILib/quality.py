"""A per-case quality verdict for every segmentation: "ok", or "check" with the reasons.

A model answers for any input: a chest CT given as the T2 once came back as "prostate 656.8 mL".
Three groups of signals, each with a documented bound (measured on the shared data, see
`Testing/test_quality.py` and the README):

- input plausibility: an axial T2 is magnitude MR -- an image with many negative values (a CT in HU)
  is refused before any model runs (`require_mr_magnitude`); its series description does not name
  another sequence (ADC, DWI, CT...);
- prediction plausibility: gland volume within the clinical range, one main component, compact,
  centred in-plane in the field of view;
- model confidence: mean gland probability inside the mask, share of undecided voxels at the edge.

Bounds are deliberately loose: "check" asks a person to look, it does not judge the case.
"""

from __future__ import annotations

import re

import numpy as np

from ProstateAICore import intensity
from ProstateAICore.errors import InputError

# name -> (bound, explanation); every bound is reported in the verdict so a reader can judge it.
BOUNDS = {
    "negative_fraction_max": intensity.MR_NEGATIVE_FRACTION_MAX,  # share of T2 voxels < 0 (CT in HU: many)
    "volume_ml_min": 8.0,  # smallest plausible adult gland in the field of view (partial coverage)
    "volume_ml_max": 250.0,  # largest plausible gland (massive BPH reaches ~200 mL)
    "largest_component_min": 0.85,  # share of thresholded voxels in the kept component
    "compactness_min": 0.25,  # gland volume / volume of its bounding box
    "centre_offset_max": 0.35,  # in-plane distance of the gland centre from the image centre / FOV
    "mean_probability_min": 0.75,  # mean gland probability inside the mask
    "uncertain_fraction_max": 0.7,  # voxels with 0.2 < p < 0.8, relative to the mask's volume (T2s: 0.25-0.53)
}
OTHER_SEQUENCE = re.compile(r"\b(adc|apparent|dwi|diff|trace|b[-_ ]?\d{3,4}|calc_?bval|dce|dyn|perf|ct|cta)\b|"
                            r"adc|diffusion|_b\d{3,4}", re.IGNORECASE)


def require_mr_magnitude(t2: np.ndarray) -> None:
    """Refuse an image that cannot be an MR magnitude image (e.g. a CT in HU: most voxels below 0)."""
    array = np.asarray(t2)
    negative = intensity.negative_fraction(array)
    if negative > BOUNDS["negative_fraction_max"]:
        raise InputError(f"The T2 has {100 * negative:.1f} % negative voxels (minimum {float(array.min()):g}): an MR "
                         "magnitude image has none. Is it a CT in Hounsfield units? Give the axial T2-weighted MRI.")


def input_metrics(t2: np.ndarray, series_description: str | None = None) -> dict:
    array = np.asarray(t2)
    return {
        "negative_fraction": round(intensity.negative_fraction(array), 5),
        "min_value": float(array.min()),
        "series_description": series_description,
    }


def prediction_metrics(prostate: np.ndarray, thresholded_voxels: int, p_gland: np.ndarray, voxel_ml: float) -> dict:
    """Numbers about the kept gland mask (z, y, x) and the gland probabilities it came from."""
    mask = np.asarray(prostate) > 0
    voxels = int(mask.sum())
    metrics = {"volume_ml": round(voxels * voxel_ml, 3),
               "largest_component_fraction": round(voxels / thresholded_voxels, 4) if thresholded_voxels else 0.0}
    if voxels == 0:
        return {**metrics, "compactness": 0.0, "centre_offset": 1.0, "mean_probability": 0.0,
                "uncertain_fraction": 1.0}
    z, y, x = np.nonzero(mask)
    box = (np.ptp(z) + 1) * (np.ptp(y) + 1) * (np.ptp(x) + 1)
    rows, cols = mask.shape[1], mask.shape[2]
    offset = np.hypot((y.mean() - (rows - 1) / 2) / rows, (x.mean() - (cols - 1) / 2) / cols)
    uncertain = int(np.count_nonzero((p_gland > 0.2) & (p_gland < 0.8)))
    return {**metrics,
            "compactness": round(voxels / float(box), 4),
            "centre_offset": round(float(offset), 4),
            "mean_probability": round(float(p_gland[mask].mean()), 4),
            "uncertain_fraction": round(uncertain / voxels, 4)}


def verdict(inputs: dict, prediction: dict) -> dict:
    """{"status": "ok" | "check", "reasons": [...], "metrics": {...}, "bounds": BOUNDS}."""
    b, reasons = BOUNDS, []
    description = inputs.get("series_description") or ""
    if description and OTHER_SEQUENCE.search(description) and not re.search(r"t2", description, re.IGNORECASE):
        reasons.append(f"the series description '{description}' names another sequence, not an axial T2")
    if not b["volume_ml_min"] <= prediction["volume_ml"] <= b["volume_ml_max"]:
        reasons.append(f"gland volume {prediction['volume_ml']:.1f} mL is outside the plausible "
                       f"{b['volume_ml_min']:g}-{b['volume_ml_max']:g} mL")
    if prediction["largest_component_fraction"] < b["largest_component_min"]:
        reasons.append(f"only {100 * prediction['largest_component_fraction']:.0f} % of the gland voxels form one "
                       "object (scattered prediction)")
    if prediction["compactness"] < b["compactness_min"]:
        reasons.append(f"the gland fills {100 * prediction['compactness']:.0f} % of its bounding box (not compact)")
    if prediction["centre_offset"] > b["centre_offset_max"]:
        reasons.append(f"the gland is off-centre ({prediction['centre_offset']:.2f} of the field of view)")
    if prediction["mean_probability"] < b["mean_probability_min"]:
        reasons.append(f"low model confidence: mean gland probability {prediction['mean_probability']:.2f}")
    if prediction["uncertain_fraction"] > b["uncertain_fraction_max"]:
        reasons.append(f"many undecided voxels ({prediction['uncertain_fraction']:.2f} of the gland volume)")
    return {"status": "check" if reasons else "ok", "reasons": reasons,
            "metrics": {**inputs, **prediction}, "bounds": dict(BOUNDS)}
