"""Reading, validating and atomically writing images (SimpleITK).

Every reader returns a `sitk.Image` in LPS physical space; every writer goes through a temporary
file in the destination folder and `os.replace`, so an interrupted or failed run never leaves a
partial output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import require_same_grid

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".seg.nrrd")


@dataclass
class ImageSource:
    """What a reader found out about the file(s) it read."""

    path: str
    kind: str  # "dicom-series", "dicom-file" or "file"
    modality: str | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    rescale_type: str | None = None
    series_description: str | None = None
    pixel_padding_value: float | None = None  # DICOM PixelPaddingValue, as stored (before rescale)
    n_files: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def rescaled(self) -> bool:
        """True when stored values were converted with RescaleSlope/Intercept on read."""
        return self.rescale_slope is not None and (
            self.rescale_slope != 1.0 or (self.rescale_intercept or 0.0) != 0.0
        )


def suffix_of(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def _dicom_tag(reader, tag: str):
    if not reader.HasMetaDataKey(tag):
        return None
    return reader.GetMetaData(tag).strip() or None


def _float_or_none(value):
    try:
        # Multi-valued DICOM strings ("40\\300") keep their first value.
        return float(value.split("\\")[0]) if value not in (None, "") else None
    except ValueError:
        return None


def _is_dicom_header(reader: sitk.ImageFileReader) -> bool:
    # GDCM exposes DICOM tags as "gggg|eeee" keys; other formats have none. (GetImageIO() is empty
    # when the IO was picked automatically, so it cannot tell.)
    return reader.HasMetaDataKey("0008|0016") or reader.HasMetaDataKey("0008|0060")


def _fill_dicom_fields(source: "ImageSource", header: sitk.ImageFileReader) -> None:
    source.modality = _dicom_tag(header, "0008|0060")
    source.rescale_slope = _float_or_none(_dicom_tag(header, "0028|1053"))
    source.rescale_intercept = _float_or_none(_dicom_tag(header, "0028|1052"))
    source.rescale_type = _dicom_tag(header, "0028|1054")
    source.series_description = _dicom_tag(header, "0008|103e")
    source.pixel_padding_value = _float_or_none(_dicom_tag(header, "0028|0120"))


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _require_no_skipped_files(folder: str, n_read: int) -> None:
    """Raise when GDCM silently left DICOM files of the folder out of every series.

    Why: GDCM skips files it cannot parse, so a truncated slice would just vanish from the volume.
    Counting files with the DICOM preamble is cheap; the series are listed only when counts differ.
    """
    dicom_files = [
        p for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name.upper() != "DICOMDIR" and _has_dicom_preamble(p)
    ]
    if len(dicom_files) <= n_read:
        return
    listed = {
        os.path.realpath(f)
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid)
    }
    skipped = [p.name for p in dicom_files if os.path.realpath(p) not in listed]
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise InputError(
            f"{len(skipped)} DICOM file(s) in '{folder}' could not be read as part of any series "
            f"(corrupt or truncated?): {shown}. Remove or replace them; the volume would have missing slices."
        )


def read_dicom_series(folder: str | os.PathLike, series_id: str | None = None) -> tuple[sitk.Image, ImageSource]:
    """Read one DICOM series from a folder, slices sorted by position (GDCM), with its rescale tags."""
    folder = str(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series_ids:
        raise InputError(f"No DICOM series found in folder '{folder}'.")
    if series_id is None:
        if len(series_ids) > 1:
            raise InputError(
                f"Folder '{folder}' holds {len(series_ids)} DICOM series; choose one of: {', '.join(series_ids)}."
            )
        series_id = series_ids[0]
    elif series_id not in series_ids:
        raise InputError(f"DICOM series '{series_id}' is missing from '{folder}'.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_id)
    _require_no_skipped_files(folder, len(files))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read the DICOM series in '{folder}': {_first_line(exc)}") from exc
    header = sitk.ImageFileReader()
    header.SetFileName(files[0])
    try:
        header.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"Corrupt DICOM file '{files[0]}': {_first_line(exc)}") from exc
    source = ImageSource(path=folder, kind="dicom-series", n_files=len(files))
    _fill_dicom_fields(source, header)
    return image, source


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages put the useful sentence last ("... Could not create IO object ...").
    return lines[-1] if lines else type(exc).__name__


def read_image_with_source(path: str | os.PathLike, series_id: str | None = None) -> tuple[sitk.Image, ImageSource]:
    """Read a DICOM series folder, a single DICOM file, or a NIfTI / NRRD / MHA file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist.")
    if path.is_dir():
        return read_dicom_series(path, series_id)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read '{path}': {_first_line(exc)}") from exc
    source = ImageSource(path=str(path), kind="file")
    if _is_dicom_header(reader):
        source.kind = "dicom-file"
        _fill_dicom_fields(source, reader)
    return image, source


def read_image(path: str | os.PathLike, series_id: str | None = None) -> sitk.Image:
    return read_image_with_source(path, series_id)[0]


def require_3d(image: sitk.Image, name: str = "image") -> None:
    """Reject 2D images (and 3D ones that are a single slice) with a clear message."""
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(
            f"The {name} is 2D (size {tuple(image.GetSize())}); a 3D volume with at least 2 slices is needed."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed.")


def require_finite(array: np.ndarray, name: str = "image") -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"The {name} contains {n_bad} NaN or infinite voxels; fix or mask them first.")


def require_not_constant(array: np.ndarray, name: str = "image") -> None:
    if array.size == 0:
        raise InputError(f"The {name} is empty.")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputError(f"The {name} is constant (every voxel is {lo}); there is nothing to process.")


def validate_volume(image: sitk.Image, name: str = "image") -> np.ndarray:
    """Check a scalar 3D volume is usable and return a read-only view of its voxels (z, y, x)."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"The {name} must be a SimpleITK image, not {type(image).__name__}.")
    require_3d(image, name)
    array = sitk.GetArrayViewFromImage(image)
    require_finite(array, name)
    require_not_constant(array, name)
    return array


def validate_mask(image: sitk.Image, mask: sitk.Image | None, name: str = "mask") -> np.ndarray | None:
    """The mask as a boolean array on the image grid (non-zero = inside); None stays None.

    Any label value counts as inside, so a zone map (1 = PZ, 2 = TZ) works as a gland mask.
    """
    if mask is None:
        return None
    if not isinstance(mask, sitk.Image):
        raise InputError(f"The {name} must be a SimpleITK image, not {type(mask).__name__}.")
    require_3d(mask, name)
    aligned = require_same_grid(image, mask, ("image", name))
    inside = sitk.GetArrayViewFromImage(aligned) != 0
    if not inside.any():
        raise InputError(f"The {name} is empty (no non-zero voxel); it selects nothing.")
    return inside


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix_of(path) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the result the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write `image` atomically (NIfTI, NRRD, MHA by extension)."""
    path = Path(path)
    if suffix_of(path) not in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.nrrd"):
        raise InputError(f"Unsupported output format '{path.name}'; use .nii.gz, .nii, .nrrd or .mha.")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path


MAX_JSON_BYTES = 64 << 20  # models, statistics, catalogs and dataset lists are far smaller


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """Parse a small JSON file (never code: JSON only); any problem is one InputError naming the file.

    Refused: a missing path, a folder, a file over MAX_JSON_BYTES, text that is not JSON, and nesting
    deep enough to exhaust Python's recursion limit.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}' does not exist.")
    if not path.is_file():
        raise InputError(f"{what} '{path}' is a folder, not a file.")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(f"{what} '{path}' is {path.stat().st_size / 2**20:.0f} MiB; that is not a {what}.")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} '{path}' is not valid JSON ({exc}).") from None
    except RecursionError:
        raise InputError(f"{what} '{path}' is nested too deeply to be a {what}.") from None
    except OSError as exc:
        raise InputError(f"Could not read {what} '{path}': {exc.strerror or exc}.") from None


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a small text file (JSON, CSV) atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
