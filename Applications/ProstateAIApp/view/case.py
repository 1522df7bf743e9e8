"""What `prostateai view` opens: a T2 (with optional ADC / HBV) or a study folder, and a segmentation file.

Reading only: the series are chosen by `ProstateAILib.study` (as `prostateai segment --study` chooses
them), read by `ProstateAICore.imageio`, and a segmentation file becomes label layers for
`ProstateAIMRML.add_segmentation_node` (the same glue the Slicer module uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CTPreprocessLib import hu
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import same_grid
from ProstateAICore.imageio import read_image
from ProstateAILib import pipeline, segfile, study

ROLES = ("T2", "ADC", "HBV")
SAMPLE_CASE = "ProstateX-0218"
COLOURS = {name: colour for name, _, _, colour, _ in pipeline.SEGMENTS}  # Prostate, PZ, TZ: fixed
CODES = {name: code for name, _, _, _, code in pipeline.SEGMENTS}
OTHER_COLOURS = ((0.90, 0.30, 0.30), (0.80, 0.50, 0.90), (0.95, 0.80, 0.25), (0.35, 0.80, 0.85))


@dataclass
class Case:
    name: str
    images: dict  # role -> SimpleITK image (T2 always; ADC, HBV when given or found)
    lines: list = field(default_factory=list)  # what was read (and, for a study, which series and why)
    t2_dicom: str | None = None  # the T2's DICOM series folder (a DICOM SEG references its files)

    @property
    def is_ct(self) -> bool:
        """A CT in HU opened as the main image (the app then offers the CT organ window presets)."""
        return hu.looks_like_hu(sitk.GetArrayViewFromImage(self.images["T2"]))


def sample_case(repo: Path) -> Path:
    return repo / "Resources" / "SampleData" / SAMPLE_CASE


def read_case(inputs: list) -> Case:
    """INPUT... -> Case. One folder holding several series (nested or flat) is a study: the T2, ADC
    and highest-b DWI are chosen from it. Otherwise the inputs are the T2, then the ADC and the HBV
    (DICOM folders or image files)."""
    if not inputs:
        raise InputError("Give a T2 (DICOM folder or image file) or a study folder.")
    if len(inputs) > len(ROLES):
        raise InputError(f"At most {len(ROLES)} inputs (T2, ADC, HBV); got {len(inputs)}.")
    paths = [Path(p).expanduser() for p in inputs]
    for path in paths:
        if not path.exists():
            raise InputError(f"'{path}' does not exist.")
    first = paths[0]
    name = first.name.split(".")[0] if first.is_file() else first.name
    series = study.find_series(first) if len(paths) == 1 and first.is_dir() else []
    if len(series) > 1:
        selection = study.select_series(first, series)
        study.check_same_patient(selection.identities())
        with study.series_folders(selection) as folders:
            images = {role: read_image(folder) for role, folder in folders.items()}
        t2_folder = selection.t2.folder  # usable as DICOM SEG source only when it holds that series alone
        alone = len({s.uid for s in series if s.folder == t2_folder}) == 1
        return Case(name, images, [f"Study {first.name}:"] + selection.lines(), str(t2_folder) if alone else None)
    images = {role: read_image(path) for role, path in zip(ROLES, paths)}
    return Case(name, images, [f"{role}: {path.name}" for role, path in zip(ROLES, paths)],
                str(first) if first.is_dir() else None)


def _on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """`mask` on the reference grid (Slicer may save a segmentation cropped to its extent)."""
    if same_grid(reference, mask):
        return mask
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def segmentation_layers(path, t2: sitk.Image) -> tuple[dict, list]:
    """(label layers, segments) for `add_segmentation_node` from a .seg.nrrd or a label map file.

    A .seg.nrrd keeps its segment names; a label map with values 1 and 2 is a zone map (1 = PZ,
    2 = TZ, as `prostateai segment` writes zones.nii.gz) and gets the gland as their union; a map with
    only 1 is the gland; other values become "Label N". Prostate, PZ and TZ get the standard colours.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"The segmentation file '{path}' does not exist.")
    if path.name.lower().endswith(".seg.nrrd"):
        masks, codes = segfile.read_seg_nrrd(path, with_codes=True)
        layers = {name: _on_grid(mask, t2) for name, mask in masks.items()}
        segments = [(name, name, 1, COLOURS.get(name, OTHER_COLOURS[i % len(OTHER_COLOURS)]),
                     CODES.get(name) or ((codes.get(name), name) if codes.get(name) else None))
                    for i, name in enumerate(masks)]
        return layers, segments
    label = read_image(path)
    if label.GetPixelID() != sitk.sitkUInt8:
        label = sitk.Cast(label, sitk.sitkUInt8)
    label = _on_grid(label, t2)
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label)) if v > 0]
    if not values:
        raise InputError(f"The label map '{path.name}' is empty.")
    if set(values) <= {1, 2}:
        names = {1: "Prostate"} if values == [1] else {1: "PZ", 2: "TZ"}
        layers = {"labels": label, "prostate": sitk.Cast(label > 0, sitk.sitkUInt8)}
        segments = [] if values == [1] else [("Prostate", "prostate", 1, COLOURS["Prostate"], CODES["Prostate"])]
        segments += [(n, "labels", v, COLOURS[n], CODES[n]) for v, n in names.items()]
        return layers, segments
    segments = [(f"Label {v}", "labels", v, OTHER_COLOURS[i % len(OTHER_COLOURS)], None) for i, v in enumerate(values)]
    return {"labels": label}, segments
