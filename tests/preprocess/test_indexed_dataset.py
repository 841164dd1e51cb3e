"""Round trips and exact byte layout of the indexed dataset (FORMATS.md section 1)."""

import struct

import numpy as np
import pytest

from jobs.indexed_dataset import IndexedDataset, IndexedDatasetWriter, dtype_for_vocab


def test_dtype_for_vocab():
    assert dtype_for_vocab(50277) == np.uint16
    assert dtype_for_vocab(65499) == np.uint16
    assert dtype_for_vocab(65500) == np.int32
    assert dtype_for_vocab(250_000) == np.int32


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    hi = 50000 if dtype == np.uint16 else 200_000
    docs = [rng.integers(0, hi, size=int(n)) for n in rng.integers(1, 300, size=200)]
    docs.append(np.array([hi - 1]))
    prefix = tmp_path / "out_text_document"
    with IndexedDatasetWriter(prefix, np.dtype(dtype)) as w:
        for d in docs:
            w.add_document(d)
    ds = IndexedDataset(prefix)
    assert ds.dtype == dtype
    assert len(ds) == len(docs)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    np.testing.assert_array_equal(ds.sizes, [len(d) for d in docs])
    np.testing.assert_array_equal(ds.doc_idx, np.arange(len(docs) + 1))
    np.testing.assert_array_equal(ds.tokens, np.concatenate(docs))
    np.testing.assert_array_equal(ds.get(3, offset=1, length=2), docs[3][1:3])
    np.testing.assert_array_equal(ds.get(3, offset=2), docs[3][2:])
    np.testing.assert_array_equal(ds[-1], docs[-1])
    with pytest.raises(IndexError):
        ds.get(len(docs))
    with pytest.raises(IndexError):
        ds.get(0, offset=0, length=len(docs[0]) + 1)


def test_exact_bytes(tmp_path):
    """The files are byte for byte what gpt-neox's MMapIndexedDataset.Builder writes."""
    prefix = tmp_path / "x_text_document"
    w = IndexedDatasetWriter(prefix, np.dtype(np.uint16))
    w.add_document([5, 6, 7])
    w.add_document(np.array([0], dtype=np.int64))
    w.add_document([1, 2])
    w.finalize()
    assert (tmp_path / "x_text_document.bin").read_bytes() == np.array(
        [5, 6, 7, 0, 1, 2], dtype="<u2"
    ).tobytes()
    expected = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", 8)
        + struct.pack("<Q", 3)
        + struct.pack("<Q", 4)
        + np.array([3, 1, 2], dtype="<i4").tobytes()
        + np.array([0, 6, 8], dtype="<i8").tobytes()
        + np.array([0, 1, 2, 3], dtype="<i8").tobytes()
    )
    assert (tmp_path / "x_text_document.idx").read_bytes() == expected


def test_empty_dataset(tmp_path):
    prefix = tmp_path / "e_text_document"
    IndexedDatasetWriter(prefix, np.dtype(np.int32)).finalize()
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.tokens.size == 0
    np.testing.assert_array_equal(ds.doc_idx, [0])


def test_abort_and_exception_leave_nothing(tmp_path):
    prefix = tmp_path / "a_text_document"
    w = IndexedDatasetWriter(prefix, np.dtype(np.uint16))
    w.add_document([1, 2, 3])
    assert list(tmp_path.iterdir())  # the temporary .bin exists while writing
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(prefix, np.dtype(np.uint16)) as w2:
            w2.add_document([1])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_token_rejected(tmp_path):
    with IndexedDatasetWriter(tmp_path / "r", np.dtype(np.uint16)) as w:
        with pytest.raises(ValueError, match="out of range"):
            w.add_document([70000])
        w.add_document([1])


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_text_document.idx"):
        IndexedDataset(tmp_path / "missing_text_document")
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + b"\x00" * 40)
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"bad\.idx.*magic"):
        IndexedDataset(tmp_path / "bad")
    prefix = tmp_path / "t"
    with IndexedDatasetWriter(prefix, np.dtype(np.uint16)) as w:
        w.add_document([1, 2, 3, 4])
    (tmp_path / "t.bin").write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="shorter"):
        IndexedDataset(prefix)
