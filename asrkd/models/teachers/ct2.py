"""Reader for CTranslate2 ``model.bin`` files (no ``ctranslate2`` needed at run time).

File format (binary version 6, written by ``ctranslate2.specs.ModelSpec._serialize``;
every integer little-endian)::

    u32     binary_version           # 6 for ctranslate2 >= 3.x; versions 1-6 are read
    string  spec_name                # e.g. "WhisperSpec"             (version >= 2)
    u32     spec_revision            # e.g. 3                          (version >= 2)
    u32     num_variables
    num_variables times:
        string  name                 # e.g. "encoder/layer_0/ffn/linear_0/weight"
        u8      rank
        u32     dims[rank]           # row-major shape
        u8      dtype_id             # 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
        u32     num_bytes            # (version >= 4; before: u8 item_size + u32 num_items)
        bytes   data[num_bytes]
    u32     num_aliases              # (version >= 3)
    num_aliases times:
        string  alias                # e.g. "decoder/projection/weight"
        string  target               # e.g. "decoder/embeddings/weight"

    string  := u16 length (including the trailing NUL), UTF-8 bytes, NUL

Scalars are rank-0 variables (``encoder/num_heads`` is an int16); booleans and enum
values (``decoder/activation``) are int8; strings (rare) are int8 arrays of UTF-8 bytes.
``config.json`` next to ``model.bin`` holds the non-tensor configuration and is not
needed to rebuild the encoder.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# dtype ids of ctranslate2's DataType enum, in order (include/ctranslate2/types.h).
_DTYPES: tuple[tuple[str, np.dtype | None], ...] = (
    ("float32", np.dtype("<f4")),
    ("int8", np.dtype("i1")),
    ("int16", np.dtype("<i2")),
    ("int32", np.dtype("<i4")),
    ("float16", np.dtype("<f2")),
    ("bfloat16", None),  # numpy has no bfloat16: read as uint16 and widened below
)


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model or is truncated/corrupt."""


@dataclass
class CT2Model:
    """Contents of a ``model.bin``: tensors by name (aliases resolved to the same tensor)."""

    path: Path
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    dtypes: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"{self.path}: no variable {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int | float:
        """A rank-0 variable as a Python number (e.g. ``encoder/num_heads``)."""
        value = self[name]
        if value.dim() != 0:
            raise ValueError(f"{self.path}: {name!r} is not a scalar (shape {tuple(value.shape)})")
        return value.item()


class _Cursor:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise CT2FormatError(
                f"{self.path}: truncated at byte {self.pos} (wanted {n} more bytes, file has {len(self.data)})"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def u8(self) -> int:
        return self.unpack("<B")[0]

    def u32(self) -> int:
        return self.unpack("<I")[0]

    def string(self) -> str:
        (length,) = self.unpack("<H")
        raw = bytes(self.take(length))
        if not raw or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: string at byte {self.pos - length} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | os.PathLike, *, prefix: str | None = None, to_float32: bool = True) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (or a directory holding one) into torch tensors.

    Args:
        path: the ``model.bin`` file or its directory.
        prefix: keep only variables whose name starts with it (e.g. ``"encoder/"``); the rest
            is skipped without being copied.
        to_float32: widen float16/bfloat16 tensors to float32 (CPU kernels and exact
            reproduction want fp32; the stored values are kept bit-exactly).

    Raises:
        FileNotFoundError: no such file.
        CT2FormatError: not a CTranslate2 file, unsupported version, truncated or inconsistent.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"CTranslate2 model file not found: {path}")
    with open(path, "rb") as f:
        data = memoryview(f.read())
    cur = _Cursor(data, path)

    version = cur.u32()
    if not 1 <= version <= 6:
        raise CT2FormatError(f"{path}: not a CTranslate2 model.bin (binary version {version}; 1-6 are known)")
    spec, revision = "", 1
    if version >= 2:
        spec = cur.string()
        revision = cur.u32()
    num_variables = cur.u32()
    variables: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for _ in range(num_variables):
        name = cur.string()
        rank = cur.u8()
        shape = cur.unpack(f"<{rank}I") if rank else ()
        if version >= 4:
            type_id = cur.u8()
            if type_id >= len(_DTYPES):
                raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
            num_bytes = cur.u32()
        else:
            item_size = cur.u8()
            # Old files stored only the item size: 4 = float32, 2 = float16, 1 = int8.
            type_id = {4: 0, 2: 4, 1: 1}.get(item_size)
            if type_id is None:
                raise CT2FormatError(f"{path}: variable {name!r} has item size {item_size}")
            num_bytes = cur.u32() * item_size
        raw = cur.take(num_bytes)
        if prefix is not None and not name.startswith(prefix):
            continue
        dtype_name, np_dtype = _DTYPES[type_id]
        count = int(np.prod(shape)) if shape else 1
        itemsize = 2 if np_dtype is None else np_dtype.itemsize
        if count * itemsize != num_bytes:
            raise CT2FormatError(f"{path}: variable {name!r} has shape {shape} ({dtype_name}) but {num_bytes} bytes")
        if np_dtype is None:  # bfloat16: the high half of a float32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np_dtype)
        tensor = torch.from_numpy(array.copy()).reshape(shape)
        if to_float32 and tensor.is_floating_point():
            tensor = tensor.float()
        variables[name] = tensor
        dtypes[name] = dtype_name

    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(cur.u32()):
            alias = cur.string()
            aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise CT2FormatError(f"{path}: {len(data) - cur.pos} unexpected trailing bytes after the aliases")
    return CT2Model(path, version, spec, revision, variables, dtypes, aliases)
