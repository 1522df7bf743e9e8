"""Slicer segmentation files (`.seg.nrrd`) without Slicer: write and read.

The format is a NRRD label volume plus `SegmentN_*` key:=value fields (name, label value, layer,
colour, extent, terminology tags) that Slicer's segmentation storage node reads into named
segments. Overlapping segments (Prostate contains PZ and TZ) go into separate layers: a 4D NRRD
whose first, fastest axis (kind "list") is the layer. Geometry is written in LPS, exactly the
SimpleITK image's origin, spacing and direction.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import ijk_to_ras_matrix, same_grid
from ProstateAICore.imageio import atomic_path
from ProstateAICore.terminology import terminology_entry


@dataclass
class Segment:
    name: str
    labelmap: sitk.Image  # integer label image; this segment is where it equals `value`
    value: int = 1
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)
    code: tuple[str, str] | None = None  # SNOMED CT (code, meaning) for the terminology tag

    def mask(self) -> np.ndarray:
        return sitk.GetArrayViewFromImage(self.labelmap) == self.value


def _layers(segments: list[Segment]) -> tuple[list[np.ndarray], list[int]]:
    """Pack segments into as few layers as possible.

    A segment joins the first layer that it does not overlap and where no other segment has its label
    value: a layer's voxel value must identify one segment only (an empty segment, or a disjoint one
    with the same value, would otherwise read back as the other segment's voxels).
    """
    layers: list[np.ndarray] = []
    values: list[set[int]] = []
    assignment = []
    for segment in segments:
        mask = segment.mask()
        value = int(segment.value)
        for index, layer in enumerate(layers):
            if value not in values[index] and not np.any(layer[mask]):
                break
        else:
            layers.append(np.zeros(mask.shape, np.uint8))
            values.append(set())
            index = len(layers) - 1
        layers[index][mask] = value
        values[index].add(value)
        assignment.append(index)
    return layers, assignment


def _extent(mask: np.ndarray) -> str:
    if not mask.any():
        return "0 -1 0 -1 0 -1"  # Slicer's empty extent
    idx = np.argwhere(mask)  # (z, y, x)
    lo, hi = idx.min(0)[::-1], idx.max(0)[::-1]
    return " ".join(f"{a} {b}" for a, b in zip(lo, hi))


def _vec(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def _reference_geometry(image: sitk.Image) -> str:
    """Slicer's "Reference image geometry" conversion parameter: IJK->RAS matrix (row-major) and extent.

    With it, Slicer keeps the segmentation on the image's grid when segments are edited or converted.
    """
    matrix = ijk_to_ras_matrix(image)
    extent = [v for size in image.GetSize() for v in (0, size - 1)]
    value = "".join(f"{float(v)!r};" for v in matrix.ravel()) + "".join(f"{v};" for v in extent)
    return (f"Reference image geometry|{value}|Image geometry description string determining the geometry of the "
            "labelmap that is created in course of conversion.&")


def write_seg_nrrd(segments: list[Segment], path: str | os.PathLike) -> Path:
    """Write named segments (all on one grid) as a Slicer .seg.nrrd, atomically."""
    if not segments:
        raise InputError("No segments to write.")
    reference = segments[0].labelmap
    for segment in segments[1:]:
        if not same_grid(reference, segment.labelmap):
            raise InputError(f"Segment '{segment.name}' is not on the same grid as '{segments[0].name}'.")
    for segment in segments:
        if not 0 < int(segment.value) < 256:
            raise InputError(f"Segment '{segment.name}': label value {segment.value} must be in 1..255.")
    layers, assignment = _layers(segments)
    spacing = np.array(reference.GetSpacing())
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    axes = [_vec(direction[:, i] * spacing[i]) for i in range(3)]
    size = list(reference.GetSize())
    multi = len(layers) > 1
    header = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        "type: unsigned char",
        f"dimension: {4 if multi else 3}",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(s) for s in ([len(layers)] if multi else []) + size),
        "space directions: " + " ".join((["none"] if multi else []) + axes),
        "kinds: " + " ".join((["list"] if multi else []) + ["domain"] * 3),
        "encoding: gzip",
        "space origin: " + _vec(reference.GetOrigin()),
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segmentation_ContainedRepresentationNames:=Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset:=0 0 0",
        "Segmentation_ConversionParameters:=" + _reference_geometry(reference),
    ]
    for i, (segment, layer) in enumerate(zip(segments, assignment)):
        tags = ""
        if segment.code:
            tags = "TerminologyEntry:" + terminology_entry(*segment.code) + "|"
        header += [
            f"Segment{i}_Color:=" + " ".join(f"{c:.6g}" for c in segment.colour),
            f"Segment{i}_ColorAutoGenerated:=0",
            f"Segment{i}_Extent:=" + _extent(segment.mask()),
            f"Segment{i}_ID:=Segment_{segment.name}",
            f"Segment{i}_LabelValue:={int(segment.value)}",
            f"Segment{i}_Layer:={layer}",
            f"Segment{i}_Name:={segment.name}",
            f"Segment{i}_NameAutoGenerated:=0",
            f"Segment{i}_Tags:={tags}",
        ]
    # numpy (z, y, x[, layer]) C-order = NRRD fastest-first (layer, x, y, z)
    data = np.stack(layers, axis=-1) if multi else layers[0]
    payload = gzip.compress(np.ascontiguousarray(data, np.uint8).tobytes(), compresslevel=6)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(("\n".join(header) + "\n\n").encode("ascii"))
            handle.write(payload)
    return path


def read_seg_nrrd(path: str | os.PathLike, with_codes: bool = False):
    """Segments of a .seg.nrrd (as written by Slicer or `write_seg_nrrd`) -> {name: uint8 mask image}
    (and, with `with_codes`, {name: SNOMED CT type code or None} from the terminology tags)."""
    path = Path(path)
    raw = path.read_bytes()
    split = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or split < 0:
        raise InputError(f"'{path}' is not a NRRD file.")
    fields: dict[str, str] = {}
    for line in raw[:split].decode("latin-1").splitlines()[1:]:
        if line.startswith("#"):
            continue
        match = re.match(r"([^:]+):=(.*)", line) or re.match(r"([^:]+): (.*)", line)
        if match:
            fields[match.group(1).strip()] = match.group(2).strip()
    if fields.get("encoding") not in ("gzip", "gz", "raw") or fields.get("type") not in ("unsigned char", "uchar", "uint8"):
        raise InputError(f"'{path}': only uint8 raw/gzip seg.nrrd files are supported.")
    sizes = [int(s) for s in fields["sizes"].split()]
    payload = raw[split + 2:]
    data = np.frombuffer(gzip.decompress(payload) if fields["encoding"] != "raw" else payload, np.uint8)
    data = data.reshape(sizes[::-1])  # (z, y, x[, layer])
    if data.ndim == 3:
        data = data[..., None]
    axes = [a for a in re.findall(r"\(([^)]*)\)", fields["space directions"])]
    vectors = np.array([[float(v) for v in a.split(",")] for a in axes])  # rows = axis vectors
    spacing = np.linalg.norm(vectors, axis=1)
    direction = (vectors / spacing[:, None]).T
    origin = [float(v) for v in re.findall(r"\(([^)]*)\)", fields["space origin"])[0].split(",")]
    if fields.get("space", "left-posterior-superior") not in ("left-posterior-superior", "LPS"):
        flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
        direction, origin = flip @ direction, list(flip @ np.array(origin))
    out, codes = {}, {}
    i = 0
    while f"Segment{i}_Name" in fields:
        layer = int(fields.get(f"Segment{i}_Layer", 0))
        value = int(fields.get(f"Segment{i}_LabelValue", 1))
        image = sitk.GetImageFromArray((data[..., layer] == value).astype(np.uint8))
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin(origin)
        image.SetDirection([float(v) for v in direction.ravel()])
        out[fields[f"Segment{i}_Name"]] = image
        if with_codes:
            # TerminologyEntry "category~type~...": the type is the second coded concept
            sct = re.findall(r"SCT\^(\d+)\^", fields.get(f"Segment{i}_Tags", ""))
            codes[fields[f"Segment{i}_Name"]] = sct[1] if len(sct) > 1 else None
        i += 1
    return (out, codes) if with_codes else out


def segment_label_map(path: str | os.PathLike, segment_labels: dict[str, int], reference: sitk.Image | None = None,
                      known_codes: dict[str, str] | None = None) -> sitk.Image:
    """A label map from a .seg.nrrd (ours or Slicer's, e.g. a radiologist's correction): each name in
    `segment_labels` paints its value, found by segment name (any case) or, when renamed, by its
    SNOMED CT code (`known_codes`: name -> code). With `reference`, the map is put on its grid
    (Slicer may save a segmentation cropped to its extent; nearest neighbour keeps the voxels).
    A "Prostate" missing from the file is the union of its zone segments, when there are any.
    """
    segments, codes = read_seg_nrrd(path, with_codes=True)
    by_name = {name.lower(): name for name in segments}
    by_code = {code: name for name, code in codes.items() if code}
    label = None
    for wanted, value in segment_labels.items():
        name = by_name.get(wanted.lower()) or by_code.get((known_codes or {}).get(wanted, ""))
        if name is not None:
            mask = segments[name]
        elif wanted.lower() == "prostate" and {"pz", "tz"} & set(by_name):
            zones = [segments[by_name[z]] for z in ("pz", "tz") if z in by_name]
            mask = zones[0] if len(zones) == 1 else sitk.Or(zones[0], zones[1])
        else:
            raise InputError(f"'{path}' has no '{wanted}' segment (it has {', '.join(segments) or 'none'}).")
        if label is None:
            label = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
            label.CopyInformation(mask)
        label = sitk.Mask(label, sitk.Not(sitk.Cast(mask > 0, sitk.sitkUInt8))) + sitk.Cast(mask > 0, sitk.sitkUInt8) * int(value)
    if label is None:
        raise InputError("No segment to label was asked for.")
    if reference is not None and not same_grid(reference, label):
        label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return label
