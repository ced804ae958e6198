"""Input pipelines: the images a step or an evaluation needs, decoded in worker processes ahead of use.

What a batch holds is decided in the training process (``Item``: an env, its indices, their augmentation
seeds, drawn from the samplers' generators); workers only execute it. So the worker count never changes a
result, and a checkpoint can hold the sampler state of the first batch not yet consumed. One persistent pool
serves every environment (torch's DataLoader: worker processes started once, in-order delivery, pinned memory
for a CUDA device); ``workers: 0`` loads in the training process, the same items in the same order.

Not for: in-memory datasets (the embedded digits): their batches are tensor slices, cheaper than any transfer.
Multi-task batches go through it too (``load=mtl.data.task_batch``): training an epoch at a time, the test set at
each evaluation.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..errors import UserError
from .splits import load_batch

# work items ahead per worker (torch's default): with one step per item, 2 × workers steps are loading or ready
PREFETCH_PER_WORKER = 2


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, and SLURM's ``--cpus-per-task`` where set."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def resolve_workers(setting: int | str) -> int:
    """``dataset.workers``: ``auto`` = the CPUs this process may use minus one (the training process's own)."""
    if setting == "auto":
        return max(0, available_cpus() - 1)
    return int(setting)


def in_memory(envs) -> bool:
    return all(hasattr(env, "batch") for env in envs)


@dataclass(frozen=True)
class Item:
    """Images ``indices`` of env ``env``: augmented with per-image ``seeds`` (training), or resized (seeds None)."""

    env: int
    indices: tuple[int, ...]
    seeds: tuple[int, ...] | None = None

    @classmethod
    def of(cls, env: int, indices: torch.Tensor, seeds: torch.Tensor | None = None) -> Item:
        return cls(env, tuple(indices.tolist()), None if seeds is None else tuple(seeds.tolist()))


class _Images(torch.utils.data.Dataset):
    """An ``Item`` → (x, y) on the CPU; a tuple of items (one training step's batches) → their concatenation, so
    a step crosses from a worker in two tensors, not two per env. What a worker runs (the envs travel to it once,
    when it starts)."""

    def __init__(self, envs, load=load_batch):
        self.envs, self.load = list(envs), load

    def _load(self, item: Item):
        train = item.seeds is not None
        seeds = torch.tensor(item.seeds, dtype=torch.long) if train else None
        return self.load(self.envs[item.env], torch.tensor(item.indices, dtype=torch.long), train, seeds)

    def __getitem__(self, work: Item | tuple[Item, ...]):
        try:
            if isinstance(work, Item):
                return self._load(work)
            batches = [self._load(item) for item in work]
            return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        except UserError as exc:  # comes back as itself: a worker's exception would arrive wrapped in its traceback
            return _Failed(str(exc))

    def __len__(self) -> int:  # never asked by a sampler of items; DataLoader's type checks want one
        return sum(len(env) for env in self.envs)


@dataclass(frozen=True)
class _Failed:
    message: str


def _checked(batches):
    for batch in batches:
        if isinstance(batch, _Failed):
            raise UserError(batch.message)
        yield batch


def _worker_modules(envs, load) -> list[str]:
    """What a worker imports to run ``load`` on ``envs``: torch, the modules of ``load`` and of the envs' classes,
    and what the envs name in ``worker_imports`` (decoders they import only when they first read a file)."""
    names = {"torch", load.__module__}
    for env in envs:
        names.add(type(env).__module__)
        names.update(getattr(env, "worker_imports", ()))
    return sorted(names)


def _start_context(envs, load):
    """The context workers start in, its fork server already starting (it imports while the run sets up).

    forkserver: workers fork from a small clean server, not from a training process with MLflow's and rich's
    threads running (fork there can deadlock a child on a lock held by another thread). The server imports what
    the workers need once, before its first fork: each worker importing torch, torchvision and PIL itself costs
    ~4 s of CPU, 15 workers a minute of it at every start. Its preload is fixed when it starts (the first pool of
    the process): a later pool's workers import anything else themselves."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_worker_modules(envs, load))
    forkserver.ensure_running()  # returns at once: the server imports in its own process
    return context


def _quiet_worker(_):
    torch.set_num_threads(1)


class Pipeline:
    """Runs a stream of items over ``envs``: in order, ``workers`` processes ahead of the consumer (0: here).

    ``stream(items)`` takes any iterable of ``Item``s or tuples of them (it may be endless and decide its items
    lazily; it is pulled in this process, a few items ahead of what has been consumed), and yields (x, y) per
    element. ``persistent``: the same item list streamed again reuses the workers (evaluation, MTL epochs).
    ``load(env, indices, train, seeds)`` makes a batch (a module-level function: workers receive it pickled)."""

    def __init__(self, envs, workers: int, pin_memory: bool = False, persistent: bool = False, load=load_batch):
        self.envs, self.workers, self.pin_memory, self.load = list(envs), int(workers), pin_memory, load
        self.persistent = persistent and self.workers > 0
        self._loaders: dict[int, torch.utils.data.DataLoader] = {}
        self._context = _start_context(self.envs, load) if self.workers > 0 else None

    def stream(self, items: Iterable[Item]) -> Iterator:
        if self.workers == 0:
            images = _Images(self.envs, self.load)
            return _checked(images[item] for item in items)
        return _checked(iter(self._loader(items)))

    def _loader(self, items):
        # a persistent pool keeps its workers between passes over the same item list (evaluation)
        key = id(items) if self.persistent else None
        if key in self._loaders:
            return self._loaders[key]
        loader = torch.utils.data.DataLoader(
            _Images(self.envs, self.load), batch_size=None, sampler=items, num_workers=self.workers,
            pin_memory=self.pin_memory, prefetch_factor=PREFETCH_PER_WORKER, persistent_workers=self.persistent,
            multiprocessing_context=self._context, worker_init_fn=_quiet_worker)
        if self.persistent:
            self._loaders[key] = loader
        return loader

    def close(self) -> None:
        for loader in self._loaders.values():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
        self._loaders.clear()
