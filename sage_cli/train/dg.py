"""The DomainBed protocol: one mini-batch per training env per step (or one batch spread uniformly over
them), every env's in/out split evaluated at each checkpoint (step 0, every ``checkpoint_freq`` steps, the
last step), DomainBed-format JSON rows, and a resumable checkpoint at each of them."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import DATASETS
from ..data.splits import InfiniteSampler, Split, load_batch, seed_hash, split_env
from ..errors import Preempted, TrainingDiverged
from ..models import MODELS
from ..objectives import OBJECTIVES
from ..optim import build_optimizer
from ..optim.grads import flatten, grads_of
from ..recipe import Recipe
from .checkpoint import Checkpoint, restore_training_state, save_training_state


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


STAT_KEYS = ("agreement", "noise_scale", "grad_norm", "perturbation_norm")


def record_stats(window: dict[str, list[float]], stats: dict[str, float]) -> None:
    """Collect an optimizer's per-step statistics until the next checkpoint averages them."""
    for key in STAT_KEYS:
        if key in stats:
            window.setdefault(key, []).append(stats[key])


@dataclass
class DGData:
    env_names: list[str]
    classes: list[str]
    input_shape: tuple
    splits: list[dict[str, Split]]  # per env: {"in": Split, "out": Split}
    train_envs: list[int]
    test_envs: list[int]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def load_dg_data(recipe: Recipe) -> DGData:
    cfg = recipe.dataset
    spec = DATASETS.get(cfg.name)
    normalization = "clip" if recipe.backbone.name.startswith("clip") else "imagenet"
    dataset = spec(root=cfg.root, image_size=cfg.image_size, normalization=normalization,
                   corrupt_images=cfg.corrupt_images)
    splits = []
    for i, env in enumerate(dataset.datasets):
        out_split, in_split = split_env(env, cfg.holdout_fraction, seed_hash(recipe.training.seed, i))
        splits.append({"in": in_split, "out": out_split})
    n = len(spec.ENVIRONMENTS)
    classes = list(getattr(dataset, "classes", [str(c) for c in range(spec.N_CLASSES)]))
    return DGData(list(spec.ENVIRONMENTS), classes, tuple(getattr(dataset, "input_shape", spec.INPUT_SHAPE)),
                  splits, [i for i in range(n) if i not in cfg.test_envs], list(cfg.test_envs))


@torch.no_grad()
def accuracy(model, split: Split, device) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in split.batches():
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    model.train(was_training)
    return correct / max(len(split), 1)


class TargetAlignment:
    """cos(mean training-env gradient, held-out env gradient) on fixed batches (the paper's App. F)."""

    def __init__(self, data: DGData, size: int = 64):
        self.batches = {i: load_batch(s["in"].env, s["in"].indices[:size], train=False)
                        for i, s in enumerate(data.splits)}
        self.train_envs, self.test_env = data.train_envs, data.test_envs[0]

    def __call__(self, model, device) -> float:
        was_training = model.training
        model.eval()  # no BatchNorm statistics move for a measurement
        params = [p for p in model.parameters() if p.requires_grad]

        def grad(i):
            x, y = self.batches[i]
            with torch.enable_grad():
                return flatten(grads_of(F.cross_entropy(model(x.to(device)), y.to(device)), params))

        train = torch.stack([grad(i) for i in self.train_envs]).mean(0)
        target = grad(self.test_env)
        model.train(was_training)
        return float(F.cosine_similarity(train, target, dim=0))


class Batcher:
    """The per-step batches: ``per_env`` (DomainBed) or ``uniform`` (each image's env drawn uniformly)."""

    def __init__(self, data: DGData, recipe: Recipe):
        t = recipe.training
        self.mode, self.batch_size = t.batch_sampling, t.batch_size
        self.samplers = [InfiniteSampler(data.splits[i]["in"], t.batch_size, seed_hash(t.seed, "sampler", i))
                         for i in data.train_envs]
        self.generator = torch.Generator().manual_seed(seed_hash(t.seed, "envs"))

    def next(self):
        """(xs, ys, weights): one batch per env that got images this step, and their sample counts."""
        if self.mode == "per_env":
            batches = [s.next() for s in self.samplers]
            return [x for x, _ in batches], [y for _, y in batches], None
        envs = torch.randint(len(self.samplers), (self.batch_size,), generator=self.generator)
        counts = torch.bincount(envs, minlength=len(self.samplers))
        batches = [s.next(int(n)) for s, n in zip(self.samplers, counts) if n > 0]
        return [x for x, _ in batches], [y for _, y in batches], counts[counts > 0].float()

    def state_dict(self) -> dict:
        return {"samplers": [s.state_dict() for s in self.samplers], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.samplers, state["samplers"]):
            s.load_state_dict(st)
        self.generator.set_state(state["generator"])


@dataclass
class TrainResult:
    history: list[Checkpoint]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: DGData
    resumed_from: int | None = None


def select_training_domain(history: list[Checkpoint], train_envs) -> Checkpoint:
    """DomainBed's training-domain validation: the checkpoint with the best mean train-env out accuracy."""
    return max(history, key=lambda c: sum(c.metrics[f"env{i}_out_acc"] for i in train_envs) / len(train_envs))


def results_jsonl(history: list[Checkpoint]) -> str:
    return "".join(json.dumps(c.row, sort_keys=True) + "\n" for c in history)


def train_dg(recipe: Recipe, data: DGData | None = None, on_checkpoint=None, progress=None,
             checkpoint_path: str | Path | None = None, extra_state: dict | None = None,
             should_stop=None) -> TrainResult:
    """Train one recipe; ``on_checkpoint(ckpt)`` sees every checkpoint, ``progress(step)`` every step.

    With ``checkpoint_path``, the full training state (model, optimizer with its noise generator, objective,
    samplers, every RNG, history) is saved there atomically at each checkpoint, and a run whose file exists
    resumes from it. ``extra_state`` rides along (the MLflow run id). Raises ``TrainingDiverged`` at the first
    non-finite loss, and ``Preempted`` (after saving) when ``should_stop()`` turns true between two steps.
    """
    seed = recipe.training.seed
    torch.manual_seed(seed)
    device = pick_device(recipe.training.device)
    data = data if data is not None else load_dg_data(recipe)
    model = MODELS.get(recipe.backbone.name)(data.input_shape, data.n_classes, recipe.backbone, data.classes)
    model = model.to(device).train()
    objective = OBJECTIVES.get(recipe.objective.name)(model, len(data.train_envs), recipe.objective, data.n_classes)
    optimizer = build_optimizer(model, recipe.optimizer, seed=seed_hash(seed, "noise"), extra=objective.parameters())
    batcher = Batcher(data, recipe)
    inner_seed = iter(range(10**9))

    def make_inner_optimizer(module):
        return build_optimizer(module, recipe.optimizer, seed=seed_hash(seed, "inner", next(inner_seed)))

    alignment = TargetAlignment(data)
    parts = {"model": model, "optimizer": optimizer, "objective": objective, "batcher": batcher}
    history, resumed_from = restore_training_state(checkpoint_path, parts)
    start = resumed_from or 0

    steps, freq = recipe.training.steps, recipe.training.checkpoint_freq
    window: dict[str, list[float]] = {}

    def save(step: int) -> None:
        save_training_state(checkpoint_path, step, step == steps - 1, recipe.hash(), parts, history, extra_state)

    for step in range(start, steps):
        t0 = time.perf_counter()
        xs, ys, weights = batcher.next()
        xs, ys = [x.to(device) for x in xs], [y.to(device) for y in ys]
        if getattr(objective, "owns_update", False):  # Fish: its meta-update drives the recipe's optimizer
            losses = objective.update(model, xs, ys, weights, make_inner_optimizer)
        else:
            losses = optimizer.step(lambda: objective.losses(model, xs, ys, weights), weights=weights)
        loss = float(losses.mean())
        if not math.isfinite(loss):
            raise TrainingDiverged(step, loss)
        objective.after_step(step)
        window.setdefault("step_time", []).append(time.perf_counter() - t0)
        window.setdefault("loss", []).append(loss)
        record_stats(window, getattr(objective, "inner_stats", None) or optimizer.stats)
        if progress is not None:
            progress(step)
        if step % freq == 0 or step == steps - 1:
            metrics = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            for i, split in enumerate(data.splits):
                for name in ("in", "out"):
                    metrics[f"env{i}_{name}_acc"] = accuracy(model, split[name], device)
            metrics["target_alignment"] = alignment(model, device)
            row = {
                "args": {"dataset": recipe.dataset.name, "algorithm": recipe.optimizer.label,
                         "objective": recipe.objective.name, "test_envs": data.test_envs,
                         "trial_seed": seed, "seed": seed, "recipe_hash": recipe.hash()},
                "hparams": recipe.optimizer.model_dump(mode="json"),
                "step": step,
                "epoch": step * recipe.training.batch_size / min(len(data.splits[i]["in"]) for i in data.train_envs),
                **metrics,
            }
            ckpt = Checkpoint(step, metrics, row)
            history.append(ckpt)
            if on_checkpoint is not None:  # logged before saved: a kill in between re-logs, never loses
                on_checkpoint(ckpt)
            if checkpoint_path is not None:
                save(step)
        if should_stop is not None and should_stop() and step < steps - 1:
            if checkpoint_path is not None:
                save(step)
            raise Preempted(step)
    return TrainResult(history, model, optimizer, data, resumed_from)
