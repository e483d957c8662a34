"""A resumable, distributed batch sampler.

Each epoch draws one permutation of the dataset from (seed, epoch), pads it to a multiple of the world size and
gives rank r the positions r, r + W, r + 2W, ... (as torch's DistributedSampler does). Its batches can start at
any step of the epoch, which is how an interrupted run resumes in the middle of an epoch. Local batch k of all
ranks together is global batch k of a single process with batch size b * W, so one process and many see the
same data in the same order.
"""

from __future__ import annotations

import math
from typing import Iterator, List

import torch


class ResumableBatchSampler:
    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0):
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.start_step = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.size / self.world_size)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def set_position(self, epoch: int, step_in_epoch: int = 0) -> None:
        """Next iteration yields epoch ``epoch`` from its batch ``step_in_epoch`` onwards."""
        self.epoch, self.start_step = epoch, step_in_epoch

    def _indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        padded = order + order[: self.per_rank * self.world_size - self.size]
        return padded[self.rank:: self.world_size]

    def __iter__(self) -> Iterator[List[int]]:
        mine = self._indices()
        start, self.start_step = self.start_step, 0
        for k in range(start, self.steps_per_epoch()):
            yield mine[k * self.batch_size: (k + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start_step


def shard(size: int, rank: int, world_size: int) -> List[int]:
    """Validation items of one rank: every W-th item, no padding (results are summed over ranks)."""
    return list(range(rank, size, world_size))
