"""``sage bench --data``: the input pipeline of a real run on a dataset folder — training images per second with
the loader's workers and in the training process, evaluation images per second from the cache and by decoding,
and a SAGE step including its loading both ways. The same classes a run uses (``train/dg.py``), nothing mocked."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..recipe import Recipe

BACKBONES = {  # sage bench's model names → a recipe's backbone section
    "small_cnn": {"name": "small_cnn"},
    "resnet50": {"name": "resnet50", "freeze_bn": True},
    "vit_b16": {"name": "clip", "model": "ViT-B-16"},
    "vit_tiny": {"name": "clip", "model": "ViT-Tiny-16"},
}


def recipe_for(dataset: str, root: str, model: str, image_size: int, batch: int, workers: int, precision: str,
               device: str) -> Recipe:
    return Recipe.model_validate({
        "dataset": {"name": dataset, "root": root, "image_size": image_size, "workers": workers, "test_envs": [0]},
        "backbone": BACKBONES[model], "optimizer": {"method": "sage"},
        "training": {"batch_size": batch, "precision": precision, "device": device, "steps": 10**6},
    })


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def _task(recipe: Recipe, data, workers: int):
    from ..train.dg import DGTask
    from ..train.runtime import configure

    runtime = configure(recipe.training, workers)
    return DGTask(recipe, data, runtime), runtime


def _train_rate(task, steps: int) -> float:
    batcher = task.batcher
    for _ in range(2):  # the pool starts, the first batches arrive
        batcher.next()
    t0 = time.perf_counter()
    images = 0
    for _ in range(steps):
        _, ys, _ = batcher.next()
        images += sum(len(y) for y in ys)
    return _rate(images, time.perf_counter() - t0)


def _step_seconds(task, steps: int) -> float:
    for i in range(2):  # warm-up: the pool, allocators, SAGE's one-time check of its fast path
        task.step(i)
    _sync(task.device)
    t0 = time.perf_counter()
    for i in range(steps):
        task.step(i)
    _sync(task.device)
    return (time.perf_counter() - t0) / steps


def _eval_rate(evaluation, device, repeats: int = 2) -> float:
    """Images per second of an evaluation's loading alone (to the device, normalised): what the cache saves."""
    best = 0.0
    for _ in range(repeats + 1):  # the first pass starts the workers (decoding) or warms the page cache
        t0 = time.perf_counter()
        images = sum(len(y) for _, _, y in evaluation.batches())
        _sync(device)
        best = max(best, _rate(images, time.perf_counter() - t0))
    return best


def run(dataset: str, root: str, model: str, image_size: int, batch: int, workers: int, steps: int,
        precision: str, device: str, say=print) -> dict:
    from ..data.pipeline import resolve_workers
    from ..train.dg import Evaluation, load_dg_data

    workers = resolve_workers(workers)
    recipe = recipe_for(dataset, root, model, image_size, batch, workers, precision, device)
    t0 = time.perf_counter()
    data = load_dg_data(recipe)
    load_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.eval_cache.ensure(workers, say=say)  # what a run's first evaluation does (nothing when built already)
    cache_seconds = time.perf_counter() - t0
    pooled, runtime = _task(recipe, data, workers)
    inprocess, _ = _task(recipe, data, 0)
    try:
        say("timing the training input …")
        train_rate = _train_rate(pooled, steps)
        train_rate_inprocess = _train_rate(inprocess, steps)
        say("timing steps with their loading …")
        step_with_data = _step_seconds(pooled, steps)
        step_with_data_inprocess = _step_seconds(inprocess, steps)
        for task in (pooled, inprocess):  # as in a run, whose training workers sit idle behind a full queue while it
            task.batcher.close()          # evaluates: none may still be decoding while evaluation is timed
        say("timing evaluation …")
        eval_rate = _eval_rate(pooled.evaluation, runtime.device)
        envs = [s["in"].env for s in data.splits]
        cached = [env.pixels for env in envs]
        for env in envs:  # the same evaluation without its cache: decoded in the training process (as every
            env.pixels = None  # evaluation was before the cache), and by the workers (dataset.eval_cache: false)
        rates = {}
        for n in (0, workers):
            decode = Evaluation(replace(data, eval_cache=None), runtime, n)
            try:
                rates[n] = _eval_rate(decode, runtime.device, repeats=1)
            finally:
                decode.close()
        for env, pixels in zip(envs, cached):
            env.pixels = pixels
    finally:
        pooled.close()
        inprocess.close()
    n_images = sum(len(s["in"]) + len(s["out"]) for s in data.splits)
    return {
        "workload": f"{model} on {dataset} ({root}), {len(data.train_envs)} × {batch} images of {image_size}² per step",
        "model": model, "dataset": dataset, "device": str(runtime.device), "precision": precision,
        "image_size": image_size, "batch": batch, "K": len(data.train_envs), "images": n_images,
        "workers": workers, "steps": steps, "data_load_seconds": load_seconds, "eval_cache_build_seconds": cache_seconds,
        "train_images_per_second": train_rate, "train_images_per_second_inprocess": train_rate_inprocess,
        "eval_images_per_second": eval_rate, "eval_images_per_second_decode": rates[0],
        "eval_images_per_second_decode_workers": rates[workers],
        "step_seconds_with_data": step_with_data, "step_seconds_with_data_inprocess": step_with_data_inprocess,
        "ratio_step_with_data": step_with_data / step_with_data_inprocess,
        "ratio_eval_cache_decode": eval_rate / rates[0],
        "ratio_eval_cache_decode_workers": eval_rate / rates[workers],
        "per_domain_path": getattr(getattr(pooled.optimizer, "per_domain", None), "path", None),
    }
