"""Is a volume file whole? What the SimpleITK readers do not check, checked cheaply.

ITK reads a ``.nii.gz`` cut short (or a ``.nii``) without complaint and fills the missing voxels with zeros; it
reads corrupt gzip data in NRRD, NIfTI and MetaImage files without checking the stream's checksum; and its
NIfTI reader turns NaN and infinite voxels into zeros. :func:`check_volume_file` catches all of these.

How, for a compressed stream (gzip: ``.nii.gz``, NRRD ``encoding: gzip``; zlib: MetaImage ``CompressedData``):
the stream's trailer holds the checksum of the uncompressed bytes (and, for gzip, their length). When the voxels
SimpleITK returned are the file's bytes as they are (the usual case) their checksum is computed in memory (about
0.1 s for 355 MB) and compared; only when it differs, or when the reader converted the voxels (scaling, byte
order), is the stream inflated again to find out whether the file or the conversion is the cause (as long again
as the read itself). A file is refused only when that inflation fails: a stream that stops before its end, that
holds fewer bytes than the header describes, or whose checksum does not match.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .suffixes import volume_suffix

_CHUNK = 1 << 22


@dataclass
class _Stream:
    """A compressed stream of voxel data inside ``file``: where it is and what it should hold."""

    file: Path
    start: int  # offset of the stream in the file
    kind: str  # "gzip" or "zlib"
    data_bytes: Optional[int]  # bytes of voxel data the header describes (None: unknown)
    prefix_bytes: int = 0  # uncompressed bytes before the voxels inside the stream (NIfTI: its header)
    exact: bool = True  # the uncompressed stream is exactly prefix + data (no skipped bytes or lines)
    dtype: Optional[np.dtype] = None  # the voxels' type in the file (with its byte order)
    length: Optional[int] = None  # compressed length when the header says it (MetaImage), else to the end
    source: Optional[Path] = None  # the file the user named, when the data is in another one (.mhd, detached NRRD)

    @property
    def named(self) -> Path:
        return self.source or self.file

    @property
    def what(self) -> str:
        return "its compressed voxel data" + (f" ({self.file.name})" if self.source else "")


def check_volume_file(path: Path, image: Optional[sitk.Image] = None) -> None:
    """Raise InputError naming ``path`` when its voxel data is cut short or corrupt (or, NIfTI, not finite).

    ``image``: what SimpleITK read from it, for the fast checksum comparison; None when the reader failed (the
    check then explains why, where it can). Formats and layouts it cannot judge pass unchecked.
    """
    suffix = volume_suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            _check_nifti(path, image)
        elif suffix in (".nrrd", ".seg.nrrd"):
            stream = _nrrd_stream(path)
            if stream is not None:
                _check_stream(stream, image)
        elif suffix in (".mha", ".mhd"):
            stream = _metaimage_stream(path)
            if stream is not None:
                _check_stream(stream, image)
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror or e})", path) from None


def data_files(path: Path) -> List[Path]:
    """The files besides ``path`` that hold its voxels: a MetaImage header's data file, a NRRD's detached data."""
    suffix = volume_suffix(path)
    try:
        if suffix == ".mhd":
            lines, _ = _read_header_lines(path, lambda line: line.replace(" ", "").startswith("ElementDataFile="))
            name = lines[-1].split("=", 1)[1].strip() if lines else "LOCAL"
        elif suffix in (".nrrd", ".seg.nrrd"):
            lines, _ = _read_header_lines(path, lambda line: line == "")
            found = [line.split(":", 1)[1].strip() for line in lines or []
                     if line.lower().startswith(("data file:", "datafile:"))]
            name = found[0] if found else "LOCAL"
        else:
            return []
    except OSError:
        return []
    if name == "LOCAL" or name.startswith("LIST") or len(name.split()) > 1:
        return []
    return [path.parent / name]


# -- the stream ---------------------------------------------------------------------------------------------------


def _check_stream(stream: _Stream, image: Optional[sitk.Image],
                  on_data: Optional[Callable[[bytes], None]] = None) -> None:
    if image is not None and stream.exact and _matches_trailer(stream, image):
        return
    total = _inflate(stream, on_data)
    if stream.data_bytes is not None and total < stream.prefix_bytes + stream.data_bytes:
        raise InputError(f"is incomplete: {stream.what} holds {_size(total - stream.prefix_bytes)} of the "
                         f"{_size(stream.data_bytes)} its header describes", stream.named)


def _size(n: int) -> str:
    return f"{n:,} bytes"


def _matches_trailer(stream: _Stream, image: sitk.Image) -> bool:
    """True when the stream's trailer (gzip: CRC-32 and length; zlib: Adler-32) matches the prefix bytes read
    from the stream and the voxels in memory: the file is whole, without inflating it again."""
    voxels = sitk.GetArrayViewFromImage(image)
    dtype = stream.dtype
    if (dtype is None or stream.data_bytes != voxels.nbytes or voxels.dtype.itemsize != dtype.itemsize
            or (dtype.itemsize > 1 and not dtype.isnative)):
        return False
    with open(stream.file, "rb") as f:
        end = f.seek(0, 2) if stream.length is None else stream.start + stream.length
        if end - stream.start < 12:
            return False
        f.seek(end - (8 if stream.kind == "gzip" else 4))
        trailer = f.read(8)
    prefix = _read_prefix(stream) if stream.prefix_bytes else b""
    if stream.kind == "gzip":
        crc, isize = struct.unpack("<II", trailer)
        if isize != (len(prefix) + voxels.nbytes) % 2 ** 32:
            return False
        return zlib.crc32(voxels, zlib.crc32(prefix)) == crc
    (adler,) = struct.unpack(">I", trailer[:4])
    return zlib.adler32(voxels, zlib.adler32(prefix)) == adler


def _read_prefix(stream: _Stream) -> bytes:
    with open(stream.file, "rb") as f:
        f.seek(stream.start)
        with gzip.GzipFile(fileobj=f) as g:
            return g.read(stream.prefix_bytes)


def _inflate(stream: _Stream, on_data: Optional[Callable[[bytes], None]]) -> int:
    """Inflate the whole stream, discarding the output (or passing it to ``on_data``); returns its length.
    Raises InputError when the stream is corrupt or stops before its end."""
    wbits = 16 + zlib.MAX_WBITS if stream.kind == "gzip" else zlib.MAX_WBITS
    total = 0
    with open(stream.file, "rb") as f:
        f.seek(stream.start)
        left = [stream.length]

        def read() -> bytes:
            if left[0] is None:
                return f.read(_CHUNK)
            data = f.read(min(_CHUNK, left[0]))
            left[0] -= len(data)
            return data

        inflater, pending = zlib.decompressobj(wbits), b""
        try:
            while pending or (pending := read()):
                out = inflater.decompress(pending, _CHUNK)
                total += len(out)
                if on_data is not None and out:
                    on_data(out)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    rest = inflater.unused_data + pending or read()
                    # gzip allows members one after another; anything else after the end is not voxel data.
                    if stream.kind != "gzip" or not rest.startswith(b"\x1f\x8b"):
                        return total
                    inflater, pending = zlib.decompressobj(wbits), rest
        except zlib.error as e:
            raise InputError(f"is corrupt: {stream.what} fails to decompress (zlib: {str(e).split(': ')[-1]})",
                             stream.named) from None
    expected = "" if stream.data_bytes is None else f" of {_size(stream.prefix_bytes + stream.data_bytes)}"
    raise InputError(f"is incomplete: {stream.what} stops after {_size(total)}{expected} (a file cut short, e.g. "
                     "by an interrupted copy or download)", stream.named)


# -- NIfTI --------------------------------------------------------------------------------------------------------

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8"}


def _check_nifti(path: Path, image: Optional[sitk.Image]) -> None:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        head = _gunzip_head(f) if gzipped else f.read(540)
    header = _nifti_header(head)
    if header is None:
        return  # not a NIfTI header this check understands; the reader has judged the file
    vox_offset, data_bytes, dtype = header
    finite = _NonFinite(dtype) if dtype is not None and dtype.kind == "f" else None
    if gzipped:
        stream = _Stream(path, 0, "gzip", data_bytes, prefix_bytes=vox_offset, dtype=dtype)
        if finite is not None:
            # The reader turns NaN into 0, so a volume with NaN never matches its checksum: inflating counts them.
            finite.skip = vox_offset
        _check_stream(stream, image, None if finite is None else finite.feed)
    else:
        have = path.stat().st_size - vox_offset
        if have < data_bytes:
            raise InputError(f"is incomplete: it holds {_size(max(0, have))} of the {_size(data_bytes)} of voxel "
                             "data its header describes (a file cut short, e.g. by an interrupted copy)", path)
        if finite is not None:
            finite.skip = vox_offset
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    finite.feed(chunk)
    if finite is not None and finite.count:
        raise InputError(f"has {finite.count} voxels that are NaN or infinite", path)


def _gunzip_head(f: BinaryIO) -> bytes:
    try:
        with gzip.GzipFile(fileobj=f) as g:
            return g.read(540)
    except (OSError, EOFError, zlib.error):
        return b""


def _nifti_header(head: bytes):
    """(vox_offset, voxel data bytes, numpy dtype or None) of a NIfTI-1 or NIfTI-2 header, or None."""
    if len(head) < 348:
        return None
    for order in "<>":
        (size,) = struct.unpack(order + "i", head[:4])
        if size == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            code, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:
            code, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            (offset,) = struct.unpack(order + "q", head[168:176])
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8 or any(d < 1 for d in dims[1:dims[0] + 1]):
        return None
    offset = max(offset, size + 4)  # vox_offset 0 in a single file means "right after the header"
    nvox = int(np.prod([int(d) for d in dims[1:dims[0] + 1]], dtype=np.int64))
    dtype = np.dtype(order + _NIFTI_DTYPES[code]) if code in _NIFTI_DTYPES else None
    if dtype is not None and dtype.itemsize * 8 != bitpix:
        dtype = None
    return offset, nvox * bitpix // 8, dtype


def nifti_voxel_size(path: Path) -> Optional[tuple]:
    """The voxel size of the spatial axes a NIfTI-1 or NIfTI-2 header states (``pixdim[1..3]``, as many as the
    image has), or None for a header this function does not understand. ITK replaces a size of 0 by 1 mm."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        head = _gunzip_head(f) if gzipped else f.read(540)
    if len(head) < 348:
        return None
    for order in "<>":
        (size,) = struct.unpack(order + "i", head[:4])
        if size == 348:
            ndim = struct.unpack(order + "h", head[40:42])[0]
            pixdim = struct.unpack(order + "8f", head[76:108])
            break
        if size == 540 and len(head) >= 540:
            ndim = struct.unpack(order + "q", head[16:24])[0]
            pixdim = struct.unpack(order + "8d", head[104:168])
            break
    else:
        return None
    if not 1 <= ndim <= 7:
        return None
    return tuple(float(v) for v in pixdim[1:1 + min(3, ndim)])


class _NonFinite:
    """Counts NaN and infinite values in a byte stream of ``dtype`` voxels fed in arbitrary pieces."""

    def __init__(self, dtype: np.dtype):
        self.dtype, self.count, self.skip, self._carry = dtype, 0, 0, b""

    def feed(self, data: bytes) -> None:
        if self.skip:
            cut = min(self.skip, len(data))
            data, self.skip = data[cut:], self.skip - cut
        data = self._carry + data
        whole = len(data) - len(data) % self.dtype.itemsize
        self._carry = data[whole:]
        values = np.frombuffer(data, self.dtype, whole // self.dtype.itemsize)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))


# -- NRRD and MetaImage headers ----------------------------------------------------------------------------------

_NRRD_TYPES = {"signed char": "i1", "int8": "i1", "int8_t": "i1", "uchar": "u1", "unsigned char": "u1",
               "uint8": "u1", "uint8_t": "u1", "short": "i2", "short int": "i2", "signed short": "i2",
               "signed short int": "i2", "int16": "i2", "int16_t": "i2", "ushort": "u2", "unsigned short": "u2",
               "unsigned short int": "u2", "uint16": "u2", "uint16_t": "u2", "int": "i4", "signed int": "i4",
               "int32": "i4", "int32_t": "i4", "uint": "u4", "unsigned int": "u4", "uint32": "u4",
               "uint32_t": "u4", "longlong": "i8", "long long": "i8", "long long int": "i8", "signed long long": "i8",
               "signed long long int": "i8", "int64": "i8", "int64_t": "i8", "ulonglong": "u8",
               "unsigned long long": "u8", "unsigned long long int": "u8", "uint64": "u8", "uint64_t": "u8",
               "float": "f4", "double": "f8"}
_MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
              "MET_UINT": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4",
              "MET_DOUBLE": "f8"}


def _read_header_lines(path: Path, last: Callable[[str], bool], limit: int = 1 << 20):
    """The text lines of a header up to the line for which ``last`` is true, and the data's byte offset."""
    with open(path, "rb") as f:
        head = f.read(limit)
    lines, pos = [], 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            return None, None
        line = head[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if last(line):
            return lines + [line], pos
        lines.append(line)
    return None, None


def _count(sizes: str, itemsize: int, channels: int = 1) -> int:
    return int(np.prod([int(s) for s in sizes.split()], dtype=np.int64)) * itemsize * channels


def _nrrd_stream(path: Path) -> Optional[_Stream]:
    lines, offset = _read_header_lines(path, lambda line: line == "")
    if lines is None or not lines[0].startswith("NRRD"):
        return None
    fields: Dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    if fields.get("encoding", "").lower() not in ("gzip", "gz"):
        return None
    code = _NRRD_TYPES.get(fields.get("type", "").lower())
    try:
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        skip_lines = int(fields.get("line skip", fields.get("lineskip", "0")))
        data_bytes = None if code is None else _count(fields["sizes"], np.dtype(code).itemsize)
    except (KeyError, ValueError):
        return None
    dtype = None if code is None else np.dtype(("<" if fields.get("endian", "little") == "little" else ">") + code)
    data_file, source = fields.get("data file", fields.get("datafile")), None
    if data_file is not None:
        if data_file.startswith("LIST") or len(data_file.split()) > 1:
            return None  # data spread over several files: left to the reader
        path, offset, source = path.parent / data_file, 0, path
    return _Stream(path, offset, "gzip", data_bytes, prefix_bytes=max(skip, 0),
                   exact=skip == 0 and skip_lines == 0, dtype=dtype, source=source)


def _metaimage_stream(path: Path) -> Optional[_Stream]:
    lines, offset = _read_header_lines(path, lambda line: line.replace(" ", "").startswith("ElementDataFile="))
    if lines is None:
        return None
    fields = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    if fields.get("CompressedData", "False").lower() != "true" or int(fields.get("HeaderSize", "0") or 0):
        return None
    code = _MET_TYPES.get(fields.get("ElementType", ""))
    try:
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        data_bytes = None if code is None else _count(fields["DimSize"], np.dtype(code).itemsize, channels)
        length = int(fields["CompressedDataSize"]) if "CompressedDataSize" in fields else None
    except (KeyError, ValueError):
        return None
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = None if code is None else np.dtype((">" if msb else "<") + code)
    data_file, source = fields["ElementDataFile"], None
    if data_file != "LOCAL":
        if data_file.startswith("LIST") or "%" in data_file or len(data_file.split()) > 1:
            return None
        path, offset, source = path.parent / data_file, 0, path
    stream = _Stream(path, offset, "zlib", data_bytes, dtype=dtype, length=length, source=source)
    if length is not None and path.stat().st_size - offset < length:
        raise InputError(f"is incomplete: {stream.what} holds {_size(path.stat().st_size - offset)} of the "
                         f"{_size(length)} its header describes (a file cut short, e.g. by an interrupted copy or "
                         "download)", stream.named)
    return stream
