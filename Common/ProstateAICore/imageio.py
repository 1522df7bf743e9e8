"""Reading, validating and atomically writing images (SimpleITK).

Every reader returns a `sitk.Image` in LPS physical space; every writer goes through a temporary
file in the destination folder and `os.replace`, so an interrupted or failed run never leaves a
partial output behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import require_same_grid
from .payload import check_payload, promised_bytes

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


def read_dicom_series(folder: str | os.PathLike, series_id: str | None = None,
                      allow_irregular: bool = False) -> tuple[sitk.Image, ImageSource]:
    """Read one DICOM series from a folder, slices sorted by position (GDCM), with its rescale tags.

    Slice positions along the normal must be unique and evenly spaced (a missing slice would
    otherwise shrink every distance and volume); `allow_irregular` resamples them onto a regular
    grid instead and says so in `ImageSource.notes`.
    """
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
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice positions, to check the spacing
    try:
        with _quiet_stderr():  # ITK's own "non uniform sampling" warning: checked and reported below instead
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read the DICOM series in '{folder}': {_first_line(exc)}") from exc
    notes = []
    irregular = _slice_spacing_problem(reader, len(files))
    if irregular:
        if not allow_irregular:
            raise InputError(f"The DICOM series in '{folder}' {irregular[0]}. A slice is missing or repeated: "
                             "export the complete series, or pass --allow-irregular to resample it onto a "
                             "regular grid.")
        image = _regular_grid(image, irregular[1])
        notes.append(f"irregular slice positions ({irregular[0]}); resampled onto a regular "
                     f"{image.GetSpacing()[2]:.4g} mm grid (--allow-irregular)")
    header = sitk.ImageFileReader()
    header.SetFileName(files[0])
    try:
        header.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"Corrupt DICOM file '{files[0]}': {_first_line(exc)}") from exc
    source = ImageSource(path=folder, kind="dicom-series", n_files=len(files), notes=notes)
    _fill_dicom_fields(source, header)
    return image, source


def _slice_geometry(reader: sitk.ImageSeriesReader, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(position of each slice along the normal in mm, ImagePositionPatient per slice, the normal),
    slices in the reader's order; None without patient geometry (e.g. secondary capture)."""
    try:
        cosines = np.array([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")])
        corners = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)])
    except (RuntimeError, ValueError):
        return None
    if cosines.size != 6 or corners.shape != (n, 3):
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    return corners @ normal, corners, normal


def _slice_spacing_problem(reader: sitk.ImageSeriesReader, n: int):
    """(description, slice geometry) when slice positions are not unique and evenly spaced along the normal.

    Tolerance: 1 % of the median spacing, at least 0.01 mm (rounding in exported positions stays far below).
    """
    geometry = _slice_geometry(reader, n) if n >= 2 else None
    if geometry is None:
        return None
    along = np.sort(geometry[0])
    steps = np.diff(along)
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 0.0
    tolerance = max(0.01, 0.01 * step)
    repeated = np.flatnonzero(steps < tolerance)
    if repeated.size:
        return (f"has {repeated.size} repeated slice position(s), e.g. two slices at {along[repeated[0]]:.2f} mm "
                "along the slice normal", geometry)
    uneven = np.flatnonzero(np.abs(steps - step) > tolerance)
    if uneven.size:
        i = int(uneven[0])
        return (f"is not evenly spaced: {steps[i]:.2f} mm between slices {i + 1} and {i + 2} (at "
                f"{along[i]:.2f} and {along[i + 1]:.2f} mm along the normal) where the others are {step:.2f} mm "
                "apart", geometry)
    return None


def _regular_grid(image: sitk.Image, geometry) -> sitk.Image:
    """The slices linearly interpolated onto evenly spaced positions (the median spacing, repeated
    positions averaged), stacked along the image's own slice direction from its first position."""
    along, corners, normal = geometry
    direction = np.array(image.GetDirection()).reshape(3, 3)
    sign = 1.0 if direction[:, 2] @ normal >= 0 else -1.0  # image k axis along +normal or -normal
    positions, index = np.unique(along * sign, return_inverse=True)  # increasing along the k axis
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    stacked = np.stack([array[index == k].mean(axis=0) for k in range(positions.size)])
    step = float(np.median(np.diff(positions)))
    targets = positions[0] + step * np.arange(int(round((positions[-1] - positions[0]) / step)) + 1)
    upper = np.clip(np.searchsorted(positions, targets), 1, positions.size - 1)
    weight = ((targets - positions[upper - 1]) / (positions[upper] - positions[upper - 1]))[:, None, None]
    regular = stacked[upper - 1] * (1 - weight) + stacked[upper] * weight
    out = sitk.GetImageFromArray(regular.astype(np.float32))
    out.SetSpacing((*image.GetSpacing()[:2], step))
    out.SetDirection(image.GetDirection())
    out.SetOrigin(tuple(corners[int(np.argmin(along * sign))]))  # the first slice along the k axis
    return out


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages put the useful sentence last ("... Could not create IO object ...").
    return lines[-1] if lines else type(exc).__name__


def read_image_with_source(path: str | os.PathLike, series_id: str | None = None,
                           allow_irregular: bool = False) -> tuple[sitk.Image, ImageSource]:
    """Read a DICOM series folder, a single DICOM file, or a NIfTI / NRRD / MHA file.

    The file must hold every voxel its header promises (checked before any voxel is allocated).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist.")
    if path.is_dir():
        return read_dicom_series(path, series_id, allow_irregular)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"Could not read '{path}': {_first_line(exc)}") from exc
    check_payload(path, reader)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read '{path}': {_first_line(exc)}") from exc
    source = ImageSource(path=str(path), kind="file")
    if _is_dicom_header(reader):
        source.kind = "dicom-file"
        _fill_dicom_fields(source, reader)
    return image, source


def read_image(path: str | os.PathLike, series_id: str | None = None, allow_irregular: bool = False) -> sitk.Image:
    return read_image_with_source(path, series_id, allow_irregular)[0]


def require_3d(image: sitk.Image, name: str = "image") -> None:
    """Reject anything but a 3D volume (2D, 4D, a single slice) with a clear message."""
    dimension = image.GetDimension()
    if dimension != 3 or min(image.GetSize()) < 2:
        what = f"{dimension}D" if dimension != 3 else "2D"  # a 3D image with a single slice is a 2D image
        raise InputError(
            f"The {name} is {what} (size {tuple(image.GetSize())}); a 3D volume with at least 2 slices is needed."
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix_of(path) or ".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the result the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _write_error(path, exc) from None
        raise


# Failures of the disk, not of the program: reported as one line naming the output.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _write_error(path: Path, exc: OSError) -> InputError:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return InputError(f"Could not write '{path}': {reason}; nothing was written.")


def write_image_file(image: sitk.Image, path: str | os.PathLike, compress: bool = True, shown=None,
                     level: int = -1) -> None:
    """Write `image` to `path` (normally atomic_path's temporary file) and check what reached the disk.

    Why: ITK does not raise when the disk fills up (it prints the error and leaves a truncated
    file). Uncompressed data need their size free first; afterwards the file's header must read
    back with the image's size and its payload must be complete (ProstateAICore.payload).
    """
    path, shown = Path(path), shown or path
    raw = promised_bytes(image) or 0
    uncompressed = not compress or suffix_of(path) == ".nii"  # .nii is never compressed
    if uncompressed and shutil.disk_usage(path.parent).free < raw:
        raise InputError(f"Could not write '{shown}': the disk is full ({raw / 2**20:.0f} MiB needed, "
                         f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free); nothing was written.")
    try:
        with _quiet_stderr():  # ITK prints its own write errors; the one-line InputError says it instead
            sitk.WriteImage(image, str(path), compress, level)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"Could not write '{shown}': {_first_line(exc)}; nothing was written.") from None
    if tuple(reader.GetSize()) != tuple(image.GetSize()):
        raise InputError(f"Could not write '{shown}': the file read back has size {reader.GetSize()}.")
    try:
        check_payload(path, reader, str(shown))
    except InputError:
        free = shutil.disk_usage(path.parent).free / 2**20
        raise InputError(f"Could not write '{shown}': the file on disk is incomplete ({free:.0f} MiB free: "
                         "disk full?); nothing was written.") from None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C-level writes to stderr (file descriptor 2) for the duration of the block."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike):
    """Yield an empty staging folder beside `out`; on success it becomes `out` as a whole.

    All of a command's files appear together or not at all: an existing `out` is replaced only
    after every new file is written (and is left intact when the run fails); on any exception,
    Ctrl-C or SIGTERM included, the staging folder is removed. A run killed outright (SIGKILL) leaves
    `.OUT.partial-<pid>-*`; the next run removes those whose process is gone.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"Output '{out}' exists and is not a folder.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        raise _write_error(out, exc) from None
    try:
        yield staging
        umask = current_umask()
        for path in [staging, *staging.rglob("*")]:  # mkdtemp makes 0700; give outputs normal permissions
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        _replace_folder(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _write_error(out, exc) from None
        raise


def _replace_folder(new: Path, out: Path) -> None:
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old / out.name, out)  # put the previous results back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove `.OUT.partial-<pid>-*` / `.OUT.old-<pid>-*` folders beside `out` whose process has ended."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(\d+)-")
    for sibling in out.parent.iterdir() if out.parent.is_dir() else []:
        match = pattern.match(sibling.name)
        if match and sibling.is_dir() and not _process_alive(int(match.group(2))):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave it
    return True


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write `image` atomically (NIfTI, NRRD, MHA by extension)."""
    path = Path(path)
    if suffix_of(path) not in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.nrrd"):
        raise InputError(f"Unsupported output format '{path.name}'; use .nii.gz, .nii, .nrrd or .mha.")
    with atomic_path(path) as tmp:
        write_image_file(image, tmp, compress, shown=path)
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


def write_all(outputs) -> list[Path]:
    """Write several outputs together: all of them, or none (earlier versions left intact).

    `outputs` holds (what, path) pairs; `what` is a sitk.Image (checked write, compressed), text, or a
    callable that writes to the temporary path it is given (a transform, a PNG...). Every output is
    first written to a temporary file beside its target; they are moved into place only once all
    were written, and all removed if any failed (or on Ctrl-C / SIGTERM).
    """
    with contextlib.ExitStack() as stack:
        for what, path in outputs:
            tmp = stack.enter_context(atomic_path(path))
            if isinstance(what, sitk.Image):
                write_image_file(what, tmp, shown=path)
            elif callable(what):
                what(tmp)
            else:
                Path(tmp).write_text(str(what))
    return [Path(path) for _, path in outputs]


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a small text file (JSON, CSV) atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
