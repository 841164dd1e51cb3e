"""The GPT-NeoX / Megatron "mmap" indexed dataset: PREFIX.bin holds token arrays back to back,
PREFIX.idx says where each sequence starts (FORMATS.md section 1). numpy only, so the
preprocessor image needs no torch; the trainer reads the same files through `IndexedDataset`."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
TEMP_MARK = ".tmp."  # PREFIX.bin.tmp.HOST.PID while being written
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N sequences, D doc_idx entries

DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dt: code for code, dt in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every id fits with room to spare (gpt-neox's own threshold), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def data_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


class IndexedDatasetWriter:
    """Streams documents into PREFIX.bin under a temporary name; `finalize` writes PREFIX.idx and
    renames both into place, so a killed run never leaves files at the final names.

    Sizes are kept in memory (4 bytes a document) because the .idx header needs the count first.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self.bin_path = data_path(prefix)
        self.idx_path = index_path(prefix)
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        # Per-process temp names: two writers of one prefix never share a partial file.
        suffix = f"{TEMP_MARK}{socket.gethostname()}.{os.getpid()}"
        self._bin_tmp = self.bin_path.with_name(self.bin_path.name + suffix)
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + suffix)
        self._bin = open(self._bin_tmp, "wb")  # closed in finalize/abort
        self._sizes: list[np.ndarray] = []
        self._pending: list[int] = []
        self.num_tokens = 0
        self._done = False

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError("a document must be a 1-D sequence of token ids")
        if arr.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ValueError(f"token id out of range for {self.dtype}")
            arr = arr.astype(self.dtype)
        self._bin.write(arr.tobytes(order="C"))
        self._pending.append(arr.size)
        self.num_tokens += arr.size
        if len(self._pending) >= 65536:
            self._flush_sizes()

    def _flush_sizes(self) -> None:
        if self._pending:
            self._sizes.append(np.asarray(self._pending, dtype=np.int32))
            self._pending = []

    def finalize(self) -> None:
        if self._done:
            return
        try:
            self._flush_sizes()
            sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int32)
            pointers = np.zeros(len(sizes), dtype=np.int64)
            if len(sizes) > 1:
                np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
            # One document per sequence: doc_idx is 0 then the sequence count after each document.
            doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
            with open(self._idx_tmp, "wb") as f:
                f.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], len(sizes), len(doc_idx)))
                f.write(sizes.tobytes())
                f.write(pointers.tobytes())
                f.write(doc_idx.tobytes())
                f.flush()
                os.fsync(f.fileno())
            # .bin first: a reader looks for the .idx, so it only appears once both are complete.
            os.replace(self._bin_tmp, self.bin_path)
            os.replace(self._idx_tmp, self.idx_path)
            self._done = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if not self._bin.closed:
            self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDataset:
    """Read-only view of PREFIX.bin/.idx through np.memmap; nothing is loaded eagerly."""

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.prefix = os.fspath(prefix)
        idx, binp = index_path(prefix), data_path(prefix)
        for p in (idx, binp):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: indexed dataset file not found")
        with open(idx, "rb") as f:
            head = f.read(HEADER.size)
        if len(head) < HEADER.size or head[:9] != MAGIC:
            raise ValueError(f"{idx}: not an indexed dataset index (bad magic)")
        _, version, code, n, d = HEADER.unpack(head)
        if version != VERSION:
            raise ValueError(f"{idx}: unsupported index version {version}")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx}: unknown dtype code {code}")
        self.dtype = DTYPE_CODES[code]
        expected = HEADER.size + 4 * n + 8 * n + 8 * d
        if idx.stat().st_size < expected:
            raise ValueError(f"{idx}: truncated index ({idx.stat().st_size} bytes, expected {expected})")
        self._index = np.memmap(idx, dtype=np.uint8, mode="r")
        off = HEADER.size
        self.sizes = np.frombuffer(self._index, dtype=np.int32, count=n, offset=off)
        self.pointers = np.frombuffer(self._index, dtype=np.int64, count=n, offset=off + 4 * n)
        self.doc_idx = np.frombuffer(self._index, dtype=np.int64, count=d, offset=off + 12 * n)
        nbytes = binp.stat().st_size
        if n and int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize > nbytes:
            raise ValueError(f"{binp}: shorter than its index says")
        # np.memmap refuses empty files; an empty dataset gets an empty array instead.
        if nbytes:
            self._bin = np.memmap(binp, dtype=self.dtype, mode="r")
        else:
            self._bin = np.zeros(0, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        n = len(self.sizes)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"slice [{offset}:{offset}+{length}] outside sequence {i} of {size} tokens")
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start : start + length]

    @property
    def tokens(self) -> np.ndarray:
        return self._bin
