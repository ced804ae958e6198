"""Environments, DomainBed's per-environment splits, and resumable infinite samplers.

An environment is anything with ``labels`` (a LongTensor), ``len()`` and ``load(i, train, seed) -> (x, y)``;
in-memory ones may also offer ``batch(indices)``, a fast path, and image folders ``batch_pixels(indices)``
(evaluation pixels from a cache) and ``normalize`` (uint8 pixels → the model's input, applied on the device).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def seed_hash(*args) -> int:
    """A seed from any arguments (DomainBed's misc.seed_hash): stable across runs and machines."""
    return int(hashlib.md5(str(args).encode()).hexdigest(), 16) % (2**31)


class TensorEnv:
    """An environment held in memory as two tensors (no augmentation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int, train: bool = False, seed: int = 0):
        return self.x[i], self.labels[i]

    def batch(self, indices: torch.Tensor):
        return self.x[indices], self.labels[indices]


def load_batch(env, indices: torch.Tensor, train: bool, seeds: torch.Tensor | None = None):
    """(x, y) of ``indices``, on the CPU, as the env stores them (uint8 pixels for image folders)."""
    if hasattr(env, "batch"):
        return env.batch(indices)
    cached = env.batch_pixels(indices) if not train and hasattr(env, "batch_pixels") else None
    if cached is not None:
        return cached
    seeds = seeds if seeds is not None else torch.zeros(len(indices), dtype=torch.long)
    items = [env.load(int(i), train, int(s)) for i, s in zip(indices, seeds)]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.long)


def to_device(env, x: torch.Tensor, y: torch.Tensor, device, out: torch.Tensor | None = None):
    """A batch of ``env`` as the model reads it on ``device`` (copied without waiting when the memory is pinned,
    normalised there when the env stores uint8 pixels, into ``out`` when given)."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    normalize = getattr(env, "normalize", None)
    return (normalize(x, out) if normalize is not None else x), y


@dataclass
class Split:
    env: object
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)


def split_env(env, holdout_fraction: float, seed: int) -> tuple[Split, Split]:
    """(out, in): a seeded ``holdout_fraction`` of the env held out for validation, the rest to train on."""
    order = torch.randperm(len(env), generator=torch.Generator().manual_seed(seed))
    n_out = int(len(env) * holdout_fraction)
    return Split(env, order[:n_out]), Split(env, order[n_out:])


class InfiniteSampler:
    """Which images each mini-batch of one split holds (drawn with replacement) and their augmentation seeds, from
    its own generator (resumable state)."""

    def __init__(self, split: Split, batch_size: int, seed: int):
        self.split, self.batch_size = split, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(env indices, per-item augmentation seeds) of the next ``n`` images: what a batch is, decided here;
        loading it (here or in a worker) only executes."""
        n = self.batch_size if n is None else n
        positions = torch.randint(len(self.split), (n,), generator=self.generator)
        seeds = torch.randint(2**31 - 1, (n,), generator=self.generator)
        return self.split.indices[positions], seeds

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class ConcatSampler:
    """Batches from one shuffled concatenation of several splits (DISAM's DataLoader over a ConcatDataset of the
    source domains, ``shuffle=True, drop_last=True``): each epoch a permutation of its own (seeded by the epoch),
    ``batch_size`` images at a time without replacement, the last partial batch dropped. Its state is two
    integers (epoch, position), so a resumed run draws what an uninterrupted one would."""

    def __init__(self, splits: list[Split], batch_size: int, seed: int):
        self.splits, self.batch_size, self.seed = splits, batch_size, seed
        self.offsets = torch.tensor([0, *torch.tensor([len(s) for s in splits]).cumsum(0).tolist()])
        self.total = int(self.offsets[-1])
        self.epoch = self.position = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.total // self.batch_size

    def _order(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            generator = torch.Generator().manual_seed(seed_hash(self.seed, "epoch", self.epoch))
            self._perm = (self.epoch, torch.randperm(self.total, generator=generator))
        return self._perm[1]

    def draw(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(split number, env indices, augmentation seeds) of each split that has images in the next batch."""
        if self.position + self.batch_size > self.total:
            self.epoch, self.position = self.epoch + 1, 0
        chosen = self._order()[self.position:self.position + self.batch_size]
        generator = torch.Generator().manual_seed(seed_hash(self.seed, "augment", self.epoch, self.position))
        seeds = torch.randint(2**31 - 1, (len(chosen),), generator=generator)
        self.position += self.batch_size
        which = torch.bucketize(chosen, self.offsets[1:], right=True)
        out = []
        for k, split in enumerate(self.splits):
            mask = which == k
            if mask.any():
                out.append((k, split.indices[chosen[mask] - self.offsets[k]], seeds[mask]))
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
