"""From a run directory's cohort and cache to training batches, fast.

A batch is read with one fancy index into the uint8 memmap (rows sorted, so the reads go
forward through the file); no per-image `__getitem__`, no collate. The batch sampler
shuffles with a generator seeded from (seed, epoch), so an epoch's order is a pure function
of the two and a resumed run replays it. Under DDP each rank takes every world-th sample of
the (padded) permutation, as `torch.utils.data.DistributedSampler` does.

This batching scheme is cxrlab's own (the memmap cache is); everything around it is
PyTorch's `DataLoader` with `batch_size=None`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrlab.data.cache import CachedImages
from cxrlab.data.rundata import RunData
from cxrlab.errors import DataError

log = logging.getLogger(__name__)


#: Streams of randomness drawn per epoch; each gets its own seed from (seed, epoch, rank).
STREAM_SAMPLER, STREAM_AUGMENT, STREAM_TORCH = 0, 1, 2


def derive_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """A 63-bit seed for one stream of one epoch on one rank.

    `SeedSequence` mixes the four numbers, so nearby inputs give unrelated seeds (unlike
    `seed * 1000 + epoch`, which collides once epochs pass 1000).
    """
    state = np.random.SeedSequence([seed, epoch, stream, rank]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def pos_weight(labels: np.ndarray, targets: Sequence[str]) -> torch.Tensor:
    """BCE `pos_weight` per class: negatives / positives in `labels` (N, K).

    A class without positives gets 1.0 (and a warning): its loss has nothing to up-weight.
    """
    pos = labels.sum(axis=0)  # (K,)
    neg = labels.shape[0] - pos
    weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    for name, count in zip(targets, pos, strict=True):
        if count == 0:
            log.warning("no positive %s in the training split; its pos_weight is 1", name)
    return torch.tensor(weight, dtype=torch.float32)


class BatchDataset(Dataset):
    """`dataset[list_of_rows]` -> (images (B, 1, S, S) uint8, labels (B, K) float32, rows (B,)).

    Rows are sorted before the read so one fancy index walks the memmap forward; the
    three returned tensors stay aligned.
    """

    def __init__(self, cache: CachedImages, labels: np.ndarray) -> None:
        if len(cache) != len(labels):
            raise DataError(f"{len(cache)} cached images but {len(labels)} label rows")
        self.cache = cache  # pickles as a path, so DataLoader workers reopen the memmap
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        x = torch.from_numpy(np.ascontiguousarray(self.cache.images[rows])).unsqueeze(1)
        y = torch.from_numpy(self.labels[rows])
        return x, y, torch.from_numpy(rows)


class EpochBatchSampler(Sampler[list[int]]):
    """Yields lists of cohort rows; the order is a function of (seed, epoch) only.

    Args:
        rows: the cohort rows to draw from (one split).
        batch_size: samples per batch on each rank.
        shuffle: permute per epoch (training) or keep `rows` order (evaluation).
        seed: base seed; the epoch's generator is seeded with `derive_seed(seed, epoch, ...)`.
        drop_last: drop a final partial batch (only when a full batch exists, so a tiny
            split still yields one batch); avoids a size-1 batch for BatchNorm.
        rank, world_size: DDP shard; None (default) asks `torch.distributed` when the sampler
            is used (so a loader built before Lightning starts DDP still shards), and means
            0 and 1 outside DDP. The permutation is padded (wrapping round) to a multiple of
            the world size and rank r takes positions r, r + world, ..., as
            `DistributedSampler` does; every rank gets the same number of batches.
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if len(rows) == 0:
            raise DataError("cannot draw batches from an empty split")
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} should be >= 1")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._rank, self._world_size = rank, world_size
        self.epoch = 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size) this sampler draws for."""
        rank, world = self._rank, self._world_size
        if rank is None or world is None:
            dist = torch.distributed
            active = dist.is_available() and dist.is_initialized()
            rank = rank if rank is not None else (dist.get_rank() if active else 0)
            world = world if world is not None else (dist.get_world_size() if active else 1)
        if not 0 <= rank < world:
            raise DataError(f"rank={rank} must be in [0, world_size={world})")
        return rank, world

    @property
    def per_rank(self) -> int:
        """Samples each rank draws per epoch (after padding)."""
        return math.ceil(len(self.rows) / self.shard[1])

    @property
    def _drops_last(self) -> bool:
        # Only when a full batch exists, so a tiny split still yields one batch.
        return self.drop_last and self.per_rank >= self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start (as for `DistributedSampler`)."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This rank's rows for the current epoch, in draw order."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, STREAM_SAMPLER))
            perm = torch.randperm(len(self.rows), generator=gen).numpy()
            rows = self.rows[perm]
        else:
            rows = self.rows
        rank, world = self.shard
        total = self.per_rank * world
        if total > len(rows):  # pad by wrapping round, as DistributedSampler does
            rows = np.concatenate([rows, np.resize(rows, total - len(rows))])
        return rows[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        rows = self.order()
        stop = len(rows) - len(rows) % self.batch_size if self._drops_last else len(rows)
        for start in range(0, stop, self.batch_size):
            yield rows[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        if self._drops_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)


def make_loader(
    data: RunData,
    split: str,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of whole batches for one split (shuffled, drop-last when `train`).

    `rank`/`world_size` default to the DDP process group's, looked up when iterating.
    """
    rows = data.rows(split)
    if len(rows) == 0:
        raise DataError(f"split {split!r} of {data.run_dir} is empty; re-run prepare")
    sampler = EpochBatchSampler(
        rows,
        batch_size,
        shuffle=train,
        seed=seed,
        drop_last=train,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        BatchDataset(data.cache, data.labels),
        batch_size=None,  # the sampler yields whole batches
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Its own generator: each new iterator draws a worker base seed, and drawing it from
        # torch's global RNG would shift the dropout stream depending on when Lightning
        # creates the iterator (which differs between a fresh and a resumed run).
        generator=torch.Generator().manual_seed(seed),
    )
