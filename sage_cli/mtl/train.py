"""The MTL loop: epochs over the training split, per-task losses → aggregator → optimizer (SAGE-X when the
optimizer is SAGE), StepLR, per-epoch test metrics and Δm, and a resumable checkpoint after every epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..catalog import AGGREGATORS
from ..data.splits import seed_hash
from ..errors import Preempted, TrainingDiverged, UserError
from ..optim import build_optimizer
from ..optim.grads import frozen_norm_stats
from ..recipe import Recipe
from ..train.checkpoint import Checkpoint, GeneratorState, restore_training_state, save_training_state
from ..train.dg import pick_device, record_stats
from .data import DENSE, DenseDataset, DigitPairs, check_divisible
from .losses import task_loss
from .metrics import CITYSCAPES, NYUV2, ConfusionMatrix, delta_m, depth_errors, normal_angles, normal_metrics
from .models import MTAN, DigitPairsNet

BENCHMARKS = {"nyuv2": NYUV2, "cityscapes": CITYSCAPES}


@dataclass
class MTLData:
    train: object
    test: object
    tasks: tuple[str, ...]
    n_classes: int


def load_mtl_data(recipe: Recipe) -> MTLData:
    name = recipe.dataset.name
    if name == "mtl_digits":
        return MTLData(DigitPairs("train"), DigitPairs("test"), DigitPairs.tasks, 10)
    from ..data.domainbed import data_root

    spec = DENSE[name]
    base = data_root(recipe.dataset.root, must_exist=False)  # a missing root is reported with its layout below
    base = base / name if (base / name / "train").is_dir() else base
    if not (base / "train").is_dir():
        raise UserError(f"{name}: expected {base}/train and {base}/val in the .npy layout")
    train, test = DenseDataset(base, "train", spec), DenseDataset(base, "val", spec)
    check_divisible(train.load(0)[0].shape)
    return MTLData(train, test, spec.tasks, spec.n_classes)


def load_batch(ds, indices, train: bool, seeds=None):
    if hasattr(ds, "batch"):
        return ds.batch(indices)
    seeds = seeds if seeds is not None else torch.zeros(len(indices), dtype=torch.long)
    items = [ds.load(int(i), train, int(s)) for i, s in zip(indices, seeds)]
    x = torch.stack([img for img, _ in items])
    targets = {t: torch.stack([tg[t] for _, tg in items]) for t in items[0][1]}
    return x, targets


def build_model(recipe: Recipe, data: MTLData) -> torch.nn.Module:
    name = recipe.backbone.name
    if name == "mtan":
        return MTAN(data.tasks, data.n_classes)
    if name == "mtan_narrow":
        return MTAN(data.tasks, data.n_classes, filters=(8, 16, 32, 64, 64))
    if name == "digit_pairs_cnn":
        return DigitPairsNet(data.tasks, data.n_classes)
    raise UserError(f"backbone '{name}' is not an MTL network: use mtan, mtan_narrow or digit_pairs_cnn")


@torch.no_grad()
def evaluate(model, data: MTLData, recipe: Recipe, device) -> dict[str, float]:
    model.eval()
    metrics: dict[str, float] = {}
    n = len(data.test)
    if recipe.dataset.name == "mtl_digits":
        correct = {t: 0 for t in data.tasks}
        for i in range(0, n, 512):
            x, y = load_batch(data.test, torch.arange(i, min(i + 512, n)), train=False)
            out = model(x.to(device))
            for t in data.tasks:
                correct[t] += int((out[t].argmax(1).cpu() == y[t]).sum())
        metrics = {f"{t}_acc": 100 * c / n for t, c in correct.items()}
        metrics["mean_acc"] = sum(metrics.values()) / len(data.tasks)
        model.train()
        return metrics
    cm, angles = ConfusionMatrix(data.n_classes), []
    abs_sum = rel_sum = count = 0.0
    for i in range(0, n, 4):
        x, y = load_batch(data.test, torch.arange(i, min(i + 4, n)), train=False)
        out = {k: v.cpu() for k, v in model(x.to(device)).items()}
        cm.update(out["segmentation"].argmax(1), y["segmentation"])
        valid = (y["depth"] != 0).sum().item()
        if valid:
            a, r = depth_errors(out["depth"], y["depth"])
            abs_sum, rel_sum, count = abs_sum + a * valid, rel_sum + r * valid, count + valid
        if "normal" in y:
            angles.append(normal_angles(out["normal"], y["normal"]))
    # Table 2 states Cityscapes' relative error in percent (STL 27.77) and NYU-v2's as a fraction (0.2780)
    rel_scale = 100.0 if recipe.dataset.name == "cityscapes" else 1.0
    metrics = {"miou": 100 * cm.miou(), "pixacc": 100 * cm.pixel_accuracy(),
               "abs": abs_sum / max(count, 1), "rel": rel_scale * rel_sum / max(count, 1)}
    if angles:
        metrics.update(normal_metrics(torch.cat(angles)))
    bench = BENCHMARKS[recipe.dataset.name]
    metrics["delta_m"] = delta_m([metrics[m] for m in bench.metrics], bench.stl, bench.higher_is_better)
    model.train()
    return metrics


@dataclass
class MTLResult:
    history: list[Checkpoint]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: MTLData
    resumed_from: int | None = None


def train_mtl(recipe: Recipe, data: MTLData | None = None, on_checkpoint=None, progress=None,
              checkpoint_path: str | Path | None = None, extra_state: dict | None = None,
              should_stop=None) -> MTLResult:
    """Train an MTL recipe; one checkpoint (metrics, saved state) per epoch, and the initial state. Same contract
    as train_dg, except that ``should_stop()`` is obeyed after any step: mid-epoch, nothing is saved and
    ``Preempted`` names the last epoch saved, which the resumed run continues from."""
    seed = recipe.training.seed
    torch.manual_seed(seed)
    device = pick_device(recipe.training.device)
    data = data if data is not None else load_mtl_data(recipe)
    model = build_model(recipe, data).to(device).train()
    agg_cfg = recipe.aggregator
    aggregator = AGGREGATORS.get(agg_cfg.name)(len(data.tasks), agg_cfg, seed_hash(seed, "aggregator"))
    aggregator.bind(model.shared_parameters())
    optimizer = build_optimizer(model, recipe.optimizer, seed=seed_hash(seed, "noise"), extra=aggregator.parameters(),
                                aggregator=aggregator)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.training.lr_step_epochs,
                                                gamma=recipe.training.lr_gamma)
    sampler = torch.Generator().manual_seed(seed_hash(seed, "mtl-order"))
    parts = {"model": model, "optimizer": optimizer, "aggregator": aggregator, "scheduler": scheduler,
             "sampler": GeneratorState(sampler)}
    history, resumed_from = restore_training_state(checkpoint_path, parts)
    start = resumed_from or 0
    epochs, batch = recipe.training.epochs, recipe.training.batch_size
    per_epoch = math.ceil(len(data.train) / batch)

    def save(epoch: int) -> None:
        save_training_state(checkpoint_path, epoch, epoch == epochs - 1, recipe.hash(), parts, history, extra_state)

    if checkpoint_path is not None and resumed_from is None:
        save(-1)  # the initial state: a stop within the first epoch also resumes, in the same MLflow run

    for epoch in range(start, epochs):
        order = torch.randperm(len(data.train), generator=sampler)
        seeds = torch.randint(2**31 - 1, (len(data.train),), generator=sampler)
        sums, window = torch.zeros(len(data.tasks)), {}
        t_epoch = time.perf_counter()
        for b in range(per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            x, y = load_batch(data.train, idx, train=True, seeds=seeds[b * batch:(b + 1) * batch])
            x, y = x.to(device), {t: v.to(device) for t, v in y.items()}

            def closure():
                out = model(x)
                return torch.stack([task_loss(t, out[t], y[t]) for t in data.tasks])

            t0 = time.perf_counter()
            losses = optimizer.step(closure)
            if not torch.isfinite(losses).all():
                raise TrainingDiverged(epoch * per_epoch + b, float(losses.sum()))
            if aggregator.wants_losses_after_update:  # FAMO: how much each task improved on this batch
                with torch.no_grad(), frozen_norm_stats(model):
                    aggregator.after_update(losses, closure())
            window.setdefault("step_time", []).append(time.perf_counter() - t0)
            record_stats(window, optimizer.stats)
            sums += losses.detach().cpu()
            if progress is not None:
                progress(epoch * per_epoch + b)
            if should_stop is not None and b < per_epoch - 1 and should_stop():
                # a preemption's grace is shorter than an NYU-v2 epoch: stop now and redo this epoch from the
                # last epoch's checkpoint (its order and seeds come from the saved sampler: the same epoch)
                raise Preempted(epoch - 1)
        mean_losses = sums / per_epoch
        aggregator.end_epoch(mean_losses)
        scheduler.step()
        metrics = {f"loss_{t}": float(v) for t, v in zip(data.tasks, mean_losses)}
        metrics["loss"] = float(mean_losses.sum())
        metrics.update({k: sum(v) / len(v) for k, v in window.items()})
        metrics["epoch_time"] = time.perf_counter() - t_epoch
        metrics.update(evaluate(model, data, recipe, device))
        row = {"args": {"dataset": recipe.dataset.name, "aggregator": agg_cfg.name, "algorithm": recipe.optimizer.label,
                        "seed": seed, "recipe_hash": recipe.hash()}, "epoch": epoch, "step": epoch, **metrics}
        ckpt = Checkpoint(epoch, metrics, row)
        history.append(ckpt)
        if on_checkpoint is not None:
            on_checkpoint(ckpt)
        if checkpoint_path is not None:
            save(epoch)
        if should_stop is not None and should_stop() and epoch < epochs - 1:
            raise Preempted(epoch)
    return MTLResult(history, model, optimizer, data, resumed_from)


def final_average(history: list[Checkpoint], key: str, last: int = 10) -> float:
    """The references report the mean of the last 10 epochs."""
    values = [c.metrics[key] for c in history[-last:] if key in c.metrics]
    return sum(values) / len(values) if values else float("nan")
