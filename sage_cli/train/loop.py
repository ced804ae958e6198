"""The one training loop: restore, step, evaluate, checkpoint, preemption, divergence, statistics window.

What differs between domain generalization and multi-task learning is a ``Protocol`` (``train/dg.py``,
``mtl/train.py``): it loads the data, and ``start`` builds a ``Task`` — the model, the optimizer, the batches,
the evaluation — that this loop drives one step at a time. Positions are the protocol's checkpoint indices:
DG saves and evaluates by step, MTL by epoch (−1: the initial state).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import Preempted, TrainingDiverged
from ..faults import pause_at
from ..optim.stats import unread
from ..recipe import Recipe
from .checkpoint import Record, Window, restore_training_state, save_training_state, write_results
from .runtime import Runtime, configure

# optimizer statistics averaged over the steps between two checkpoints
STAT_KEYS = ("agreement", "noise_scale", "grad_norm", "perturbation_norm", "boa_alpha", "boa_threshold")


class Task(Protocol):
    parts: dict[str, Any]  # what the checkpoint saves: name → object with state_dict / load_state_dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    total_steps: int
    resumable_anywhere: bool  # DG: any step can be saved; MTL: only an epoch's end (and the initial state)

    def first_step(self, resumed_from: int) -> int:
        """The global step that follows the saved position ``resumed_from - 1``."""

    def step(self, step: int) -> tuple[float, dict[str, float]]:
        """Train one step: (the loss, checked for divergence; the optimizer's statistics)."""

    def position_at(self, step: int) -> int | None:
        """The position whose evaluation falls after ``step``, or None."""

    def evaluate(self, position: int, window: dict[str, float]) -> Record:
        """The record of ``position``; ``window`` holds the step statistics' means since the last one."""

    def close(self) -> None:
        """Stop what the task started (the input pipeline's workers)."""

    def distribution_losses(self, batches: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the K per-distribution losses on ``batches`` fixed batches each, with their graph; the parameters
        they are measured against) — what ``sage diagnose`` and ``diagnostics.every`` differentiate."""


class TrainingProtocol(Protocol):
    """What DG and MTL each implement (one instance each, registered in ``catalog.PROTOCOLS``)."""

    kind: str

    def load(self, recipe: Recipe): ...

    def start(self, recipe: Recipe, data, runtime: Runtime) -> Task: ...

    def total_steps(self, recipe: Recipe, data) -> int: ...

    def loader_workers(self, recipe: Recipe, data) -> int: ...

    def first_step(self, recipe: Recipe, data, resumed_from: int) -> int: ...

    def status(self, record: Record, data) -> str: ...

    def finish(self, result: TrainResult, recipe: Recipe): ...


@dataclass
class TrainResult:
    history: list[Record]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: Any
    resumed_from: int | None = None


def runtime_for(recipe: Recipe, protocol, data) -> Runtime:
    """Device, precision and loader workers of a run (torch's global switches set for it)."""
    return configure(recipe.training, protocol.loader_workers(recipe, data))


def train(recipe: Recipe, protocol, data=None, on_checkpoint=None, progress=None,
          checkpoint_path: str | Path | None = None, extra_state: dict | None = None,
          should_stop=None, runtime: Runtime | None = None) -> TrainResult:
    """Train one recipe; ``on_checkpoint(record)`` sees every evaluation, ``progress(step)`` every step.

    With ``checkpoint_path``, the full training state (model, optimizer with its noise generator, objective or
    aggregator, samplers, every RNG, history) is saved there atomically at each evaluation, and a run whose
    file exists resumes from it, bit-identically. ``extra_state`` rides along (the MLflow run id). Raises
    ``TrainingDiverged`` at the first non-finite loss, and ``Preempted`` (naming the position saved to resume
    from) when ``should_stop()`` turns true between two steps.
    """
    torch.manual_seed(recipe.training.seed)
    data = data if data is not None else protocol.load(recipe)
    runtime = runtime or runtime_for(recipe, protocol, data)
    # the intra-op thread count stays as it is whatever the loader's workers (it sets float reduction orders,
    # and the worker count must not change a result); `sage run` makes idle OpenMP threads sleep instead
    task = protocol.start(recipe, data, runtime)
    try:
        return _train(recipe, task, data, on_checkpoint, progress, checkpoint_path, extra_state, should_stop)
    finally:
        task.close()


def _train(recipe, task, data, on_checkpoint, progress, checkpoint_path, extra_state, should_stop) -> TrainResult:
    window = Window()  # the step statistics since the last evaluation
    parts = {**task.parts, "window": window}
    history, resumed_from = restore_training_state(checkpoint_path, parts)
    if checkpoint_path is not None:
        write_results(checkpoint_path, history)  # the rows of the restored history, or none
    total = task.total_steps
    last_position = -1 if resumed_from is None else resumed_from - 1  # of the last evaluation, or saved state

    def save(position: int, step: int) -> None:
        if checkpoint_path is not None:
            save_training_state(checkpoint_path, position, step == total - 1, recipe.hash(), parts, history,
                                extra_state)

    if resumed_from is None and not task.resumable_anywhere:
        save(-1, -1)  # the initial state: a stop before the first evaluation also resumes, in the same run
    divergence = _Divergence()
    for step in range(task.first_step(resumed_from or 0), total):
        t0 = time.perf_counter()
        try:
            loss, stats = task.step(step)
        except Exception:
            divergence.settle()  # a step after a diverged one may fail on its NaNs: the divergence is the news
            raise
        divergence.after(step, loss)
        # on a GPU: queueing this step and waiting for the previous one to end, which averages to a step's time
        window.add("step_time", time.perf_counter() - t0)
        values = unread(stats)
        for key in STAT_KEYS:
            if key in values:
                window.add(key, values[key])
        if progress is not None:
            progress(step)
        position = task.position_at(step)
        if position is not None:
            divergence.settle()
            record = task.evaluate(position, window.means())
            window.clear()
            every = recipe.diagnostics.every
            if every and len(history) % every == 0:  # Theorem 1's two terms at this checkpoint
                from ..analysis.measure import checkpoint_metrics

                extra = checkpoint_metrics(task, recipe.diagnostics)
                record.metrics.update(extra)
                record.row.update(extra)
            history.append(record)
            last_position = position
            if checkpoint_path is not None:
                write_results(checkpoint_path, history, append=True)
            if on_checkpoint is not None:  # logged before saved: a kill in between re-logs, never loses
                on_checkpoint(record)
            save(position, step)
            pause_at("checkpoint", position)
        if should_stop is not None and should_stop() and step < total - 1:
            divergence.settle()
            if position is not None:
                raise Preempted(position)  # saved just now
            if task.resumable_anywhere:
                save(step, step)
                raise Preempted(step)
            # a preemption's grace is shorter than an NYU-v2 epoch: MTL stops now and redoes this epoch from the
            # last one saved (its order and seeds come from the saved sampler: the same epoch)
            raise Preempted(last_position)
    divergence.settle()
    return TrainResult(history, task.model, task.optimizer, data, resumed_from)


class _Divergence:
    """The check for a non-finite loss, one step late. Reading a step's loss waits for the device to finish
    that step; read after the next step is queued, the device is never idle while the host reads it. Settled
    (the last loss read) before anything is evaluated, saved or returned: a diverged state is never saved, and
    ``TrainingDiverged`` names the step whose loss it was."""

    def __init__(self):
        self.pending = None  # (step, loss) not yet read

    def after(self, step: int, loss) -> None:
        self.settle()
        self.pending = (step, loss)

    def settle(self) -> None:
        previous, self.pending = self.pending, None
        if previous is not None:
            _check_finite(*previous)


def _check_finite(step: int, loss) -> None:
    value = float(loss)
    if not math.isfinite(value):
        raise TrainingDiverged(step, value)
