"""DomainBed's per-environment splits and infinite samplers."""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset, Subset


def seed_hash(*args) -> int:
    """A seed from any arguments (DomainBed's misc.seed_hash): stable across runs and machines."""
    return int(hashlib.md5(str(args).encode()).hexdigest(), 16) % (2**31)


def split_env(dataset: Dataset, holdout_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """(out, in): a seeded ``holdout_fraction`` of the env held out for validation, the rest to train on."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_out = int(n * holdout_fraction)
    return Subset(dataset, order[:n_out]), Subset(dataset, order[n_out:])


def materialise(subset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of a small in-memory dataset as two tensors."""
    xs, ys = zip(*(subset[i] for i in range(len(subset))))
    return torch.stack(xs), torch.as_tensor(ys)


class InfiniteSampler:
    """Mini-batches drawn with replacement from one env, from its own generator (resumable state)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.y), (self.batch_size,), generator=self.generator)
        return self.x[idx], self.y[idx]
