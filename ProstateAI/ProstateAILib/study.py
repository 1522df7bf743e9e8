"""A DICOM study as it comes off a PACS export or a CD -> the axial T2, the ADC map and the highest-b DWI.

`prostateai segment --study DIR` walks DIR (nested or flat, any file names, no extension needed),
reads DICOM headers only, groups the files by SeriesInstanceUID, classifies every series from its
tags and chooses one series per role. The choice and the reason for it are printed and recorded in
report.json, so the radiologist can see which series were segmented and why.

Classification of a series (first rule that applies, on its first file's tags; `classify`):

 1. Modality other than MR, or no image rows (structured report, presentation state) -> other.
 2. ImageType LOCALIZER, or a description token loc/localizer/scout/survey/tripilot/3plane -> localizer.
 3. ImageType FA/EADC/EXP/TENSOR (diffusion maps that are not b-value images) -> other.
 4. ImageType ADC, or description adc/dadc/"apparent diffusion" -> ADC (checked before the b-value:
    Siemens stores the highest b used on the ADC map too).
 5. ImageType TRACEW/CALC_BVAL, or a b-value > 0 (DiffusionBValue (0018,9087); Siemens (0019,100C);
    GE (0043,1039) first value, less its 10^9 offset; Philips (2001,1003)) -> DWI.
 6. Description dce/dyn/dynamic/vibe/twist/perf -> DCE (token match: "DYNDIST" is not "dyn").
 7. Description calc_bval/bval/b<number>/hbv/dwi/diff/trace -> DWI.
 8. Description t1/pd -> other; description t2/t2w/tse/fse/frfse (not t2*) -> T2.
 9. Anything else -> other.
Orientation: the largest component of the slice normal (row x column cosines of
ImageOrientationPatient): x sagittal, y coronal, z axial. Slices: distinct positions along the normal.

Choice (`select_series`):
 - T2: the axial T2 series; among several: ORIGINAL images before DERIVED (reformats), then the most
   slices (coverage), then the finest in-plane pixel spacing, then the highest SeriesNumber (a repeat
   usually replaces a degraded first acquisition). Axial T2s from two studies are refused (ambiguous).
 - HBV: among DWI series, prefer the T2's patient and study, then the T2's FrameOfReferenceUID, then
   axial, then the highest b-value, then the most slices, then the highest SeriesNumber. A series that
   holds several b-values contributes only its files at its highest b.
 - ADC: among ADC series, the same preferences, then the chosen HBV's protocol (same acquisition),
   then the most slices, then the highest SeriesNumber.

The pipeline reads a folder (with its DICOM checks, e.g. the slice-spacing check); `series_folders`
links each chosen series' files into a temporary folder per role and removes them afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ProstateAICore.errors import InputError

ROLES = ("T2", "ADC", "HBV")
NOT_DICOM_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd", ".json", ".txt", ".png",
                      ".jpg", ".pdf", ".xml", ".html", ".htm", ".exe", ".zip", ".inf", ".ini")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# ---------------------------------------------------------------- description patterns

_B = r"(?<![a-z0-9])"  # token start: '_', '-', ' ' and punctuation separate tokens
_E = r"(?![a-z0-9])"
_LOCALIZER = re.compile(rf"{_B}(loc|localizer|localiser|scout|survey|tri-?pilot|3-?plane|aahead\w*){_E}")
_ADC = re.compile(r"(?<![a-z])d?adc(?![a-z])|apparent diffusion")
_DCE = re.compile(rf"{_B}(dce|dyn|dynamic|vibe|twist|perf|perfusion){_E}")
_DWI = re.compile(rf"calc_?bval|bval|hbv|dwi|diff|trace|{_B}b[-_=]?\d{{2,4}}{_E}")
_NOT_T2 = re.compile(rf"{_B}(t1|t1w|pd|pdw){_E}")
_T2 = re.compile(rf"{_B}(t2|t2w|tse|fse|frfse){_E}(?!\*)")
_B_IN_DESCRIPTION = re.compile(rf"{_B}b[-_=]?(\d{{2,4}}){_E}")
_DIFFUSION_MAPS = {"FA", "EADC", "EXP", "TENSOR", "COLFA", "TRACEW_FA"}

# (group, element), Manufacturer's first word, private creator of the block
_VENDOR_B_VALUE = (
    ((0x0019, 0x100C), "SIEMENS", "SIEMENS MR HEADER", "Siemens (0019,100C)"),
    ((0x0043, 0x1039), "GE", "GEMS_PARM_01", "GE (0043,1039)"),
    ((0x2001, 0x1003), "PHILIPS", "PHILIPS IMAGING DD 001", "Philips (2001,1003)"),
)


def classify(description: str, image_type=(), b_value: float | None = None, modality: str = "MR",
             has_rows: bool = True) -> tuple[str, str]:
    """(kind, evidence) of a series: kind is T2, ADC, DWI, DCE, localizer or other (rules: module doc)."""
    text = (description or "").lower()
    types = {str(t).strip().upper() for t in image_type}
    quoted = f"description '{description}'"
    if modality and modality.upper() != "MR":
        return "other", f"modality {modality}"
    if not has_rows:
        return "other", "not an image"
    if "LOCALIZER" in types:
        return "localizer", "ImageType LOCALIZER"
    if _LOCALIZER.search(text):
        return "localizer", f"{quoted} names a localizer"
    if types & _DIFFUSION_MAPS:
        return "other", f"diffusion map ({'/'.join(sorted(types & _DIFFUSION_MAPS))}), not a b-value image"
    if "ADC" in types:
        return "ADC", "ImageType contains ADC"
    if _ADC.search(text):
        return "ADC", f"{quoted} names an ADC map"
    if types & {"TRACEW", "CALC_BVAL"}:
        return "DWI", f"ImageType {'/'.join(sorted(types & {'TRACEW', 'CALC_BVAL'}))}"
    if b_value is not None and b_value > 0:
        return "DWI", f"b-value {b_value:g} s/mm2 in its header"
    if _DCE.search(text):
        return "DCE", f"{quoted} names a dynamic contrast series"
    if _DWI.search(text):
        return "DWI", f"{quoted} names a diffusion series"
    if _NOT_T2.search(text):
        return "other", f"{quoted} names a T1- or PD-weighted series"
    if _T2.search(text):
        return "T2", f"{quoted} names a T2 (t2/t2w/tse/fse)"
    return "other", f"{quoted} matches no T2/ADC/DWI pattern"


# ---------------------------------------------------------------- headers

def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 preamble, or a preamble-less file starting with a group 0002/0008 tag (cheap: 132 bytes);
    DICOMDIR and files named like other formats are not read at all."""
    if path.name.upper() == "DICOMDIR" or path.name.lower().endswith(NOT_DICOM_SUFFIXES):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")


def _text(ds, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a malformed value reads as absent
        return ""
    return "" if value is None else str(value).strip()


def _values(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__len__"):
        return [value]
    return list(value)


def _first_number(value) -> float | None:
    """First numeric value of a tag value: numbers, numeric strings ("800", "1000001400\\8\\0\\0") and raw
    bytes of an element pydicom could not type (ASCII digits, or a little-endian float32/float64)."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        text = raw.decode("latin-1").strip("\x00 ")
        if text and re.fullmatch(r"[0-9+\-.eE\\ ]+", text):
            value = text.split("\\")[0]
        elif len(raw) in (4, 8):
            value = struct.unpack("<f" if len(raw) == 4 else "<d", raw)[0]
        else:
            return None
    items = _values(value)
    if not items:
        return None
    try:
        number = float(str(items[0]).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def b_value_of(ds) -> tuple[float | None, str]:
    """(b-value in s/mm2, where it was found) from the standard tag or the vendor's private tag."""
    element = ds.get((0x0018, 0x9087))
    if element is not None:
        number = _first_number(element.value)
        if number is not None:
            return number, "DiffusionBValue (0018,9087)"
    manufacturer = (_text(ds, "Manufacturer").upper().split() or [""])[0]
    for tag, vendor, creator, name in _VENDOR_B_VALUE:
        element = ds.get(tag)
        if element is None:
            continue
        owner = ds.get((tag[0], 0x0010))
        owner = str(owner.value).strip().upper() if owner is not None else ""
        if manufacturer != vendor and owner != creator:
            continue  # the same private tag means something else for another vendor
        number = _first_number(element.value)
        if number is None:
            continue
        if vendor == "GE" and number >= 1e9:
            number %= 1e5  # GE adds 10^9 to the b-value
        return number, name
    return None, ""


@dataclass
class _FileHeader:
    path: Path
    series_uid: str
    ds: object


def read_header(path: str | os.PathLike):
    """The DICOM header of `path` (pydicom Dataset, no pixel data), or None for anything that is not a
    DICOM image file of a series (non-DICOM files, DICOMDIR, unreadable files)."""
    import pydicom

    path = Path(path)
    if not _looks_like_dicom(path):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True, defer_size=4096)
            meta = getattr(ds, "file_meta", None)
            if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
                return None
            if not _text(ds, "SeriesInstanceUID"):
                return None
    except Exception:  # noqa: BLE001 - anything unreadable is skipped quietly, like any non-DICOM file
        return None
    return ds


# ---------------------------------------------------------------- series

@dataclass(frozen=True)
class Identity:
    """Who and which study a series belongs to (empty strings when the header has no value)."""

    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""


@dataclass
class Series:
    """One DICOM series found in the study folder, with what its tags say."""

    uid: str
    files: list[Path]
    description: str = ""
    series_number: int | None = None
    modality: str = ""
    image_type: tuple[str, ...] = ()
    protocol: str = ""
    frame_of_reference: str = ""
    identity: Identity = field(default_factory=Identity)
    orientation: str | None = None  # axial, sagittal, coronal
    tilt_deg: float | None = None  # angle between the slice normal and its axis
    pixel_spacing: tuple[float, float] | None = None
    n_slices: int = 0
    b_values: dict[Path, float] = field(default_factory=dict)  # per file, where known
    b_source: str = ""
    kind: str = "other"
    evidence: str = ""
    headers: list = field(default_factory=list, repr=False)  # per file (path, pydicom header), sorted by path

    @property
    def b_max(self) -> float | None:
        return max(self.b_values.values()) if self.b_values else None

    @property
    def original(self) -> bool:
        return bool(self.image_type) and self.image_type[0] == "ORIGINAL"

    @property
    def folder(self) -> Path:
        return common_folder(self.files)

    def summary(self) -> str:
        parts = [self.kind]
        if self.orientation:
            parts.append(self.orientation)
        if self.kind == "DWI" and self.b_max is not None:
            parts.append(f"b={self.b_max:g}")
        parts.append(f"{self.n_slices} slices")
        return f"'{self.description}' ({', '.join(parts)})"


def common_folder(files) -> Path:
    folders = {str(Path(f).parent) for f in files}
    return Path(os.path.commonpath(sorted(folders))) if folders else Path(".")


def _orientation(ds) -> tuple[str | None, float | None, list[float] | None]:
    try:
        cosines = [float(v) for v in _values(ds.get("ImageOrientationPatient"))]
    except (TypeError, ValueError):
        return None, None, None
    if len(cosines) != 6:
        return None, None, None
    r, c = cosines[:3], cosines[3:]
    normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    length = math.sqrt(sum(v * v for v in normal))
    if length < 1e-6:
        return None, None, None
    axis = max(range(3), key=lambda i: abs(normal[i]))
    tilt = math.degrees(math.acos(min(1.0, abs(normal[axis]) / length)))
    return ("sagittal", "coronal", "axial")[axis], tilt, normal


def _position_along(ds, normal) -> float | None:
    try:
        position = [float(v) for v in _values(ds.get("ImagePositionPatient"))]
    except (TypeError, ValueError):
        return None
    return sum(p * n for p, n in zip(position, normal)) if len(position) == 3 else None


def _count_slices(headers: list[_FileHeader], normal) -> int:
    """Distinct slice positions along the normal (0.01 mm), or the number of frames without geometry."""
    positions = [_position_along(h.ds, normal) for h in headers] if normal else [None]
    if normal and all(p is not None for p in positions):
        return len({round(p, 2) for p in positions})
    frames = 0
    for h in headers:
        frames += int(_first_number(h.ds.get("NumberOfFrames", 1)) or 1)
    return frames


def _series_from(uid: str, headers: list[_FileHeader]) -> Series:
    headers = sorted(headers, key=lambda h: str(h.path))
    ds = headers[0].ds
    number = _first_number(ds.get("SeriesNumber"))
    image_type = tuple(str(v).strip().upper() for v in _values(ds.get("ImageType")))
    spacing = [_first_number(v) for v in _values(ds.get("PixelSpacing"))]
    orientation, tilt, normal = _orientation(ds)
    series = Series(
        uid=uid, files=[h.path for h in headers], description=_text(ds, "SeriesDescription"),
        series_number=int(number) if number is not None else None, modality=_text(ds, "Modality"),
        image_type=image_type, protocol=_text(ds, "ProtocolName"), frame_of_reference=_text(ds, "FrameOfReferenceUID"),
        identity=Identity(_text(ds, "PatientID"), _text(ds, "StudyInstanceUID"), _text(ds, "StudyDate")),
        orientation=orientation, tilt_deg=tilt,
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) == 2 and None not in spacing else None,
        n_slices=_count_slices(headers, normal),
    )
    for h in headers:
        b, source = b_value_of(h.ds)
        if b is not None:
            series.b_values[h.path] = b
            series.b_source = series.b_source or source
    if not series.b_values:  # e.g. "ep2d_diff_b1400": the description is the only record of the b-value
        found = [float(b) for b in _B_IN_DESCRIPTION.findall(series.description.lower())]
        if found:
            series.b_values = {p: max(found) for p in series.files}
            series.b_source = "description"
    series.kind, series.evidence = classify(series.description, image_type, series.b_max, series.modality,
                                            has_rows=ds.get("Rows") is not None)
    series.headers = headers  # to count the slices of a subset (the highest-b files)
    return series


def find_series(root: str | os.PathLike) -> list[Series]:
    """Every DICOM series under `root` (recursively; hidden files and folders skipped), classified."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"The study folder '{root}' does not exist.")
    if not root.is_dir():
        raise InputError(f"--study needs a folder (a DICOM study as exported or copied from a CD); "
                         f"'{root}' is a file: give a single series with --t2 instead.")
    groups: dict[str, list[_FileHeader]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            ds = read_header(path)
            if ds is not None:
                uid = _text(ds, "SeriesInstanceUID")
                groups.setdefault(uid, []).append(_FileHeader(path, uid, ds))
    if not groups:
        raise InputError(f"No DICOM series found under '{root}'.")
    series = [_series_from(uid, headers) for uid, headers in groups.items()]
    return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.description, s.uid))


# ---------------------------------------------------------------- choice

@dataclass
class Chosen:
    """The series chosen for a role, the files read for it and why it was chosen."""

    role: str
    series: Series
    files: list[Path]
    reason: str
    b_value: float | None = None

    @property
    def uid(self) -> str:
        return self.series.uid

    @property
    def description(self) -> str:
        return self.series.description

    @property
    def folder(self) -> Path:
        return common_folder(self.files)

    @property
    def shown(self) -> str:
        """How this series is named in messages and in the report's inputs."""
        number = f" {self.series.series_number}" if self.series.series_number is not None else ""
        return f"{self.folder} [series{number}: {self.description or self.uid}]"

    def line(self) -> str:
        return f"{self.role:<3}  '{self.description}'  {self.uid}  {self.reason}"

    def as_dict(self) -> dict:
        entry = {"series_description": self.description, "series_instance_uid": self.uid,
                 "series_number": self.series.series_number, "folder": str(self.folder), "files": len(self.files),
                 "patient_id": self.series.identity.patient_id,
                 "study_instance_uid": self.series.identity.study_uid, "reason": self.reason}
        if self.b_value is not None:
            entry["b_value"] = self.b_value
        return entry


@dataclass
class StudySelection:
    """What `select_series` found under `root` and chose: `t2` always, `adc`/`hbv` when present."""

    root: Path
    series: list[Series]
    t2: Chosen
    adc: Chosen | None = None
    hbv: Chosen | None = None

    def by_role(self) -> dict[str, Chosen | None]:
        return {"T2": self.t2, "ADC": self.adc, "HBV": self.hbv}

    def identities(self) -> dict[str, Identity | None]:
        return {role: c.series.identity if c else None for role, c in self.by_role().items()}

    def lines(self) -> list[str]:
        return [c.line() if c else f"{role:<3}  none: no {'ADC map' if role == 'ADC' else 'DWI series'} in the study"
                for role, c in self.by_role().items()]

    def as_report(self) -> dict:
        return {role: c.as_dict() if c else None for role, c in self.by_role().items()}

    def series_report(self) -> list[dict]:
        return [{"series_description": s.description, "series_instance_uid": s.uid, "series_number": s.series_number,
                 "kind": s.kind, "orientation": s.orientation, "slices": s.n_slices, "b_value": s.b_max,
                 "evidence": s.evidence, "files": len(s.files)} for s in self.series]


def _spacing_text(series: Series) -> str:
    return f"{series.pixel_spacing[0]:.3g} x {series.pixel_spacing[1]:.3g} mm" if series.pixel_spacing else "spacing ?"


def _geometry_text(series: Series) -> str:
    tilt = f", tilted {series.tilt_deg:.0f} deg" if series.tilt_deg and series.tilt_deg >= 1 else ""
    return f"{series.orientation or 'unknown orientation'}{tilt}, {series.n_slices} slices, {_spacing_text(series)}"


def _choose_t2(root: Path, series: list[Series]) -> Chosen:
    candidates = [s for s in series if s.kind == "T2" and s.orientation == "axial"]
    if not candidates:
        found = "; ".join(s.summary() for s in series[:8]) + (" ..." if len(series) > 8 else "")
        raise InputError(f"No axial T2 series under '{root}' (found {len(series)} series: {found}). "
                         "Give the T2 with --t2 if it is there under another name.")
    studies: dict[Identity, list[Series]] = {}
    for s in candidates:
        studies.setdefault(s.identity, []).append(s)
    if len(studies) > 1:
        listed = "; ".join(f"patient '{i.patient_id}' study {i.study_date or '?'} under "
                           f"'{common_folder([f for s in group for f in s.files])}'" for i, group in studies.items())
        raise InputError(f"'{root}' holds axial T2 series from {len(studies)} studies ({listed}); "
                         "give --study one study's folder.")
    def rank(s: Series):
        area = math.prod(s.pixel_spacing) if s.pixel_spacing else math.inf
        return s.original, s.n_slices, -area, s.series_number or 0

    candidates.sort(key=rank, reverse=True)
    best = candidates[0]
    reason = f"axial T2: {best.evidence}; {_geometry_text(best)}"
    if len(candidates) == 1:
        reason += "; the only axial T2 series"
    else:
        others = ", ".join(f"'{s.description}' ({s.n_slices} slices, {_spacing_text(s)}"
                           f"{'' if s.original else ', derived'})" for s in candidates[1:4])
        reason += (f"; chosen among {len(candidates)} axial T2 series (original images first, then most slices, then "
                   f"finest in-plane spacing, then latest series) over {others}")
    return Chosen("T2", best, list(best.files), reason)


def _files_at_highest_b(series: Series) -> tuple[list[Path], float | None, str]:
    b = series.b_max
    if b is None or len(set(series.b_values.values())) < 2:
        return list(series.files), b, ""
    files = [f for f in series.files if series.b_values.get(f) == b]
    others = sorted({v for v in series.b_values.values() if v != b})
    return files, b, f"; only its {len(files)} files at b={b:g} (it also holds b={', '.join(f'{v:g}' for v in others)})"


def _choose_diffusion(role: str, series: list[Series], t2: Series, hbv: Chosen | None = None) -> Chosen | None:
    kind = "ADC" if role == "ADC" else "DWI"
    candidates = [s for s in series if s.kind == kind]
    if not candidates:
        return None
    subsets = {s.uid: _files_at_highest_b(s) if role == "HBV" else (list(s.files), s.b_max, "") for s in candidates}
    slices = {s.uid: s.n_slices for s in candidates}
    for s in candidates:  # a multi-b series: count the slices of the files actually read
        files = subsets[s.uid][0]
        if len(files) != len(s.files):
            _, _, normal = _orientation(s.headers[0].ds)
            chosen = set(files)
            slices[s.uid] = _count_slices([h for h in s.headers if h.path in chosen], normal)

    def facts(s: Series) -> dict:
        return {"study": s.identity == t2.identity,
                "frame": bool(s.frame_of_reference) and s.frame_of_reference == t2.frame_of_reference,
                "axial": s.orientation == "axial"}

    def rank(s: Series):
        f = facts(s)
        b = subsets[s.uid][1]
        specific = (b if b is not None else -1.0,) if role == "HBV" else (
            hbv is not None and bool(s.protocol) and s.protocol == hbv.series.protocol,)
        return (f["study"], f["frame"], f["axial"], *specific, slices[s.uid], s.series_number or 0)

    candidates.sort(key=rank, reverse=True)
    best = candidates[0]
    files, b, subset_note = subsets[best.uid]
    f = facts(best)
    what = "highest-b DWI" if role == "HBV" else "ADC map"
    reason = f"{what}: {best.evidence}"
    if b is not None and role == "HBV":
        reason += f"; b={b:g} s/mm2 ({best.b_source})"
    reason += f"; {_geometry_text(best)}{subset_note}"
    reason += "; same study as the T2" if f["study"] else "; from ANOTHER study or patient than the T2"
    reason += ("; same frame of reference as the T2" if f["frame"] else
               "; another frame of reference than the T2 (none shares it; the overlap with the T2 is checked)")
    if role == "ADC" and hbv is not None and best.protocol and best.protocol == hbv.series.protocol:
        reason += "; same protocol as the HBV"
    if len(candidates) == 1:
        reason += f"; the only {kind} series"
    else:
        rule = ("the T2's study, then its frame of reference, then axial, then " +
                ("highest b-value" if role == "HBV" else "the HBV's protocol") +
                ", then most slices, then latest series")
        others = ", ".join(s.summary() for s in candidates[1:4])
        reason += f"; chosen among {len(candidates)} {kind} series ({rule}) over {others}"
    return Chosen(role, best, files, reason, b if role == "HBV" else None)


def select_series(root: str | os.PathLike, series: list[Series] | None = None) -> StudySelection:
    """Walk `root`, classify its series and choose the axial T2, the ADC and the highest-b DWI.

    Raises InputError when there is no axial T2 (or axial T2s from several studies). Patient and
    study agreement of the choice is checked by `check_same_patient`.
    """
    root = Path(root)
    series = find_series(root) if series is None else series
    t2 = _choose_t2(root, series)
    hbv = _choose_diffusion("HBV", series, t2.series)
    adc = _choose_diffusion("ADC", series, t2.series, hbv)
    return StudySelection(root, series, t2, adc, hbv)


# ---------------------------------------------------------------- same patient, same study

def identity_of_path(path) -> Identity | None:
    """Patient and study of an explicit input (a DICOM folder: its first DICOM file; a DICOM file), read
    from one header; None for NIfTI/NRRD/MHA (they carry no patient) or when nothing readable is there."""
    import SimpleITK as sitk

    if path is None or str(path) == "":
        return None
    path = Path(path)
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.is_file())
        except OSError:
            return None
    elif path.is_file():
        files = [path]
    else:
        return None
    tried = 0
    for file in files:
        if not _looks_like_dicom(file):
            continue
        tried += 1
        if tried > 20:
            break
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(file))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        tag = lambda key: reader.GetMetaData(key).strip(" \x00") if reader.HasMetaDataKey(key) else ""  # noqa: E731
        return Identity(tag("0010|0020"), tag("0020|000d"), tag("0008|0020"))
    return None


def _grouped(identities: dict[str, Identity], label) -> str:
    groups: dict[str, list[str]] = {}
    for role, identity in identities.items():
        groups.setdefault(label(identity), []).append(role)
    return ", ".join(f"{' and '.join(roles)} from {value}" for value, roles in groups.items())


def check_same_patient(identities: dict[str, Identity | None], allow_mismatch: bool = False) -> list[str]:
    """Refuse (InputError) inputs from different patients (PatientID) or studies (StudyInstanceUID);
    with `allow_mismatch` return the disagreement as notes instead. Inputs without a patient (NIfTI)
    or with an empty tag are not compared."""
    known = {role: i for role, i in identities.items() if i is not None}
    problems = []
    with_patient = {role: i for role, i in known.items() if i.patient_id}
    if len({i.patient_id for i in with_patient.values()}) > 1:
        problems.append("different patients: " + _grouped(with_patient, lambda i: f"patient '{i.patient_id}'"))
    else:
        with_study = {role: i for role, i in known.items() if i.study_uid}
        if len({i.study_uid for i in with_study.values()}) > 1:
            problems.append("different studies: " + _grouped(
                with_study, lambda i: f"study {i.study_date or '?'} ({i.study_uid})"))
    if problems and not allow_mismatch:
        raise InputError(f"The inputs are from {problems[0]}. Check that these series belong together, "
                         "or pass --allow-mismatch to segment them anyway.")
    return [f"Inputs from {p} (accepted with --allow-mismatch)." for p in problems]


# ---------------------------------------------------------------- temporary series folders

@contextlib.contextmanager
def series_folders(selection: StudySelection):
    """{role: folder} to read each chosen series from, with the folder reader's checks: the series' own
    folder when it holds exactly the chosen files (one series per folder, the usual export layout),
    else a temporary folder holding links to (or, where links are not allowed, copies of) exactly the
    chosen files, removed on exit."""
    in_folder: dict[Path, set[Path]] = {}
    for series in selection.series:
        for file in series.files:
            in_folder.setdefault(file.parent, set()).add(file)
    root = None
    try:
        folders = {}
        for role, chosen in selection.by_role().items():
            if chosen is None:
                continue
            parents = {f.parent for f in chosen.files}
            if len(parents) == 1 and in_folder.get(next(iter(parents))) == set(chosen.files):
                folders[role] = next(iter(parents))
                continue
            root = root or Path(tempfile.mkdtemp(prefix="prostateai-study-"))
            folder = root / role
            folder.mkdir()
            for i, source in enumerate(chosen.files):
                target = folder / f"{i:05d}"
                try:
                    os.symlink(os.path.abspath(source), target)
                except (OSError, NotImplementedError):  # e.g. Windows without the symlink privilege
                    shutil.copyfile(source, target)
            folders[role] = folder
        yield folders
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
