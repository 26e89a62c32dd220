"""Typed tensors of the Open Inference Protocol (KServe V2): datatypes, JSON data and the binary extension.

A tensor is a numpy array; BYTES tensors are object arrays of `bytes`. Binary data is little-endian, row-major;
each BYTES element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import orjson

from batchery.errors import BadRequest

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
#: numpy's limit on an array's dimensions.
MAX_DIMS = 64
_NAMES = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
# JSON values each datatype accepts, by numpy kind: no strings for numbers, no floats for integers.
_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}
_LENGTH = struct.Struct("<I")


@dataclass(slots=True)
class Tensor:
    """One named tensor; `array.shape` is its shape."""

    name: str
    datatype: str
    array: np.ndarray[Any, Any]


def check_header(where: str, datatype: Any, shape: Any) -> tuple[str, list[int]]:
    """Validate a tensor's datatype and shape as a request states them."""
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list or dict is not even hashable
        raise BadRequest(f"{where} has datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where} has shape {shape!r}; a shape is a list of non-negative integers such as [2, 3]")
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"{where} has {len(shape)} dimensions; the most a tensor may have is {MAX_DIMS}")
    return datatype, shape


def from_json(where: str, datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    """A tensor from its JSON `data` (flat, or nested as deep as the shape; row-major), checked against both."""
    if datatype == "BYTES":
        flat = _flatten(where, data, shape)
        if not all(isinstance(value, str) for value in flat):
            raise BadRequest(f"{where} is BYTES: its data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [value.encode() for value in flat]
    else:
        _check_first_depth(where, data, shape)  # before numpy, so its error is ours and not "over 64 dimensions"
        try:
            values = np.asarray(data)
        except ValueError as exc:
            raise BadRequest(f"{where}: data is not a regular array: {exc}") from exc
        _check_depth(where, values.ndim, shape)
        dtype = DATATYPES[datatype]
        if dtype.kind in "iu" and values.dtype.kind in "fO":
            try:
                exact = _exact_integers(data, values.shape)
            except OverflowError as exc:
                raise BadRequest(f"{where}: a value is out of range for {datatype}") from exc
            values = values if exact is None else exact
        allowed = _KINDS.get(datatype, "iu")
        if values.size and values.dtype.kind not in allowed:
            raise BadRequest(f"{where} is {datatype}, but its data holds {_kind_name(values.dtype.kind)}")
        if dtype.kind in "iu" and values.size:
            info = np.iinfo(dtype)
            if int(values.min()) < info.min or int(values.max()) > info.max:  # Python ints: an exact comparison
                raise BadRequest(f"{where}: a value is out of range for {datatype}")
        array = values.astype(dtype).reshape(-1)
    return _shaped(where, array, shape)


def from_binary(where: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray[Any, Any]:
    """A tensor from its bytes in the binary extension."""
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequest(f"{where}: BYTES data ends inside an element's 4-byte length")
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise BadRequest(f"{where}: a BYTES element says {length} bytes but the data ends first")
            elements.append(raw[offset : offset + length])
            offset += length
        array = np.empty(len(elements), dtype=object)
        array[:] = elements
        return _shaped(where, array, shape)
    dtype = DATATYPES[datatype]
    if len(raw) != prod(shape) * dtype.itemsize:
        raise BadRequest(
            f"{where} has {len(raw)} bytes of {datatype} data; shape {shape} needs {prod(shape) * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_json(tensor: Tensor) -> Any:
    """The flat, row-major data of a tensor for `orjson.dumps(..., option=OPT_SERIALIZE_NUMPY)`.

    BYTES become UTF-8 text; other types stay a contiguous numpy array, which orjson writes natively.
    """
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [value.decode("utf-8", "backslashreplace") for value in flat]
    if tensor.datatype == "FP16":  # orjson has no float16
        return flat.tolist()
    return np.ascontiguousarray(flat)


def to_binary(tensor: Tensor) -> bytes:
    """The bytes of a tensor in the binary extension."""
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(value)) + value for value in tensor.array.reshape(-1))
    return np.ascontiguousarray(tensor.array, dtype=DATATYPES[tensor.datatype]).tobytes()


def from_values(name: str, values: Sequence[Any], datatype: str | None = None) -> Tensor:
    """Stack one value per input into a tensor: text and bytes become BYTES, numbers a typed tensor, else JSON."""
    if all(isinstance(value, str | bytes) for value in values):
        array = np.empty(len(values), dtype=object)
        array[:] = [value.encode() if isinstance(value, str) else value for value in values]
        return Tensor(name, "BYTES", array)
    try:
        stacked = np.asarray(values)
    except ValueError:  # ragged: one JSON document per input
        stacked = np.empty(0, dtype=object)
    if stacked.dtype.kind in "fO" and _first_is_integer(values):
        try:
            exact = _exact_integers(values, stacked.shape)
        except OverflowError:  # past uint64, or negative and past int64: left as numpy made it
            exact = None
        stacked = stacked if exact is None else exact
    if stacked.dtype.kind in "biuf" and stacked.shape[:1] == (len(values),):
        if datatype is not None and datatype != "BYTES":
            return Tensor(name, datatype, stacked.astype(DATATYPES[datatype], copy=False))
        name_of = _NAMES.get(stacked.dtype)
        if name_of is not None:
            return Tensor(name, name_of, stacked)
    array = np.empty(len(values), dtype=object)
    array[:] = [orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY) for value in values]
    return Tensor(name, "BYTES", array)


def rows(array: np.ndarray[Any, Any]) -> list[Any]:
    """One value per row along the first dimension: text for BYTES (bytes when not UTF-8), lists for numbers.

    A row of exactly one element is that element, so shapes [N] and [N, 1] both give N scalars or strings.
    """
    values: list[Any] = []
    for row in array:
        if isinstance(row, np.ndarray) and row.size == 1:
            row = row.reshape(-1)[0]
        if isinstance(row, np.generic):
            row = row.item()
        values.append(_text(row.tolist() if isinstance(row, np.ndarray) else row))
    return values


def _text(value: Any) -> Any:
    """`value` with every bytes object in it decoded as UTF-8 where it can be."""
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _shaped(where: str, array: np.ndarray[Any, Any], shape: list[int]) -> np.ndarray[Any, Any]:
    if array.size != prod(shape):
        raise BadRequest(f"{where} has {array.size} values, but its shape {shape} needs {prod(shape)}")
    return array.reshape(shape)


def _flatten(where: str, data: Any, shape: list[int]) -> list[Any]:
    """The row-major leaves of `data`, a regular array as numpy would see it; checked against the shape's depth.

    Iterative, and it stops past the shape's depth: orjson parses ~1,024 levels, beyond Python's recursion limit.
    """
    if not isinstance(data, list):
        _check_depth(where, 0, shape)
        return [data]
    limit = max(1, len(shape))
    dims: list[int] = [len(data)]  # each level's length, the same for every list at that level
    leaf_depth: int | None = None
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            depth = len(stack)
            if isinstance(value, list):
                if depth >= limit:
                    raise _too_deep(where, shape)
                if depth == len(dims):
                    dims.append(len(value))
                if dims[depth] != len(value) or (leaf_depth is not None and depth >= leaf_depth):
                    raise _ragged(where)
                stack.append(iter(value))
                break
            if leaf_depth not in (None, depth) or depth != len(dims):
                raise _ragged(where)
            leaf_depth = depth
            flat.append(value)
        else:
            stack.pop()
    _check_depth(where, len(dims), shape)
    return flat


def _check_first_depth(where: str, data: Any, shape: list[int]) -> None:
    """Refuse data whose first element is nested deeper than the shape, walking down to it without recursion."""
    depth, limit = 0, max(1, len(shape))
    while isinstance(data, list):
        depth += 1
        if depth > limit:
            raise _too_deep(where, shape)
        if not data:
            return
        data = data[0]


def _check_depth(where: str, depth: int, shape: list[int]) -> None:
    """Data is flat (one list) or nested exactly as deep as the shape; a shape [] takes a lone value too."""
    if depth in (1, len(shape)):
        return
    if depth > max(1, len(shape)):
        raise _too_deep(where, shape)
    if depth == 0:
        raise BadRequest(f"{where}: data must be a list, flat in row-major order or nested as deep as the shape")
    raise BadRequest(
        f"{where}: data is nested {depth} lists deep, but shape {shape} has {len(shape)} dimensions; {_SEND}"
    )


_SEND = "send it flat, as one list in row-major order, or nested as deep as the shape"


def _too_deep(where: str, shape: list[int]) -> BadRequest:
    return BadRequest(f"{where}: data is nested deeper than its shape {shape} allows; {_SEND}")


def _ragged(where: str) -> BadRequest:
    return BadRequest(f"{where}: data is not a regular array: its lists differ in length or depth")


def _exact_integers(data: Any, shape: tuple[int, ...]) -> np.ndarray[Any, Any] | None:
    """`data` as int64, else uint64, value for value, when every value in it is an integer; None when one is not.

    numpy reads integers past int64 mixed with smaller ones as float64, which loses digits (2**64 - 1 is then
    1.8446744073709552e19). OverflowError when a value fits neither type.
    """
    values = np.empty(shape, dtype=object)
    try:
        values[...] = data
    except ValueError:  # not the regular shape numpy saw: not an integer array either
        return None
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values.flat):
        return None
    try:
        return values.astype(np.int64)
    except OverflowError:
        return values.astype(np.uint64)


def _first_is_integer(values: Sequence[Any]) -> bool:
    """Whether the first scalar in `values` is an integer: a cheap test before looking at every value."""
    first: Any = values
    while isinstance(first, list | tuple) and first:
        first = first[0]
    if isinstance(first, np.ndarray):
        return first.dtype.kind in "iuO"
    return isinstance(first, int | np.integer) and not isinstance(first, bool)


def _kind_name(kind: str) -> str:
    return {"U": "strings", "f": "floats", "b": "booleans", "O": "mixed values"}.get(kind, "integers")
