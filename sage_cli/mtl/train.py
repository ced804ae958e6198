"""The MTL protocol: epochs over the training split, per-task losses → aggregator → optimizer (SAGE-X when
the optimizer is SAGE), StepLR, per-epoch test metrics and Δm, and a resumable checkpoint after every epoch.
The loop itself is ``train.loop``'s."""

from __future__ import annotations

import math
import time

import torch

from ..catalog import DATASETS, MODELS
from ..data.pipeline import Item, Pipeline, in_memory, resolve_workers
from ..data.splits import seed_hash
from ..optim.build import build_optimizer
from ..optim.grads import frozen_norm_stats
from ..recipe import Recipe
from ..train.checkpoint import GeneratorState, Record
from ..train.loop import STAT_KEYS, TrainResult, train
from ..train.runtime import Runtime
from .data import MTLData, task_batch
from .losses import task_loss


class _Epoch:
    """The current epoch's work items; one object streamed again each epoch, so the workers persist."""

    def __init__(self):
        self.items: list = []

    def __iter__(self):
        return iter(self.items)


def load_mtl_data(recipe: Recipe) -> MTLData:
    return DATASETS.get(recipe.dataset.name)(recipe.dataset)


class MTLTask:
    """One MTL run, evaluated by epoch; the initial state is saved too (position −1)."""

    resumable_anywhere = False

    def __init__(self, recipe: Recipe, data: MTLData, runtime: Runtime):
        seed = recipe.training.seed
        device = runtime.device
        self.recipe, self.data, self.device, self.runtime = recipe, data, device, runtime
        model = MODELS.get(recipe.backbone.name)(data.tasks, data.n_classes, recipe.backbone)
        self.model = model.to(device).train()
        self.aggregator = recipe.aggregator.build(len(data.tasks), seed_hash(seed, "aggregator"))
        self.aggregator.bind(self.model.shared_parameters())
        self.optimizer = build_optimizer(self.model, recipe.optimizer, seed=seed_hash(seed, "noise"),
                                         extra=self.aggregator.parameters(), aggregator=self.aggregator)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=recipe.training.lr_step_epochs,
                                                         gamma=recipe.training.lr_gamma)
        self.sampler = torch.Generator().manual_seed(seed_hash(seed, "mtl-order"))
        self.parts = {"model": self.model, "optimizer": self.optimizer, "aggregator": self.aggregator,
                      "scheduler": self.scheduler, "sampler": GeneratorState(self.sampler)}
        self.batch_size = recipe.training.batch_size
        self.per_epoch = math.ceil(len(data.train) / self.batch_size)
        self.total_steps = recipe.training.epochs * self.per_epoch
        # an epoch's batches, loaded by workers ahead of the steps; never across an epoch's end, where the
        # checkpoint holds the order generator's state for the next epoch
        self.epoch = _Epoch()
        self.pipeline = Pipeline([data.train], runtime.workers, pin_memory=device.type == "cuda",
                                 persistent=True, load=task_batch)
        self._batches = None
        # the test set through workers of its own, kept between evaluations: read in this process, NYU-v2's 654
        # samples cost ~1.5 s of the training process at every evaluation (2.2 ms each, measured on 288×384);
        # received from workers, 1.1 ms each
        self.test_items = [Item.of(0, indices) for indices in data.test_indices()]
        self.test_pipeline = Pipeline([data.test], 0 if in_memory([data.test]) else runtime.workers,
                                      pin_memory=device.type == "cuda", persistent=True, load=task_batch)

    def first_step(self, resumed_from: int) -> int:
        return resumed_from * self.per_epoch

    def step(self, step: int):
        b = step % self.per_epoch
        if b == 0:  # an epoch's order and augmentation seeds, drawn at its start (a resume starts an epoch)
            n = len(self.data.train)
            self.order = torch.randperm(n, generator=self.sampler)
            self.seeds = torch.randint(2**31 - 1, (n,), generator=self.sampler)
            self.sums = torch.zeros(len(self.data.tasks), device=self.device)  # on the device: no sync per step
            self.epoch_start = time.perf_counter()
            rows = [slice(i, i + self.batch_size) for i in range(0, n, self.batch_size)]
            self.epoch.items = [Item.of(0, self.order[r], self.seeds[r]) for r in rows]
            self._batches = self.pipeline.stream(self.epoch)
        x, y = next(self._batches)
        x = x.to(self.device, non_blocking=True)
        y = {t: v.to(self.device, non_blocking=True) for t, v in y.items()}
        model, tasks = self.model, self.data.tasks

        def closure():
            with self.runtime.autocast():
                out = model(x)
                return torch.stack([task_loss(t, out[t], y[t]) for t in tasks])

        losses = self.optimizer.step(closure)
        # FAMO's test first: whether the losses are finite is a read from the device, which the others never need
        if self.aggregator.wants_losses_after_update and torch.isfinite(losses).all():
            with torch.no_grad(), frozen_norm_stats(model):  # FAMO: how much each task improved on this batch
                self.aggregator.after_update(losses, closure())
        self.sums += losses.detach()
        return losses.sum(), self.optimizer.stats

    def close(self) -> None:
        self._batches = None
        self.pipeline.close()
        self.test_pipeline.close()

    def distribution_losses(self, batches: int, seed: int):
        """Every task's loss on the same fixed training samples (no augmentation), against the shared
        parameters: the tasks play the distributions."""
        n = len(self.data.train)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_hash(seed, "diagnose")))
        x, y = task_batch(self.data.train, order[:min(n, batches * self.batch_size)], train=False)
        out = self.model(x.to(self.device))
        losses = torch.stack([task_loss(t, out[t], y[t].to(self.device)) for t in self.data.tasks])
        return losses, [p for p in self.model.shared_parameters() if p.requires_grad]

    def position_at(self, step: int) -> int | None:
        return step // self.per_epoch if (step + 1) % self.per_epoch == 0 else None

    def evaluate(self, epoch: int, window: dict[str, float]) -> Record:
        mean_losses = self.sums.cpu() / self.per_epoch
        self.aggregator.end_epoch(mean_losses)
        self.scheduler.step()
        metrics = {f"loss_{t}": float(v) for t, v in zip(self.data.tasks, mean_losses)}
        metrics["loss"] = float(mean_losses.sum())
        metrics.update(window)
        metrics["epoch_time"] = time.perf_counter() - self.epoch_start
        metrics.update(self.data.metrics(self.model, self.test_pipeline.stream(self.test_items), self.device))
        recipe = self.recipe
        row = {"args": {"dataset": recipe.dataset.name, "aggregator": recipe.aggregator.name,
                        "algorithm": recipe.optimizer.label, "seed": recipe.training.seed,
                        "recipe_hash": recipe.hash()}, "epoch": epoch, "step": epoch, **metrics}
        return Record(epoch, metrics, row)


def final_average(history: list[Record], key: str, last: int = 10) -> float:
    """The references report the mean of the last 10 epochs."""
    values = [c.metrics[key] for c in history[-last:] if key in c.metrics]
    return sum(values) / len(values) if values else float("nan")


class MTLProtocol:
    """Multi-task learning: epochs, per-task metrics, Δm; reported as the mean of the last 10 epochs."""

    kind = "mtl"

    def load(self, recipe: Recipe) -> MTLData:
        return load_mtl_data(recipe)

    def start(self, recipe: Recipe, data: MTLData, runtime: Runtime) -> MTLTask:
        return MTLTask(recipe, data, runtime)

    def loader_workers(self, recipe: Recipe, data) -> int:
        return 0 if in_memory([data.train]) else resolve_workers(recipe.dataset.workers)

    def total_steps(self, recipe: Recipe, data) -> int:
        return recipe.training.epochs * -(-len(data.train) // recipe.training.batch_size)

    def first_step(self, recipe: Recipe, data, resumed_from: int) -> int:
        return resumed_from * -(-len(data.train) // recipe.training.batch_size)

    def status(self, record: Record, data) -> str:
        key = "delta_m" if "delta_m" in record.metrics else "mean_acc"
        return f"epoch {record.step} · loss {record.metrics['loss']:.3f} · {key} {record.metrics[key]:.2f}"

    def finish(self, result: TrainResult, recipe: Recipe):
        from rich.table import Table

        history = result.history
        keys = [k for k in history[-1].metrics if not k.startswith(("loss", "step_time", "epoch_time", *STAT_KEYS))]
        last = recipe.training.report_epochs
        final = {f"final_{k}": final_average(history, k, last) for k in keys}
        title = (f"{recipe.name or 'run'} · {recipe.dataset.name} · {recipe.aggregator.name} × "
                 f"{recipe.optimizer.label} · epoch {history[-1].step} (mean of the last {last} epochs)")
        table = Table(title=title, min_width=len(title))  # a title wrapped at ' · ' read as cut
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k in keys:
            table.add_row(k, f"{final[f'final_{k}']:.4f}")
        key = "delta_m" if "delta_m" in keys else "mean_acc"
        line = (f"{recipe.dataset.name} {recipe.aggregator.name} × {recipe.optimizer.label}: "
                f"{key} {final[f'final_{key}']:.2f}")
        return final, table, line


PROTOCOL = MTLProtocol()


def train_mtl(recipe: Recipe, data: MTLData | None = None, **kwargs) -> TrainResult:
    """``train`` with the MTL protocol. ``should_stop()`` is obeyed after any step: mid-epoch, nothing is saved
    and ``Preempted`` names the last epoch saved, which the resumed run continues from."""
    return train(recipe, PROTOCOL, data=data, **kwargs)
