"""Resumable training loaders: an endless seeded stream of samples, sharded by rank.

Sample ``k`` of a stream is image ``perm_e[k mod N]`` of the dataset (``perm_e`` a seeded
permutation per epoch ``e = k // N``) mapped with a numpy generator seeded by ``(seed, k)``.
Global batch ``b`` holds stream positions ``[b·G, (b+1)·G)``; rank ``r`` takes its slice of
``G / world_size`` of them. Hence the data of step ``b`` depends only on ``(seed, b)`` — not on
the number of processes, the number of workers, or whether the run was resumed — and the
loader's whole state is ``(seed, batches consumed)``.
"""

import itertools
import logging
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["StreamDataset", "StreamSampler", "ResumableLoader", "build_resumable_loader"]

logger = logging.getLogger(__name__)


class StreamDataset(Dataset):
    """Map stream position ``k`` to the mapped sample ``mapper(dicts[perm(k)], rng_k)``."""

    def __init__(self, dataset_dicts: Sequence[dict], mapper: Callable, *, seed: int, shuffle=True):
        """
        Args:
            dataset_dicts: detectron2 dataset dicts.
            mapper: ``mapper(dataset_dict, rng=np.random.Generator) -> dict``.
            seed: seed of the permutations and of the per-sample generators.
            shuffle: shuffle each epoch (else the dataset order repeats).
        """
        if len(dataset_dicts) == 0:
            raise ValueError("StreamDataset: the dataset is empty")
        self.dataset_dicts = list(dataset_dicts)
        self.mapper = mapper
        self.seed = int(seed)
        self.shuffle = shuffle
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def dict_index(self, position: int) -> int:
        """Index into ``dataset_dicts`` of stream position ``position``."""
        epoch, offset = divmod(position, len(self.dataset_dicts))
        if not self.shuffle:
            return offset
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = torch.randperm(len(self.dataset_dicts), generator=gen)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def __getitem__(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, position])
        return self.mapper(self.dataset_dicts[self.dict_index(position)], rng=rng)


class StreamSampler(Sampler):
    """Endless stream positions of one rank, from global batch ``start_batch`` on."""

    def __init__(self, *, global_batch: int, rank: int, world_size: int, start_batch: int = 0):
        if global_batch % world_size != 0:
            raise ValueError(
                f"global batch {global_batch} is not divisible by the {world_size} processes"
            )
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        for b in itertools.count(self.start_batch):
            first = b * self.global_batch + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)


class ResumableLoader:
    """A training loader whose position is saved in checkpoints (a checkpointable).

    ``next()`` returns the rank's list of mapped dicts of the next global batch.
    ``state_dict()`` is ``{"seed", "batches"}``; loading it restarts the stream there.
    """

    def __init__(self, dataset: StreamDataset, *, global_batch: int, num_workers: int):
        """
        Args:
            dataset: the stream.
            global_batch: images per step over all processes.
            num_workers: DataLoader worker processes of this rank.
        """
        self.dataset = dataset
        self.global_batch = global_batch
        self.num_workers = num_workers
        self.batches = 0
        self._iter: Optional[Iterator[List[dict]]] = None

    def _make_iter(self) -> Iterator[List[dict]]:
        sampler = StreamSampler(
            global_batch=self.global_batch,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            start_batch=self.batches,
        )
        loader = DataLoader(
            self.dataset,
            sampler=sampler,
            batch_size=sampler.per_rank,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            # Workers' seeds come from this generator, not the global RNG, so creating the
            # iterator does not shift the model's random stream.
            generator=torch.Generator().manual_seed(self.dataset.seed),
        )
        return iter(loader)

    def next(self) -> List[dict]:
        """The rank's share of the next global batch (a list of mapped dicts)."""
        if self._iter is None:
            self._iter = self._make_iter()
        batch = next(self._iter)
        self.batches += 1
        return batch

    def __iter__(self) -> Iterator[List[dict]]:
        while True:
            yield self.next()

    def state_dict(self) -> dict:
        return {"seed": self.dataset.seed, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.seed = int(state["seed"])
        self.dataset._perm_epoch = -1
        self.batches = int(state["batches"])
        self._iter = None


def build_resumable_loader(
    dataset_names: Sequence[str],
    mapper: Callable,
    *,
    global_batch: int,
    num_workers: int,
    seed: int,
) -> ResumableLoader:
    """A :class:`ResumableLoader` over the registered datasets ``dataset_names``.

    Args:
        dataset_names: registered dataset names (concatenated).
        mapper: the mapper (``mapper(dict, rng=...)``).
        global_batch: images per step over all processes.
        num_workers: DataLoader workers per process.
        seed: stream seed (the same on every rank).
    """
    dicts = get_detection_dataset_dicts(list(dataset_names), filter_empty=False)
    logger.info(
        "Training stream over %s: %d images, seed %d", list(dataset_names), len(dicts), seed
    )
    return ResumableLoader(
        StreamDataset(dicts, mapper, seed=seed), global_batch=global_batch, num_workers=num_workers
    )
