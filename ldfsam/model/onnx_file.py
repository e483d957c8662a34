"""Read the weights and metadata of an ONNX file without the ``onnx`` package.

An ONNX file is one protocol-buffers message (``ModelProto``). Only what the import of pretrained YOLOv8 weights
needs is decoded: the graph's initializers (name, shape, values) and the model's metadata (``metadata_props``);
nodes are skipped. A few dozen lines of wire-format reading keep ``onnx`` (and its protobuf runtime) out of the
dependencies and work on every Python the project supports. Anything malformed is an ``OnnxError``.
"""

from __future__ import annotations

import struct
from typing import Dict, Iterator, List, Tuple

import numpy as np

# ModelProto, GraphProto and TensorProto field numbers (onnx/onnx.proto).
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INITIALIZER = 5
_T_DIMS, _T_TYPE, _T_FLOAT_DATA, _T_INT32_DATA, _T_INT64_DATA, _T_NAME, _T_RAW = 1, 2, 4, 5, 7, 8, 9
_T_DOUBLE_DATA, _T_EXTERNAL, _T_LOCATION = 10, 13, 14
# TensorProto.DataType -> numpy dtype of its raw bytes (little-endian).
_DTYPES = {1: "<f4", 2: "u1", 3: "i1", 5: "<i2", 6: "<i4", 7: "<i8", 9: "u1", 10: "<f2", 11: "<f8"}


class OnnxError(ValueError):
    """The bytes are not an ONNX model this reader understands (the message says where it failed)."""


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxError("varint too long")


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value): an int for varint/fixed fields, a memoryview for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise OnnxError("truncated 64-bit field")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise OnnxError(f"field {number} runs past the end ({length} bytes at {pos} of {end})")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > end:
                raise OnnxError("truncated 32-bit field")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise OnnxError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _packed_varints(value: object, wire: int) -> List[int]:
    if wire == 0:
        return [int(value)]  # type: ignore[arg-type]
    out, pos, buf = [], 0, value  # type: ignore[assignment]
    while pos < len(buf):  # type: ignore[arg-type]
        v, pos = _varint(buf, pos)  # type: ignore[arg-type]
        out.append(v)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _tensor(buf: memoryview) -> Tuple[str, np.ndarray]:
    dims: List[int] = []
    dtype, name, raw, floats, doubles, ints = 0, "", None, [], [], []
    for number, wire, value in _fields(buf):
        if number == _T_DIMS:
            dims += [_signed(v) for v in _packed_varints(value, wire)]
        elif number == _T_TYPE:
            dtype = int(value)  # type: ignore[arg-type]
        elif number == _T_NAME:
            name = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif number == _T_RAW:
            raw = bytes(value)  # type: ignore[arg-type]
        elif number == _T_FLOAT_DATA:
            floats += (list(struct.unpack(f"<{len(value) // 4}f", value)) if wire == 2  # type: ignore[arg-type]
                       else [struct.unpack("<f", int(value).to_bytes(4, "little"))[0]])  # type: ignore[arg-type]
        elif number == _T_DOUBLE_DATA:
            doubles += (list(struct.unpack(f"<{len(value) // 8}d", value)) if wire == 2  # type: ignore[arg-type]
                        else [struct.unpack("<d", int(value).to_bytes(8, "little"))[0]])  # type: ignore[arg-type]
        elif number in (_T_INT32_DATA, _T_INT64_DATA):
            ints += [_signed(v) for v in _packed_varints(value, wire)]
        elif number in (_T_EXTERNAL, _T_LOCATION) and (number == _T_EXTERNAL or value):
            raise OnnxError(f"initializer {name or '?'} keeps its data in an external file, which is not supported")
    if dtype not in _DTYPES:
        raise OnnxError(f"initializer {name!r} has unsupported data type {dtype}")
    if any(d < 0 for d in dims):
        raise OnnxError(f"initializer {name!r} has a negative dimension {dims}")
    count = int(np.prod(dims)) if dims else 1
    if raw is not None:
        array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]))
    elif floats:
        array = np.asarray(floats, dtype=np.float32)
    elif doubles:
        array = np.asarray(doubles, dtype=np.float64)
    else:
        array = np.asarray(ints, dtype=np.int64)
    if array.size != count:
        raise OnnxError(f"initializer {name!r} holds {array.size} values for shape {dims}")
    return name, array.reshape(dims).astype(array.dtype.newbyteorder("="), copy=True)


def read_onnx(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """(initializers by name, metadata key -> value) of an ONNX model's bytes."""
    buf = memoryview(data)
    graphs, metadata = [], {}
    for number, wire, value in _fields(buf):
        if number == _MODEL_GRAPH and wire == 2:
            graphs.append(value)
        elif number == _MODEL_METADATA and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}  # type: ignore
            metadata[entry.get(1, "")] = entry.get(2, "")
    if len(graphs) != 1:
        raise OnnxError(f"expected one graph, found {len(graphs)}: not an ONNX model")
    initializers: Dict[str, np.ndarray] = {}
    for number, wire, value in _fields(graphs[0]):  # type: ignore[arg-type]
        if number == _GRAPH_INITIALIZER and wire == 2:
            name, array = _tensor(value)  # type: ignore[arg-type]
            initializers[name] = array
    if not initializers:
        raise OnnxError("the graph has no initializers (no weights)")
    return initializers, metadata
