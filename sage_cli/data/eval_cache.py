"""The evaluation cache: each environment's evaluation pixels (the deterministic resize to ``image_size``, uint8,
(N, 3, S, S)) decoded once per dataset folder and size, then memory-mapped at every checkpoint.

Evaluation is a resize, so its pixels never change; decoding every image of every environment again at each
checkpoint is what made DomainNet cost ~24 minutes of CPU per checkpoint. The cache holds exactly what the
evaluation transform produced, and the device normalises it, so accuracies are those of decoding (same pixels,
same arithmetic). It is keyed by the dataset, the size and the image list (paths and labels): a folder that
changes gets a new cache. Images overwritten in place under the same names do not: the key leaves out file
sizes and times, so that a copy of the data root (to a node's local disk, without preserved times) keeps its
cache. Built atomically (a temporary folder renamed into place, under a lock so parallel jobs build it once),
after a disk-space check.

Where: ``dataset.cache_dir``, else ``$SAGE_CACHE``, else ``<data root>/.sage-cache``.
Not for: training images (augmented afresh every step) or in-memory datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import UserError

VERSION = 1  # of the cache's format: a change makes new caches
CHUNK = 64  # images per work item while building


def cache_root(data_base: Path, cache_dir: str | None) -> Path:
    chosen = cache_dir or os.environ.get("SAGE_CACHE")
    return Path(chosen).expanduser() if chosen else data_base.parent / ".sage-cache"


def fingerprint(name: str, image_size: int, envs, base: Path) -> str:
    digest = hashlib.sha256(f"{VERSION}|{name}|{image_size}".encode())
    for i, env in enumerate(envs):
        for path, label in env.samples:
            digest.update(f"{i}\t{Path(path).relative_to(base)}\t{label}\n".encode())
        digest.update(f"{env.corrupt_images}\n".encode())
    return digest.hexdigest()[:16]


def folder_for(name: str, image_size: int, envs, base: Path, cache_dir: str | None) -> Path:
    return cache_root(base, cache_dir) / f"{name}-{image_size}px-{fingerprint(name, image_size, envs, base)}"


def bytes_needed(envs, image_size: int) -> int:
    return sum(len(env) for env in envs) * 3 * image_size * image_size


def _env_file(folder: Path, i: int) -> Path:
    return folder / f"env{i}.npy"


def is_built(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def check_space(folder: Path, needed: int) -> None:
    from ..filesystem import write_problem

    parent = folder.parent
    problem = write_problem(parent)
    if problem:
        raise UserError(f"cannot write the evaluation cache under {parent} ({problem}): set dataset.cache_dir "
                        "(or $SAGE_CACHE) to a writable folder, or dataset.eval_cache: false")
    free = shutil.disk_usage(parent).free
    if needed * 1.02 + 2**20 > free:
        raise UserError(f"the evaluation cache needs {needed / 1e9:.1f} GB under {parent}, {free / 1e9:.1f} GB are "
                        "free: set dataset.cache_dir (or $SAGE_CACHE) to a folder with room, or dataset.eval_cache: false")


def build(folder: Path, envs, image_size: int, workers: int, say=print, progress=None) -> None:
    """Decode every env's evaluation pixels into ``folder`` (atomically); ``progress(n)`` after n images."""
    import numpy as np
    import torch

    from .pipeline import Item, Pipeline

    needed = bytes_needed(envs, image_size)
    from ..filesystem import file_lock

    with file_lock(folder.parent / f".{folder.name}.lock"):
        if is_built(folder):  # a parallel job built it while this one waited
            return
        check_space(folder, needed)
        total = sum(len(env) for env in envs)
        say(f"building the evaluation cache: {total:,} images at {image_size}² ({needed / 1e9:.2f} GB, once) "
            f"in {folder}")
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            arrays = [np.lib.format.open_memmap(_env_file(tmp, i), mode="w+", dtype=np.uint8,
                                                shape=(len(env), 3, image_size, image_size))
                      for i, env in enumerate(envs)]
            items = [Item.of(i, torch.arange(start, min(start + CHUNK, len(env))))
                     for i, env in enumerate(envs) for start in range(0, len(env), CHUNK)]
            pipeline = Pipeline(envs, workers)
            done = 0
            for item, (x, _) in zip(items, pipeline.stream(items)):
                arrays[item.env][item.indices[0]:item.indices[-1] + 1] = x.numpy()
                done += len(item.indices)
                if progress is not None:
                    progress(done)
            for a in arrays:
                a.flush()
            del arrays
            (tmp / "manifest.json").write_text(json.dumps(
                {"version": VERSION, "image_size": image_size, "envs": [len(env) for env in envs]}))
            os.replace(tmp, folder)  # atomic: a reader sees no cache or a whole one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def attach(folder: Path, envs) -> None:
    """Memory-map the built cache into each env (``env.pixels``)."""
    import numpy as np

    meta = json.loads((folder / "manifest.json").read_text())
    if meta.get("envs") != [len(env) for env in envs]:
        raise UserError(f"the evaluation cache {folder} does not match the dataset folder; delete it to rebuild")
    for i, env in enumerate(envs):
        env.pixels = np.load(_env_file(folder, i), mmap_mode="r")


class EvalCache:
    """A dataset's evaluation cache: where it is, and whether it is built. ``plan`` checks the disk before any
    run exists; ``ensure`` builds it (once, saying so) and memory-maps it into the envs."""

    def __init__(self, name: str, dataset, cache_dir: str | None):
        self.envs, self.image_size = dataset.datasets, dataset.image_size
        # another evaluation transform gives other pixels: a cache of its own (DomainBed's resize keeps the name)
        transform = getattr(dataset, "eval_transform", "resize")
        tagged = name if transform == "resize" else f"{name}-{transform.replace('_', '')}"
        self.folder = folder_for(tagged, dataset.image_size, self.envs, dataset.base, cache_dir)

    @property
    def built(self) -> bool:
        return is_built(self.folder)

    def plan(self) -> EvalCache:
        """Attach it if built, else check there is room to build it (one line if not)."""
        if self.built:
            attach(self.folder, self.envs)
        else:
            check_space(self.folder, bytes_needed(self.envs, self.image_size))
        return self

    def ensure(self, workers: int, say=print, show_progress: bool = True) -> Path:
        if not self.built:
            total = sum(len(env) for env in self.envs)
            if show_progress:
                from rich.progress import Progress

                with Progress(transient=True) as bar:
                    task = bar.add_task("evaluation cache", total=total)
                    build(self.folder, self.envs, self.image_size, workers, say,
                          progress=lambda n: bar.update(task, completed=n))
            else:
                build(self.folder, self.envs, self.image_size, workers, say)
        if self.envs and self.envs[0].pixels is None:
            attach(self.folder, self.envs)
        return self.folder
