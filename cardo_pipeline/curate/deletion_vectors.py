"""Deletion vectors as the Delta protocol stores them: the positions of a data file's deleted rows, beside it.

A curated batch deletes or replaces a few rows in many large files; marking those rows deleted (merge-on-read)
instead of rewriting every file they sit in (copy-on-write) is what makes an apply independent of the table's
size. delta-rs reads and keeps deletion vectors but does not write them (delta-rs issue 4512), so this module
writes them, exactly as the protocol's "Deletion Vector Format" says:

- a deletion vector is a RoaringBitmapArray in its portable serialization, prefixed by a 4-byte magic number;
- it is stored in a file `deletion_vector_<uuid>.bin` in the table's root: a format version byte (1), then per
  vector its size (4 bytes, big-endian), its bytes and their CRC-32 (4 bytes, big-endian);
- the log refers to it by a descriptor: storage type "u", the uuid in Z85 (RFC 32/Z85), the vector's offset in
  the file, its size and its cardinality (the number of deleted rows).

Nothing here knows about Dagster or about curated tables.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pyroaring import BitMap64

MAGIC = 1681511377
FORMAT_VERSION = 1
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}


class DeletionVectorError(ValueError):
    """A deletion vector that cannot be read: a bad checksum, magic number or size."""


def z85_encode(data: bytes) -> str:
    """Z85 of `data` zero-padded to a multiple of 4 bytes (the protocol's encoding of uuids and inline vectors)."""
    padded = data + b"\0" * (-len(data) % 4)
    out = []
    for (word,) in struct.iter_unpack(">I", padded):
        chars = []
        for _ in range(5):
            word, digit = divmod(word, 85)
            chars.append(_Z85[digit])
        out.append("".join(reversed(chars)))
    return "".join(out)


def z85_decode(text: str, size: int | None = None) -> bytes:
    if len(text) % 5:
        raise DeletionVectorError(f"Z85 text of {len(text)} characters (not a multiple of 5)")
    words = []
    for start in range(0, len(text), 5):
        word = 0
        for char in text[start:start + 5]:
            word = word * 85 + _Z85_VALUE[char]
        words.append(word)
    data = struct.pack(f">{len(words)}I", *words)
    return data if size is None else data[:size]


def serialize(rows: np.ndarray) -> bytes:
    """The deleted row positions (0-based, in the file's physical order) as a protocol deletion vector."""
    return struct.pack("<I", MAGIC) + BitMap64(np.asarray(rows, np.uint64).tolist()).serialize()


def deserialize(data: bytes) -> np.ndarray:
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != MAGIC:
        raise DeletionVectorError("not a deletion vector (magic number)")
    return np.fromiter(BitMap64.deserialize(data[4:]), np.int64)


def write_file(table_root: str, vectors: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Write the vectors (by data file path) into one new file of the table; return each one's descriptor."""
    file_id = uuid.uuid4()
    descriptors, chunks, offset = {}, [bytes([FORMAT_VERSION])], 1
    for path, rows in vectors.items():
        data = serialize(rows)
        descriptors[path] = {"storageType": "u", "pathOrInlineDv": z85_encode(file_id.bytes), "offset": offset,
                             "sizeInBytes": len(data), "cardinality": len(rows)}
        chunks += [struct.pack(">I", len(data)), data, struct.pack(">I", zlib.crc32(data))]
        offset += 8 + len(data)
    target = Path(table_root) / f"deletion_vector_{file_id}.bin"
    with open(target, "xb") as out:
        out.write(b"".join(chunks))
        out.flush()
        os.fsync(out.fileno())
    return descriptors


def file_name(descriptor: Mapping) -> str:
    """The file of a stored ("u") vector, relative to the table's root."""
    encoded = descriptor["pathOrInlineDv"]
    prefix, uuid_text = encoded[:-20], encoded[-20:]
    name = f"deletion_vector_{uuid.UUID(bytes=z85_decode(uuid_text, 16))}.bin"
    return f"{prefix}/{name}" if prefix else name


def read(table_root: str, descriptor: Mapping | None) -> np.ndarray:
    """The deleted row positions a descriptor stands for (none for None)."""
    if descriptor is None:
        return np.empty(0, np.int64)
    kind, size = descriptor["storageType"], int(descriptor["sizeInBytes"])
    if kind == "i":
        return deserialize(z85_decode(descriptor["pathOrInlineDv"], size))
    path = descriptor["pathOrInlineDv"] if kind == "p" else str(Path(table_root) / file_name(descriptor))
    with open(path.removeprefix("file://"), "rb") as source:
        source.seek(int(descriptor.get("offset") or 1))
        stored_size, = struct.unpack(">I", source.read(4))
        data = source.read(stored_size)
        checksum, = struct.unpack(">I", source.read(4))
    if stored_size != size or len(data) != size or zlib.crc32(data) != checksum:
        raise DeletionVectorError(f"deletion vector in {path} at {descriptor.get('offset')}: size or checksum")
    return deserialize(data)
