"""Validate a Megatron indexed dataset (PREFIX.bin + PREFIX.idx) before megatron-core opens it.

megatron-core answers a bad file with a bare assert, a numpy buffer error, or garbage samples;
these checks turn each case into one DataError line naming the file. They read the 34-byte
header and a few fixed offsets, never the whole corpus.

.idx layout (megatron.core.datasets.indexed_dataset._IndexWriter):
    9 bytes  magic b"MMIDIDX\\x00\\x00"
    u64      version, 1
    u8       token dtype code (1..8)
    u64      sequence count S
    u64      document count D (document boundaries, so number of documents + 1)
    S int32  sequence lengths, S int64 byte pointers into .bin, D int64 document indices
    [S int8  sequence modes, multimodal datasets only]
"""

import os
import struct
from dataclasses import dataclass

import numpy as np

from aria_train.data.errors import DataError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8
# megatron.core.datasets.indexed_dataset.DType codes
_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}


@dataclass
class IndexedFileInfo:
    prefix: str
    dtype: type
    sequence_count: int
    document_count: int  # number of documents (boundaries - 1)
    sequence_lengths: np.ndarray  # int32, memory-mapped from the .idx

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def check_indexed_dataset(prefix: str) -> IndexedFileInfo:
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise DataError(f"data prefix {prefix}: {path} not found")

    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        header = f.read(_HEADER_BYTES)
    if header[:9] != INDEX_MAGIC:
        raise DataError(f"{idx_path}: not a Megatron index file (bad magic header)")
    if len(header) < _HEADER_BYTES:
        raise DataError(f"{idx_path}: truncated header ({idx_size} bytes)")
    version, code, sequence_count, boundary_count = struct.unpack("<QBQQ", header[9:])
    if version != INDEX_VERSION:
        raise DataError(
            f"{idx_path}: unsupported index version {version} (expected {INDEX_VERSION})"
        )
    if code not in _DTYPES:
        raise DataError(f"{idx_path}: unknown token dtype code {code}")
    expected = _HEADER_BYTES + sequence_count * (4 + 8) + boundary_count * 8
    # a multimodal index carries one extra byte per sequence
    if idx_size not in (expected, expected + sequence_count):
        raise DataError(
            f"{idx_path}: {idx_size} bytes, expected {expected} for {sequence_count} sequences and "
            f"{boundary_count} document boundaries (truncated or corrupt)"
        )
    if sequence_count == 0:
        raise DataError(f"{idx_path}: the dataset holds no sequences")

    offset = _HEADER_BYTES
    def array(dtype, count):
        return np.memmap(idx_path, dtype=dtype, mode="r", offset=offset, shape=(count,))

    lengths = array(np.int32, sequence_count)
    offset += sequence_count * 4
    pointers = array(np.int64, sequence_count)
    offset += sequence_count * 8
    boundaries = array(np.int64, boundary_count)
    if boundary_count < 2 or boundaries[0] != 0 or boundaries[-1] != sequence_count:
        raise DataError(f"{idx_path}: document boundaries do not span the sequences (corrupt)")

    itemsize = np.dtype(_DTYPES[code]).itemsize
    bin_expected = int(pointers[-1]) + int(lengths[-1]) * itemsize
    bin_size = os.path.getsize(bin_path)
    if bin_size != bin_expected:
        raise DataError(
            f"{bin_path}: {bin_size} bytes, but {idx_path} describes {bin_expected} "
            f"(truncated, or not the index's pair)"
        )
    return IndexedFileInfo(
        prefix=prefix,
        dtype=_DTYPES[code],
        sequence_count=sequence_count,
        document_count=boundary_count - 1,
        sequence_lengths=lengths,
    )
