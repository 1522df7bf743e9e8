"""Segmentation demo: `prostateai segment` on the bundled ProstateX-0218 (T2 + ADC + HBV DICOM),
then overlay PNGs (axial, coronal, sagittal through the gland's centre) of PZ and TZ on the T2, with the
lesion candidates (lesions.py) outlined and labelled "L<id> <score>", and one more axial overlay through the
highest-scoring candidate (lesion_axial.png).

The PNGs use ProstateAICore.render's display orientation (radiological: patient right on the
image's left; anterior up in axial; superior up in coronal/sagittal) for both the T2 and the masks,
so an overlay cannot be mirrored relative to its image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.colors import ListedColormap

from ProstateAICore import render

from . import pipeline
from ProstateAICore.imageio import read_image, write_text

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "ProstateX-0218"
FILL_ALPHA = 0.35


def gland_centre_indices(mask: sitk.Image) -> dict[str, int]:
    """Slice index per view (counted like render.display_slice, on the LPS-reoriented grid) through
    the mask's centroid; the middle slice when the mask is empty."""
    lps = sitk.GetArrayViewFromImage(render.to_lps(mask))  # (S, P, L)
    if not lps.any():
        return {"axial": lps.shape[0] // 2, "coronal": lps.shape[1] // 2, "sagittal": lps.shape[2] // 2}
    k, j, i = (int(round(c)) for c in np.argwhere(lps > 0).mean(0))
    return {"axial": k, "coronal": j, "sagittal": i}


def _window(plane: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(plane, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def save_overlay_png(t2: sitk.Image, zones: sitk.Image, path, axis: str, index: int, title: str,
                     width_px: int = 560, lesions: sitk.Image | None = None, scores: dict[int, float] | None = None) -> str:
    """T2 slice with PZ / TZ filled (alpha) and outlined, edge letters and a legend; with `lesions` (candidate
    ids, lesions.nii.gz) the candidates in the slice outlined and labelled with `scores` (id -> score)."""
    grey, aspect, index = render.display_slice(t2, axis, index)
    labels, _, _ = render.display_slice(zones, axis, index)
    candidates = render.display_slice(lesions, axis, index)[0] if lesions is not None else None
    rows, cols = grey.shape
    height_px = int(round(width_px * rows * aspect / cols))
    title_px = 30
    fig = render.black_figure(width_px, height_px + title_px)
    ax = fig.add_axes((0, 0, 1, height_px / (height_px + title_px)))
    lo, hi = _window(grey)
    ax.imshow(grey, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear", aspect="auto")
    colours = {value: colour for name, layer, value, colour, _ in pipeline.SEGMENTS if layer == "zones"}
    names = {value: name for name, layer, value, _, _ in pipeline.SEGMENTS if layer == "zones"}
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*colours[v], FILL_ALPHA) for v in sorted(colours)])
    ax.imshow(labels, cmap=cmap, vmin=-0.5, vmax=len(colours) + 0.5, interpolation="nearest", aspect="auto")
    for value in sorted(colours):
        if (labels == value).any():
            ax.contour(labels == value, levels=[0.5], colors=[colours[value]], linewidths=1.2)
    lesion_colour = pipeline.LESION_SEGMENT[2]
    for value in (np.unique(candidates[candidates > 0]) if candidates is not None else []):
        ax.contour(candidates == value, levels=[0.5], colors=[lesion_colour], linewidths=1.8)
        rows_in, cols_in = np.nonzero(candidates == value)
        text = f"L{int(value)}" + (f" {scores[int(value)]:.2f}" if scores and int(value) in scores else "")
        ax.text(cols_in.max() + 3, rows_in.min(), text, color=lesion_colour, fontsize=9, fontweight="bold",
                ha="left", va="bottom")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()
    render.draw_edge_letters(ax, axis)
    fig.text(0.01, 1 - 0.5 * title_px / (height_px + title_px), f"{title} [{axis} {index}]", ha="left",
             va="center", color="white", fontsize=9)
    legend = [(names[value], colours[value]) for value in sorted(colours, reverse=True)]
    if lesions is not None:
        legend.insert(0, ("lesion", lesion_colour))
    right = 0.99
    for name, colour in legend:  # legend in the title bar, right-aligned, each item as wide as its text
        fig.text(right, 1 - 0.5 * title_px / (height_px + title_px), f"■ {name}", color=colour, fontsize=9,
                 fontweight="bold", ha="right", va="center")
        right -= (7.0 * (len(name) + 2) + 12.0) / width_px
    return render.save_png(fig, path)


def run(out_dir: str | Path, sample: str | Path | None = None) -> dict:
    """Segment the bundled case into out_dir/ProstateX-0218 and write the overlay PNGs next to it."""
    out_dir = Path(out_dir)
    sample = Path(sample) if sample is not None else SAMPLE
    case_out = out_dir / "ProstateX-0218"
    # The bundled case is a study folder (three series, as from a PACS export): the series are found
    # and classified, as `prostateai segment --study` does; a DICOM SEG is written beside the masks.
    report = pipeline.run(None, case_out, study=sample)
    t2 = read_image(sample / "t2w")
    zones = read_image(case_out / "zones.nii.gz")
    indices = gland_centre_indices(zones)
    lesions, scores, lesion_pngs = None, {}, []
    if (case_out / "lesions.json").is_file():
        lesions = read_image(case_out / "lesions.nii.gz")
        table = json.loads((case_out / "lesions.json").read_text())
        scores = {entry["id"]: entry["score"] for entry in table["lesions"]}
    pngs = []
    volumes = report["volumes_ml"]
    title = (f"ProstateX-0218: gland {volumes['prostate']:.1f} mL "
             f"(PZ {volumes['PZ']:.1f}, TZ {volumes['TZ']:.1f})")
    for axis in ("axial", "coronal", "sagittal"):
        pngs.append(save_overlay_png(t2, zones, out_dir / f"segmentation_{axis}.png", axis, indices[axis], title,
                                     lesions=lesions, scores=scores))
    if scores:  # one more axial view, through the highest-scoring candidate
        best = max(scores, key=scores.get)
        index = gland_centre_indices(lesions == best)["axial"]
        lesion_pngs.append(save_overlay_png(
            t2, zones, out_dir / "lesion_axial.png", "axial", index,
            f"ProstateX-0218: lesion candidate L{best}, score {scores[best]:.2f}", lesions=lesions, scores=scores))
    summary = {"outputs": str(case_out), "pngs": pngs, "lesion_pngs": lesion_pngs, "lesions": report.get("lesions"),
               "volumes_ml": volumes, "timings_s": report["timings_s"],
               "models": {k: v["name"] for k, v in report["models"].items()},
               "series": {role: (chosen or {}).get("series_description") for role, chosen in report["study"].items()},
               "dicom_seg": (case_out / "segmentation.dcm").is_file(), "quality": report["quality"]["status"]}
    write_text(json.dumps(summary, indent=2), out_dir / "segmentation_summary.json")
    print(f"   series: {', '.join(f'{role} = {name}' for role, name in summary['series'].items())}")
    print(f"   prostate {volumes['prostate']:.1f} mL (PZ {volumes['PZ']:.1f}, TZ {volumes['TZ']:.1f}) in "
          f"{report['timings_s']['total']:.1f} s; quality {summary['quality']}; DICOM SEG "
          f"{'written' if summary['dicom_seg'] else 'not written'}; overlays: "
          f"{', '.join(Path(p).name for p in pngs + lesion_pngs)}")
    if scores:
        print(f"   lesion candidates: {len(scores)}, patient score {report['lesions']['patient_score']:.2f} "
              "(rule-based baseline, see lesions.json)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Segmentation demo on the bundled ProstateX-0218 case.")
    parser.add_argument("--out", default="demo-output/prostateai", help="output folder")
    args = parser.parse_args(argv)
    run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
