"""Does an image file hold all the voxels its header promises? Checked before reading and after writing.

Why: ITK reads a NIfTI truncated to 60 % with the missing voxels zero-filled, allocates whatever a
header promises (2000 x 2000 x 600 voxels for a 4 KB file), and writes onto a full disk leaving a
truncated file while only printing the error. Here the header's promise (size x components x bytes)
is compared with what the file holds:
- raw data (.nii, raw .nrrd/.mha/.mhd): the bytes after the header;
- gzip data (.nii.gz, gzip .nrrd): the gzip trailer's uncompressed size (ISIZE, exact modulo 2^32);
  when it disagrees (a truncated stream, or a legitimately multi-member file), the stream is
  decompressed and counted, stopping as soon as the promise is met;
- zlib data (.mha with CompressedData): the header's CompressedDataSize against the bytes present.
Formats not listed (DICOM: GDCM checks its own files) are not checked here.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

_COMPONENT_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
    sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1, sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2,
    sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4, sitk.sitkVectorUInt64: 8, sitk.sitkVectorInt64: 8,
    sitk.sitkVectorFloat32: 4, sitk.sitkVectorFloat64: 8,
}
_CHUNK = 1 << 20


def promised_bytes(source) -> int | None:
    """Bytes of voxel data of an image, or that a reader's header describes (None for pixel types not
    in the table)."""
    per_component = _COMPONENT_BYTES.get(source.GetPixelID())
    if per_component is None:
        return None
    components = (source.GetNumberOfComponentsPerPixel() if isinstance(source, sitk.Image)
                  else source.GetNumberOfComponents())
    return int(np.prod(source.GetSize(), dtype=np.int64)) * components * per_component


def check_payload(path: str | os.PathLike, reader: sitk.ImageFileReader, shown: str | None = None) -> None:
    """Raise InputError when the file at `path` holds fewer voxel bytes than `reader`'s header says.

    `reader` has run ReadImageInformation on `path`; `shown` is the name used in messages.
    """
    path = Path(path)
    shown = shown or str(path)
    expected = promised_bytes(reader)
    if expected is None:
        return
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, expected, shown)
    elif name.endswith(".nrrd"):
        _check_nrrd(path, expected, shown)
    elif name.endswith((".mha", ".mhd")):
        _check_meta(path, expected, shown)


def _short(what: str, shown: str, expected: int, found: int) -> InputError:
    return InputError(
        f"'{shown}' is incomplete: its header promises {expected:,} bytes of {what} but the file holds "
        f"{found:,} (truncated copy or full disk?). Use a complete file."
    )


# ------------------------------------------------------------------------------------------ NIfTI

def _nifti_data_offset(header: bytes, shown: str) -> int:
    """vox_offset of a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header, either byte order."""
    for order in "<>":
        if len(header) >= 4 and struct.unpack(order + "i", header[:4])[0] == 348 and len(header) >= 112:
            return int(struct.unpack(order + "f", header[108:112])[0])
        if len(header) >= 176 and struct.unpack(order + "i", header[:4])[0] == 540:
            return int(struct.unpack(order + "q", header[168:176])[0])
    raise InputError(f"'{shown}' does not start with a NIfTI header.")


def _check_nifti(path: Path, expected: int, shown: str) -> None:
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as handle:
                offset = _nifti_data_offset(handle.read(540), shown)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"'{shown}' is not a readable gzip file ({exc}).") from None
        _check_gzip(path, 0, offset + expected, shown, "data")
    else:
        with open(path, "rb") as handle:
            offset = _nifti_data_offset(handle.read(540), shown)
        found = path.stat().st_size - offset
        if found < expected:
            raise _short("voxel data", shown, expected, max(found, 0))


# ------------------------------------------------------------------------------------------- gzip

def _check_gzip(path: Path, start: int, expected: int, shown: str, what: str) -> None:
    """The gzip stream from byte `start` must decompress to at least `expected` bytes."""
    size = path.stat().st_size
    if size - start >= 18:  # header (10) + trailer (8)
        with open(path, "rb") as handle:
            handle.seek(size - 4)
            isize = struct.unpack("<I", handle.read(4))[0]
        if isize == expected % (1 << 32):
            return
    found = _gzip_length(path, start, expected, shown)
    if found < expected:
        raise _short(f"{what} (uncompressed)", shown, expected, found)


def _gzip_length(path: Path, start: int, limit: int, shown: str) -> int:
    """Decompressed length of the gzip member(s) from `start`, counting no further than `limit`."""
    total = 0
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        handle.seek(start)
        try:
            while total < limit:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                while chunk and total < limit:
                    total += len(decompressor.decompress(chunk, _CHUNK))
                    chunk = decompressor.unconsumed_tail
                    if decompressor.eof:  # another member may follow (e.g. pigz, cat a.gz b.gz)
                        rest = decompressor.unused_data + chunk
                        decompressor = zlib.decompressobj(wbits=31)
                        chunk = rest
        except zlib.error as exc:
            raise InputError(f"'{shown}' has corrupt compressed data ({exc}).") from None
    return total


# ------------------------------------------------------------------------------------------- NRRD

def _text_header(path: Path, end: bytes, limit: int = 1 << 20) -> tuple[str, int]:
    """(header text, byte offset where the data start) for formats with a text header ending in `end`."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    position = head.find(end)
    if position < 0:
        return head.decode("latin-1"), len(head)
    return head[:position].decode("latin-1"), position + len(end)


def _check_nrrd(path: Path, expected: int, shown: str) -> None:
    header, data_start = _text_header(path, b"\n\n")
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r"^([^:#\n]+):=?(.*)$", header, re.M)}
    if "data file" in fields or "datafile" in fields:
        return  # detached data (.nhdr style): ITK reports a missing data file itself
    encoding = fields.get("encoding", "raw").lower()
    if encoding == "raw":
        found = path.stat().st_size - data_start
        if found < expected:
            raise _short("voxel data", shown, expected, max(found, 0))
    elif encoding in ("gzip", "gz"):
        _check_gzip(path, data_start, expected, shown, "voxel data")


# -------------------------------------------------------------------------------------- MetaImage

def _check_meta(path: Path, expected: int, shown: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    match = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n", head)
    if not match:
        return
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r"^(\w+)\s*=\s*(.*)$",
                                                                   head[:match.start()].decode("latin-1"), re.M)}
    target = match.group(1).decode("latin-1").strip()
    if target.upper() == "LOCAL":
        data, found = path, path.stat().st_size - match.end()
    elif target.upper().startswith("LIST") or "%" in target:
        return  # one file per slice: not checked here
    else:
        data = path.parent / target
        if not data.is_file():
            raise InputError(f"'{shown}' names a data file '{target}' that does not exist.")
        found = data.stat().st_size
    compressed = fields.get("compresseddata", "false").lower() == "true"
    need = int(fields.get("compresseddatasize", 0) or 0) if compressed else expected
    if found < need:
        raise _short("compressed voxel data" if compressed else "voxel data", shown, need, max(found, 0))
