"""The radiologist's review of a segmentation, GUI-free: the Slicer Logic, the browser app and tests use it.

- `masks_at_threshold`: the preview's Prostate / PZ / TZ at another gland probability threshold, from
  the probability maps `prostateai segment` writes (the slider; ~50 ms on a 384 x 384 x 19 T2);
- `consistent_zones`: zones that agree with an edited gland (TZ clipped to the gland, PZ = gland - TZ)
  and the problems found before fixing them;
- `review_record`: what a department keeps for quality assurance: which model, when, whether a
  person edited the result and how much (Dice and volume change per segment);
- `psa_density`: PSA / gland volume.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import numpy as np

from ProstateAICore.errors import InputError

from .postprocess import foreground_mask

ZONE_NAMES = ("Prostate", "PZ", "TZ")


def masks_at_threshold(p_prostate: np.ndarray, p_tz: np.ndarray, threshold: float,
                       tz_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Prostate = largest component of p_prostate >= threshold; TZ = largest component of
    p_tz >= tz_threshold inside it; PZ = the rest of the gland (as the pipeline deploys it)."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"The probability threshold must lie between 0 and 1 (got {threshold:g}).")
    if p_prostate.shape != p_tz.shape:
        raise InputError(f"Probability maps of different shapes: {p_prostate.shape} and {p_tz.shape}.")
    prostate = foreground_mask(p_prostate, threshold)
    tz = foreground_mask(p_tz, tz_threshold, within=prostate) if prostate.any() else np.zeros_like(prostate)
    return {"Prostate": prostate, "PZ": prostate & ~tz, "TZ": tz}


@dataclass
class ZoneCheck:
    """Zones made consistent with the gland, and what was wrong before."""

    masks: dict[str, np.ndarray]
    tz_outside_gland: int = 0  # TZ voxels that were outside the gland (now removed)
    pz_outside_gland: int = 0  # PZ voxels outside the gland (now removed)
    overlap: int = 0  # voxels that were both PZ and TZ (now TZ)
    gland_without_zone: int = 0  # gland voxels in neither zone (now PZ)
    warnings: list[str] = field(default_factory=list)


def consistent_zones(prostate: np.ndarray, pz: np.ndarray, tz: np.ndarray) -> ZoneCheck:
    """TZ clipped to the gland, PZ = gland - TZ; counts (and warnings) for what had to change."""
    prostate, pz, tz = (np.asarray(m) > 0 for m in (prostate, pz, tz))
    if not prostate.shape == pz.shape == tz.shape:
        raise InputError(f"Segment arrays of different shapes: {prostate.shape}, {pz.shape}, {tz.shape}.")
    check = ZoneCheck({}, int((tz & ~prostate).sum()), int((pz & ~prostate).sum()), int((pz & tz).sum()),
                      int((prostate & ~pz & ~tz).sum()))
    new_tz = tz & prostate
    check.masks = {"Prostate": prostate, "PZ": prostate & ~new_tz, "TZ": new_tz}
    for count, text in ((check.tz_outside_gland, "TZ voxels outside the gland were removed"),
                        (check.pz_outside_gland, "PZ voxels outside the gland were removed"),
                        (check.overlap, "voxels were in both PZ and TZ (kept as TZ)"),
                        (check.gland_without_zone, "gland voxels were in no zone (now PZ)")):
        if count:
            check.warnings.append(f"{count} {text}.")
    return check


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty (nothing to disagree about)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def review_record(ai: dict[str, np.ndarray], final: dict[str, np.ndarray], voxel_ml: float,
                  model: dict | None = None, reviewer: str | None = None, when: datetime.datetime | None = None) -> dict:
    """QA record of one review: per segment the AI and final volumes (mL), their Dice, and whether
    a person changed it; `edited` when any segment changed."""
    segments = {}
    for name in ai:
        if name not in final:
            raise InputError(f"The reviewed segmentation has no '{name}' segment.")
        a, f = np.asarray(ai[name]) > 0, np.asarray(final[name]) > 0
        if a.shape != f.shape:
            raise InputError(f"'{name}': the AI result {a.shape} and the reviewed segment {f.shape} differ in shape.")
        changed = int((a ^ f).sum())
        segments[name] = {
            "ai_volume_ml": round(float(a.sum()) * voxel_ml, 3),
            "final_volume_ml": round(float(f.sum()) * voxel_ml, 3),
            "volume_change_ml": round(float(f.sum() - a.sum()) * voxel_ml, 3),
            "dice_ai_vs_final": round(dice(a, f), 4),
            "voxels_changed": changed,
            "edited": changed > 0,
        }
    return {
        "format": "prostateai-review-record",
        "version": 1,
        "when": (when or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"),
        "reviewer": reviewer,
        "model": model or {},
        "edited": any(s["edited"] for s in segments.values()),
        "segments": segments,
    }


def psa_density(psa_ng_ml: float, prostate_ml: float) -> float:
    """PSA density in ng/mL per mL of gland (PSA / gland volume)."""
    if not np.isfinite(psa_ng_ml) or psa_ng_ml <= 0:
        raise InputError(f"PSA must be a positive number in ng/mL (got {psa_ng_ml}).")
    if prostate_ml <= 0:
        raise InputError("PSA density needs a gland volume above 0 mL.")
    return round(float(psa_ng_ml) / float(prostate_ml), 3)
