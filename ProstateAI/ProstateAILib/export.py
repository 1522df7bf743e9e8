"""Exports of a segmentation for the radiologist's review loop: Slicer .seg.nrrd, NIfTI label maps with a
JSON label table, and DICOM SEG referencing the T2 series (`prostateai export`; `segment` also writes
OUT/segmentation.dcm whenever the T2 came from DICOM).

Segments are `segfile.Segment`s (name, label image + value, colour, SNOMED CT code). Given the T2, every
segment is first put onto the T2's exact voxel grid, losslessly: float32 header round-off is removed,
permuted/flipped voxel axes are undone and a cropped extent (Slicer saves .seg.nrrd cropped) is padded;
a segment on any other grid is refused.

Formats:
- "seg.nrrd": `segfile.write_seg_nrrd` (overlapping segments in layers, SNOMED CT terminology tags).
- "nifti": overlapping segments cannot share one label map, so there is one label map per layer: a
  segment joins the first label map where it overlaps no other segment, keeping its label value unless
  that map already uses it (then the smallest free value). With Prostate, PZ and TZ the gland is `OUT`
  (1 = Prostate) and the zones are `OUT-stem.layer1.nii.gz` (1 = PZ, 2 = TZ): the same values as
  `segment`'s prostate.nii.gz and zones.nii.gz, whether the segments come from those files or from
  separate 0/1 masks (.seg.nrrd). The label table `OUT.json` (stem without .nii[.gz])
  maps, per file, each value to its segment: name, colour, SNOMED CT code, and the model that made it
  or whether a person corrected it. Every file is written together (all or none).
- "dicom-seg": a BINARY DICOM Segmentation (highdicom) whose frames reference the T2's source images
  (the files are read with pydicom and placed by their ImagePositionPatient on the T2 grid, so the file
  order, here often the reverse of the spatial order, never matters); segment descriptions carry SNOMED
  CT category/type codes, SegmentAlgorithmType AUTOMATIC with the model (AlgorithmIdentificationSequence)
  or MANUAL for segments a person corrected.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ProstateAICore import __version__
from ProstateAICore.errors import InputError
from ProstateAICore.imageio import atomic_path, read_image_with_source, read_json, suffix_of, write_all

from . import segfile
from .segfile import Segment

FORMATS = ("dicom-seg", "seg.nrrd", "nifti")
CATEGORY = ("123037004", "SCT", "Anatomical Structure")  # segmented property category of anatomy segments
# Lesion segments ("Lesion <id>", pipeline.LESION_SEGMENT, type SCT 52988006 Lesion): their own category and
# the prostate as anatomic region.
LESION_TYPE = "52988006"
LESION_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
LESION_REGION = ("41216001", "SCT", "Prostate")


def category_of(code) -> tuple[str, str, str]:
    """Segmented property category of a segment with SNOMED CT type `code` ((value, meaning) or None)."""
    return LESION_CATEGORY if code and code[0] == LESION_TYPE else CATEGORY


GRID_TOLERANCE = 1e-3  # spacing (mm) and direction cosines; NIfTI stores geometry as float32
INDEX_TOLERANCE = 0.05  # voxels: how far an origin or a slice position may sit from a T2 voxel centre
TABLE_FORMAT = "prostateai-label-table"


@dataclass(frozen=True)
class Algorithm:
    """The model that made a segment (DICOM SEG AlgorithmIdentificationSequence)."""

    model: str
    version: str


# ---------------------------------------------------------------- segments

def known_segment(name: str, labelmap: sitk.Image, value: int = 1) -> Segment:
    """A Segment with the colour and SNOMED CT code of pipeline.SEGMENTS when its name is one of them
    (or of pipeline.LESION_SEGMENT for "Lesion <id>")."""
    from .pipeline import LESION_SEGMENT, SEGMENTS

    for known, _, _, colour, code in SEGMENTS:
        if known.lower() == name.strip().lower():
            return Segment(known, labelmap, value, colour, code)
    words = name.split()
    if len(words) == 2 and words[0].lower() == LESION_SEGMENT[0].lower() and words[1].isdigit():
        return Segment(name, labelmap, value, LESION_SEGMENT[2], LESION_SEGMENT[3])
    return Segment(name, labelmap, value)


def algorithms_from_report(report: dict) -> dict[str, Algorithm]:
    """Segment name -> the model that made it, from a `segment` report (Prostate: gland model; PZ/TZ: zones;
    "Lesion <id>": the lesion detector of report["lesions"])."""
    from .pipeline import LESION_SEGMENT, SEGMENTS

    found = {}
    models = report.get("models") if isinstance(report, dict) else None
    for name, layer, _, _, _ in SEGMENTS:
        info = models.get("gland" if layer == "prostate" else "zones") if isinstance(models, dict) else None
        if isinstance(info, dict) and info.get("name"):
            found[name] = Algorithm(str(info["name"]), str(info.get("version") or "unversioned"))
    lesions = report.get("lesions") if isinstance(report, dict) else None
    detector = lesions.get("detector") if isinstance(lesions, dict) else None
    if isinstance(detector, dict) and detector.get("name") and isinstance(lesions.get("candidates"), int):
        for number in range(1, lesions["candidates"] + 1):
            found[f"{LESION_SEGMENT[0]} {number}"] = Algorithm(str(detector["name"]),
                                                                 str(detector.get("version") or "unversioned"))
    return found


def onto_grid(image: sitk.Image, reference: sitk.Image, name: str) -> sitk.Image:
    """`image` on `reference`'s exact voxel grid without interpolation (see the module docstring)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"Segment '{name}' is not a 3D label map.")
    direction = np.array(reference.GetDirection())
    if not np.allclose(image.GetDirection(), direction, atol=GRID_TOLERANCE):
        image = sitk.DICOMOrient(image, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            reference.GetDirection()))
    offset = np.array(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    shift = np.rint(offset).astype(int)
    if not (np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=GRID_TOLERANCE)
            and np.allclose(image.GetDirection(), direction, atol=GRID_TOLERANCE)
            and np.abs(offset - shift).max() <= INDEX_TOLERANCE):
        raise InputError(
            f"Segment '{name}' is not on the T2's voxel grid (spacing {tuple(round(s, 4) for s in image.GetSpacing())} "
            f"mm, T2 {tuple(round(s, 4) for s in reference.GetSpacing())} mm, or other axes/origin); resample it onto "
            "the T2 first.")
    source = sitk.GetArrayFromImage(image)  # (z, y, x)
    out = np.zeros(reference.GetSize()[::-1], source.dtype)
    lo = shift[::-1]
    a, b = np.maximum(lo, 0), np.minimum(lo + source.shape, out.shape)
    if np.all(b > a):
        inner = source[tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))]
        out[tuple(slice(x, y) for x, y in zip(a, b))] = inner
        outside = np.count_nonzero(source) - np.count_nonzero(inner)
    else:
        outside = np.count_nonzero(source)
    if outside:
        raise InputError(f"Segment '{name}' has {outside} voxel(s) outside the T2's field of view.")
    aligned = sitk.GetImageFromArray(out)
    aligned.CopyInformation(reference)
    return aligned


def _on_t2(segments: list[Segment], t2: sitk.Image) -> list[Segment]:
    done: dict[int, sitk.Image] = {}  # label maps shared by several segments are aligned once
    out = []
    for segment in segments:
        key = id(segment.labelmap)
        if key not in done:
            done[key] = onto_grid(segment.labelmap, t2, segment.name)
        out.append(Segment(segment.name, done[key], segment.value, segment.colour, segment.code))
    return out


# ---------------------------------------------------------------- reading (prostateai export SEG)

@dataclass
class Loaded:
    """What an exported or edited segmentation file holds."""

    segments: list[Segment]
    algorithms: dict[str, Algorithm]
    corrected: set[str]


def table_path(label_map: str | os.PathLike) -> Path:
    """The label table beside a label map: X.nii.gz -> X.json."""
    path = Path(label_map)
    return path.with_name(path.name[: -len(suffix_of(path))] + ".json")


def read_segments(path: str | os.PathLike, labels: dict[int, str] | None = None,
                  table: str | os.PathLike | None = None) -> Loaded:
    """Segments of a .seg.nrrd (ours or Slicer's), or of a label map with its JSON label table
    (`table`, else X.json beside X.nii.gz; every label map the table lists is read), or of a bare
    label map whose values `labels` names ({1: "PZ", 2: "TZ"}; default "Label N")."""
    from .metrics import label_array

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Segmentation '{path}' does not exist or is not a file.")
    if suffix_of(path) == ".seg.nrrd":
        return Loaded([known_segment(name, image) for name, image in segfile.read_seg_nrrd(path).items()], {}, set())
    if table and not Path(table).is_file():
        raise InputError(f"Label table '{table}' does not exist or is not a file.")
    table = Path(table) if table else table_path(path)
    if table.is_file() and not labels:
        return _read_table(table)
    image = _read_label_map(path)
    values = [int(v) for v in np.unique(label_array(image, f"segmentation '{path}'")) if v != 0]
    if labels:
        missing = sorted(set(labels) - set(values))
        if missing:
            raise InputError(f"'{path}' has no voxels with value(s) {missing} named in --labels.")
        values = list(labels)
    return Loaded([known_segment((labels or {}).get(v, f"Label {v}"), image, v) for v in values], {}, set())


def _read_label_map(path: Path) -> sitk.Image:
    image, _ = read_image_with_source(path)
    if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                                  sitk.sitkUInt32, sitk.sitkInt32):
        from .metrics import label_array

        array = label_array(image, f"segmentation '{path}'")  # whole numbers stored as float: accepted
        converted = sitk.GetImageFromArray(np.ascontiguousarray(array, np.int32))
        converted.CopyInformation(image)
        image = converted
    return image


def _read_table(table: Path) -> Loaded:
    document = read_json(table, "label table")
    if not isinstance(document, dict) or document.get("format") != TABLE_FORMAT:
        raise InputError(f"'{table}' is not a ProstateAI label table (\"format\": \"{TABLE_FORMAT}\").")
    loaded = Loaded([], {}, set())
    try:
        for file, entries in document["label_maps"].items():
            image = _read_label_map(table.parent / Path(file).name)  # only files beside the table
            for value, entry in entries.items():
                code = entry.get("code")
                loaded.segments.append(Segment(str(entry["name"]), image, int(value),
                                               tuple(float(c) for c in entry["colour"]),
                                               (str(code["value"]), str(code["meaning"])) if code else None))
                if entry.get("algorithm"):
                    loaded.algorithms[entry["name"]] = Algorithm(str(entry["algorithm"]["model"]),
                                                                 str(entry["algorithm"]["version"]))
                if entry.get("corrected"):
                    loaded.corrected.add(entry["name"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"Label table '{table}' is incomplete or malformed ({type(exc).__name__}: {exc}).") from None
    if not loaded.segments:
        raise InputError(f"Label table '{table}' lists no segments.")
    return loaded


# ---------------------------------------------------------------- writing

def export_segmentation(segments: list[Segment], t2, fmt: str, out: str | os.PathLike,
                        algorithms: dict[str, Algorithm] | None = None, corrected=()) -> list[Path]:
    """Write `segments` as `fmt` ("dicom-seg", "seg.nrrd" or "nifti") to `out`; returns the files written.

    `t2`: the T2 path (DICOM series folder for "dicom-seg"; optional for the others) or None. Given,
    the segments are put onto its exact grid first. `algorithms`: segment name -> model that made it;
    `corrected`: names of segments a person corrected (MANUAL in DICOM SEG, "corrected" in the table).
    """
    if fmt not in FORMATS:
        raise InputError(f"Unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    if not segments:
        raise InputError("No segments to export.")
    names = [s.name for s in segments]
    if len(set(names)) < len(names):
        raise InputError(f"Segment names must differ; the segmentation has {names}.")
    unknown = sorted(set(corrected) - {s.name for s in segments})
    if unknown:
        raise InputError(f"--corrected names segment(s) {unknown} that the segmentation does not have "
                         f"({', '.join(s.name for s in segments)}).")
    if Path(out).is_dir():
        raise InputError(f"Output '{out}' is a folder; give a file name.")
    source = None
    if t2 is not None:
        image, source = read_image_with_source(t2)
        if fmt == "dicom-seg" and source.kind != "dicom-series":
            raise _not_dicom(t2, source.kind)
        segments = _on_t2(segments, image)
    out = Path(out)
    if fmt == "seg.nrrd":
        if suffix_of(out) != ".seg.nrrd":
            raise InputError(f"A Slicer segmentation file must end in .seg.nrrd, not '{out.name}'.")
        return [segfile.write_seg_nrrd(segments, out)]
    if fmt == "nifti":
        return write_label_maps(segments, out, algorithms, corrected)
    if source is None:
        raise _not_dicom(None, None)
    dataset = dicom_seg(segments, source.path, algorithms, corrected)
    return [save_dicom(dataset, out)]


def _not_dicom(t2, kind) -> InputError:
    what = "no T2 was given" if t2 is None else (
        f"'{t2}' is a single DICOM file" if kind == "dicom-file" else f"'{t2}' is a {_format_name(t2)} file")
    return InputError(f"A DICOM SEG needs the T2 as DICOM source images (its DICOM series folder, whose files the "
                      f"SEG references); {what}. Give --t2 the T2's DICOM folder, or export as seg.nrrd or nifti.")


def _format_name(path) -> str:
    return {".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
            ".mhd": "MetaImage"}.get(suffix_of(path), "non-DICOM")


def label_map_paths(out: str | os.PathLike, layers: int) -> list[Path]:
    """OUT, OUT-stem.layer1.nii.gz, ... for `layers` label maps (see the module docstring)."""
    out = Path(out)
    suffix = suffix_of(out)
    stem = out.name[: -len(suffix)]
    return [out] + [out.with_name(f"{stem}.layer{k}{suffix}") for k in range(1, layers)]


def _pack(segments: list[Segment]) -> tuple[list[np.ndarray], list[int], list[int]]:
    """Label maps for overlapping segments: each segment joins the first layer where it overlaps no other
    segment, with its own label value unless another segment of that layer has it (then the smallest
    free value: separate 0/1 masks such as a .seg.nrrd's PZ and TZ become 1 and 2)."""
    layers: list[np.ndarray] = []
    assignment, values = [], []
    for segment in segments:
        mask = segment.mask()
        for index, layer in enumerate(layers):
            if not np.any(layer[mask]):
                break
        else:
            layers.append(np.zeros(mask.shape, np.uint8))
            index = len(layers) - 1
        taken = {v for v, i in zip(values, assignment) if i == index}
        value = int(segment.value) if int(segment.value) not in taken else min(set(range(1, 256)) - taken)
        layers[index][mask] = value
        assignment.append(index)
        values.append(value)
    return layers, assignment, values


def write_label_maps(segments: list[Segment], out: str | os.PathLike, algorithms: dict[str, Algorithm] | None = None,
                     corrected=()) -> list[Path]:
    """NIfTI label map(s) + JSON label table (module docstring); all files together or none."""
    from ProstateAICore.geometry import image_like, same_grid

    out = Path(out)
    if suffix_of(out) not in (".nii.gz", ".nii"):
        raise InputError(f"A NIfTI label map must end in .nii.gz or .nii, not '{out.name}'.")
    reference = segments[0].labelmap
    for segment in segments:
        if not same_grid(reference, segment.labelmap):
            raise InputError(f"Segment '{segment.name}' is not on the same grid as '{segments[0].name}'.")
        if not 0 < int(segment.value) < 256:
            raise InputError(f"Segment '{segment.name}': label value {segment.value} must be in 1..255.")
    layers, assignment, values = _pack(segments)
    paths = label_map_paths(out, len(layers))
    maps: dict[str, dict] = {path.name: {} for path in paths}
    for segment, layer, value in zip(segments, assignment, values):
        entry = {"name": segment.name, "colour": [round(float(c), 6) for c in segment.colour],
                 "code": ({"scheme": "SCT", "value": segment.code[0], "meaning": segment.code[1]}
                          if segment.code else None),
                 "category": dict(zip(("value", "scheme", "meaning"), category_of(segment.code)))}
        algorithm = (algorithms or {}).get(segment.name)
        if algorithm:
            entry["algorithm"] = {"name": "ProstateAI", "model": algorithm.model, "version": algorithm.version}
        entry["corrected"] = segment.name in set(corrected)
        maps[paths[layer].name][str(value)] = entry
    table = {"format": TABLE_FORMAT, "version": 1,
             "description": "voxel value -> segment, for each label map file (beside this table); a segment "
                            "that overlaps another is in another file",
             "label_maps": maps}
    outputs = [(image_like(layer, reference, np.uint8), path) for layer, path in zip(layers, paths)]
    outputs.append((json.dumps(table, indent=2) + "\n", table_path(out)))
    return write_all(outputs)


# ---------------------------------------------------------------- DICOM SEG

def source_slices(folder: str | os.PathLike, grid: sitk.Image) -> list:
    """The T2's DICOM files (pydicom datasets, no pixel data) in `grid`'s slice order: entry k is the
    file whose ImagePositionPatient is voxel (0, 0, k) of `grid` and whose rows/columns run along the
    grid's y/x axes. Missing, repeated or misplaced slices are refused."""
    import pydicom

    datasets = []
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM (DICOMDIR, notes...): not a slice of the series
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "SOPInstanceUID" in ds:
            datasets.append(ds)
    if not datasets:
        raise InputError(f"No DICOM images found in '{folder}' for the DICOM SEG to reference.")
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) > 1:
        raise InputError(f"'{folder}' holds {len(series)} DICOM series; the DICOM SEG needs the T2 series alone.")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"The T2 in '{folder}' is a multi-frame DICOM; DICOM SEG export needs single-frame slices.")
    size, spacing = grid.GetSize(), grid.GetSpacing()
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    slices: list = [None] * size[2]
    for ds in datasets:
        name = Path(ds.filename).name if getattr(ds, "filename", None) else str(ds.SOPInstanceUID)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        pixel_spacing = [float(v) for v in ds.PixelSpacing]  # (between rows, between columns)
        if (int(ds.Rows), int(ds.Columns)) != (size[1], size[0]) \
                or not np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]), atol=GRID_TOLERANCE) \
                or not np.allclose(pixel_spacing, (spacing[1], spacing[0]), atol=GRID_TOLERANCE):
            raise InputError(f"DICOM file '{name}' does not match the T2 grid (rows/columns, orientation or pixel "
                             "spacing); the segmentation must be on the T2 series' own grid.")
        index = np.array(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient]))
        k = int(np.rint(index[2]))
        if np.abs(index - (0, 0, k)).max() > INDEX_TOLERANCE or not 0 <= k < size[2]:
            raise InputError(f"DICOM file '{name}' lies at voxel {np.round(index, 2).tolist()} of the T2 grid, not on "
                             "one of its slices (was the T2 resampled, e.g. with --allow-irregular?).")
        if slices[k] is not None:
            raise InputError(f"DICOM files '{name}' and '{Path(slices[k].filename).name}' are the same T2 slice {k}.")
        slices[k] = ds
    missing = [k for k, ds in enumerate(slices) if ds is None]
    if missing:
        raise InputError(f"T2 slice(s) {missing} have no DICOM file in '{folder}'.")
    return slices


def _code(code: str, meaning: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    known = {"41216001": codes.SCT.Prostate, "279706003": codes.SCT.PeripheralZoneOfTheProstate,
             "399384005": codes.SCT.TransitionZoneOfTheProstate, LESION_TYPE: codes.SCT.Lesion}
    return known.get(code) or hd.sr.CodedConcept(code, "SCT", meaning)


def dicom_seg(segments: list[Segment], t2_folder: str | os.PathLike, algorithms: dict[str, Algorithm] | None = None,
              corrected=(), series_number: int | None = None):
    """A highdicom Segmentation (BINARY) of `segments`, which must be on the grid of the T2 series in
    `t2_folder` (its files are referenced frame by frame)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ProstateAICore.geometry import same_grid

    grid = segments[0].labelmap
    for segment in segments[1:]:
        if not same_grid(grid, segment.labelmap):
            raise InputError(f"Segment '{segment.name}' is not on the same grid as '{segments[0].name}'.")
    sources = source_slices(t2_folder, grid)
    corrected = set(corrected)
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        if not segment.code:
            raise InputError(f"Segment '{segment.name}' has no SNOMED CT code; a DICOM SEG segment needs one "
                             "(ProstateAI knows Prostate, PZ, TZ and Lesion <n>: name the segment so).")
        algorithm = (algorithms or {}).get(segment.name)
        if segment.name in corrected:
            kind, identification = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
        elif algorithm:
            kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            identification = hd.AlgorithmIdentificationSequence(
                name="ProstateAI", family=codes.cid7162.ArtificialIntelligence,
                version=f"{algorithm.model} {algorithm.version}"[:64],
                parameters={"model": algorithm.model, "model_version": algorithm.version, "ProstateAI": __version__})
        else:
            raise InputError(f"Segment '{segment.name}': the model that made it is unknown; give the report.json of "
                             f"the `segment` run (--report), or --corrected {segment.name} if a person drew or "
                             "corrected it.")
        rgb = [int(round(255 * min(max(float(c), 0.0), 1.0))) for c in segment.colour]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.name[:64],
            segmented_property_category=hd.sr.CodedConcept(*category_of(segment.code)),
            segmented_property_type=_code(*segment.code), algorithm_type=kind,
            anatomic_regions=[hd.sr.CodedConcept(*LESION_REGION)] if segment.code[0] == LESION_TYPE else None,
            algorithm_identification=identification, display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    masks = np.stack([segment.mask() for segment in segments], axis=-1).astype(np.uint8)  # (z, y, x, segment)
    if not masks.any():
        raise InputError("Every segment is empty; there is nothing to put in a DICOM SEG.")
    source_series = sources[0].get("SeriesNumber")
    reviewed = [s.name for s in segments if s.name in corrected]
    with warnings.catch_warnings():  # a source PatientName such as "ProstateX-0000" is copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(sources, masks, descriptions, series_number or 1000 + int(source_series or 0), reviewed)
    seg.SeriesDescription = ("ProstateAI segmentation" + (" (reviewed)" if reviewed else ""))[:64]
    return seg


def _segmentation(sources, masks, descriptions, series_number: int, reviewed: list[str]):
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="ProstateAI", manufacturer_model_name="ProstateAI prostate segmentation",
        software_versions=__version__, device_serial_number="1", content_label="PROSTATE",
        content_description=("Prostate gland and zones" + (f", corrected: {', '.join(reviewed)}" if reviewed else ""))[:64],
    )


def save_dicom(dataset, path: str | os.PathLike) -> Path:
    """Write a DICOM dataset atomically; the file on disk must hold every byte encoded."""
    path = Path(path)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
        if os.path.getsize(tmp) != len(data):
            raise InputError(f"Could not write '{path}': the file on disk is incomplete (disk full?); nothing was written.")
    return path
