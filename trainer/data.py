"""Training samples from an indexed dataset: split, packed, shuffled by seed, resumable.

- split: the documents are cut into train/valid/test ranges by a weight string such as `995,4,1`
  (document ranges, as gpt-neox/Megatron do).
- packing: in each epoch the split's documents are concatenated in a seeded random order and cut
  into samples of `seq_len + 1` tokens (input and shifted target), consecutive samples sharing one
  token; the tail shorter than a sample is dropped. Samples are then shuffled within the epoch.
- resuming: `MicroBatches` walks a global sample counter; its `state_dict` is that counter, so a
  resumed run continues with exactly the samples the stopped run would have seen next. Data-parallel
  rank r takes the r-th slice of each group of `world x micro_batch` samples, so N ranks see the
  same samples as one rank accumulating N times as many micro-batches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from jobs.cli import JobError
from jobs.indexed_dataset import IndexedDataset

SPLIT_NAMES = ("train", "valid", "test")


def open_dataset(prefix: str) -> IndexedDataset:
    try:
        return IndexedDataset(prefix)
    except (FileNotFoundError, ValueError) as exc:
        raise JobError(f"data-path {prefix}: {exc}") from None


def split_ranges(num_docs: int, weights: list[float]) -> dict[str, range]:
    """Document ranges per split; boundaries rounded as Megatron's get_train_valid_test_split_."""
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w * num_docs)))
    diff = bounds[-1] - num_docs
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    return {name: range(bounds[i], bounds[i + 1]) for i, name in enumerate(SPLIT_NAMES)}


class PackedSamples:
    """Samples of `seq_len + 1` tokens packed across the documents `docs` of `ds`."""

    def __init__(self, ds: IndexedDataset, docs: range, seq_len: int, seed: int, name: str = "train") -> None:
        self.ds, self.docs, self.seq_len, self.seed, self.name = ds, docs, seq_len, seed, name
        sizes = ds.sizes[docs.start : docs.stop].astype(np.int64)
        self.sizes = sizes
        total = int(sizes.sum())
        self.samples_per_epoch = max(total - 1, 0) // seq_len
        if self.samples_per_epoch == 0:
            raise JobError(
                f"data-path {ds.prefix}: the {name} split ({len(docs)} documents, {total} tokens) "
                f"is shorter than one sample of seq-length + 1 = {seq_len + 1} tokens"
            )

    def __len__(self) -> int:
        return self.samples_per_epoch

    @lru_cache(maxsize=2)  # noqa: B019 - one dataset object per split, lives as long as the run
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document order, cumulative token offsets, sample order) of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.sizes))
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(self.sizes[order], out=cum[1:])
        samples = rng.permutation(self.samples_per_epoch)
        return order, cum, samples

    def sample(self, k: int) -> np.ndarray:
        """The k-th sample of the endless stream (epoch k // len, shuffled within the epoch)."""
        epoch, i = divmod(k, self.samples_per_epoch)
        order, cum, samples = self._epoch(epoch)
        start = int(samples[i]) * self.seq_len
        return self._read(order, cum, start, self.seq_len + 1)

    def sample_in_order(self, k: int) -> np.ndarray:
        """The k-th sample of epoch 0 without sample shuffling (evaluation)."""
        order, cum, _ = self._epoch(0)
        return self._read(order, cum, (k % self.samples_per_epoch) * self.seq_len, self.seq_len + 1)

    def _read(self, order: np.ndarray, cum: np.ndarray, start: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        d = int(np.searchsorted(cum, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(cum[d])
            take = min(length - filled, int(self.sizes[order[d]]) - offset)
            out[filled : filled + take] = self.ds.get(self.docs.start + int(order[d]), offset, take)
            filled += take
            d += 1
        return out


def build_splits(
    prefix: str, split_weights: list[float], seq_len: int, seed: int
) -> dict[str, PackedSamples | None]:
    """PackedSamples per split (None for a split with no documents)."""
    ds = open_dataset(prefix)
    if len(ds) == 0:
        raise JobError(f"data-path {prefix}: the dataset holds no documents")
    out: dict[str, PackedSamples | None] = {}
    for name, docs in split_ranges(len(ds), split_weights).items():
        out[name] = PackedSamples(ds, docs, seq_len, seed, name) if len(docs) else None
    if out["train"] is None:
        raise JobError(f"data-path {prefix}: split leaves no documents for training")
    return out


def token_id_range(ds: IndexedDataset, chunk: int = 1 << 26) -> tuple[int, int]:
    """(smallest, largest) token id in the .bin, read through the memmap in chunks (bounded memory)."""
    tokens = ds.tokens
    low, high = 0, -1
    for start in range(0, len(tokens), chunk):
        part = tokens[start : start + chunk]
        low, high = min(low, int(part.min())), max(high, int(part.max()))
    return low, high


def check_token_ids(prefix: str, vocab_size: int) -> None:
    """Refuse, before any device work, a dataset whose ids the model's embedding cannot index
    (another tokenizer, or an unpadded vocabulary)."""
    ds = open_dataset(prefix)
    unsigned = np.issubdtype(ds.dtype, np.unsignedinteger)
    if unsigned and np.iinfo(ds.dtype).max < vocab_size:
        return  # the dtype cannot hold an id that large: nothing to read
    low, high = token_id_range(ds)
    if high >= vocab_size or low < 0:
        bad = high if high >= vocab_size else low
        raise JobError(
            f"data-path {prefix}: token id {bad} is outside the model's vocabulary of {vocab_size} "
            f"(ids 0..{vocab_size - 1}); was it tokenized with another tokenizer?"
        )


class MicroBatches:
    """Endless micro-batches (tokens (b, seq_len + 1)) for one data-parallel rank; resumable."""

    def __init__(self, samples: PackedSamples, micro_batch: int, rank: int = 0, world: int = 1) -> None:
        self.samples, self.micro_batch, self.rank, self.world = samples, micro_batch, rank, world
        self.consumed = 0  # global samples handed out, over all ranks

    def __iter__(self) -> MicroBatches:
        return self

    def __next__(self) -> torch.Tensor:
        first = self.consumed + self.rank * self.micro_batch
        batch = np.stack([self.samples.sample(first + j) for j in range(self.micro_batch)])
        self.consumed += self.micro_batch * self.world
        return torch.from_numpy(batch)

    def state_dict(self) -> dict:
        return {
            "consumed_samples": self.consumed,
            "seed": self.samples.seed,
            "samples_per_epoch": len(self.samples),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("samples_per_epoch", len(self.samples)) != len(self.samples):
            raise JobError(
                f"checkpoint data state was saved for {state['samples_per_epoch']} samples per epoch, "
                f"the dataset now gives {len(self.samples)} (different data, split or seq-length)"
            )
        self.consumed = int(state["consumed_samples"])


def eval_batches(samples: PackedSamples, micro_batch: int, iters: int, rank: int = 0, world: int = 1):
    """The same `iters` micro-batches on every evaluation, so losses are comparable across time."""
    for it in range(iters):
        first = (it * world + rank) * micro_batch
        yield torch.from_numpy(np.stack([samples.sample_in_order(first + j) for j in range(micro_batch)]))
