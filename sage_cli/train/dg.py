"""The DomainBed protocol: one mini-batch per training env per step, every env's in/out split evaluated
at each checkpoint (step 0, every ``checkpoint_freq`` steps, the last step), DomainBed-format JSON rows."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import torch

from ..data import DATASETS
from ..data.splits import InfiniteSampler, materialise, seed_hash, split_env
from ..errors import TrainingDiverged
from ..models import MODELS
from ..objectives import OBJECTIVES
from ..optim import build_optimizer
from ..recipe import Recipe


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i:i + batch_size]).sum())
    model.train()
    return correct / max(len(y), 1)


@dataclass
class DGData:
    env_names: list[str]
    n_classes: int
    input_shape: tuple
    splits: list[dict]  # per env: {"in": (x, y), "out": (x, y)}
    train_envs: list[int]
    test_envs: list[int]


def load_dg_data(recipe: Recipe) -> DGData:
    cfg = recipe.dataset
    spec = DATASETS.get(cfg.name)
    dataset = spec(root=cfg.root)
    splits = []
    for i, env in enumerate(dataset.datasets):
        out_split, in_split = split_env(env, cfg.holdout_fraction, seed_hash(recipe.training.seed, i))
        splits.append({"in": materialise(in_split), "out": materialise(out_split)})
    n = len(spec.ENVIRONMENTS)
    train_envs = [i for i in range(n) if i not in cfg.test_envs]
    return DGData(list(spec.ENVIRONMENTS), spec.N_CLASSES, spec.INPUT_SHAPE, splits, train_envs,
                  list(cfg.test_envs))


@dataclass
class Checkpoint:
    step: int
    metrics: dict[str, float]
    row: dict = field(default_factory=dict)


def select_training_domain(history: list[Checkpoint], train_envs, test_env) -> Checkpoint:
    """DomainBed's training-domain validation: the checkpoint with the best mean train-env out accuracy."""
    def val(c):
        return sum(c.metrics[f"env{i}_out_acc"] for i in train_envs) / len(train_envs)

    return max(history, key=val)


@dataclass
class TrainResult:
    history: list[Checkpoint]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: DGData


def train_dg(recipe: Recipe, data: DGData | None = None, on_checkpoint=None, progress=None) -> TrainResult:
    """Train one recipe; ``on_checkpoint(ckpt)`` sees every checkpoint, ``progress(step)`` every step.

    Raises ``TrainingDiverged`` at the first non-finite loss.
    """
    seed = recipe.training.seed
    torch.manual_seed(seed)
    device = pick_device(recipe.training.device)
    data = data if data is not None else load_dg_data(recipe)
    model = MODELS.get(recipe.backbone.name)(data.input_shape, data.n_classes, recipe.backbone).to(device)
    objective = OBJECTIVES.get(recipe.objective.name)(len(data.train_envs), recipe.objective)
    optimizer = build_optimizer(model, recipe.optimizer, seed=seed_hash(seed, "noise"))
    samplers = [
        InfiniteSampler(*data.splits[i]["in"], recipe.training.batch_size, seed_hash(seed, "sampler", i))
        for i in data.train_envs
    ]
    steps, freq = recipe.training.steps, recipe.training.checkpoint_freq
    history: list[Checkpoint] = []
    window: dict[str, list[float]] = {}
    for step in range(steps):
        t0 = time.perf_counter()
        batches = [s.next() for s in samplers]
        xs = [x.to(device) for x, _ in batches]
        ys = [y.to(device) for _, y in batches]
        losses = optimizer.step(lambda: objective.losses(model, xs, ys))
        loss = float(losses.mean())
        if not math.isfinite(loss):
            raise TrainingDiverged(step, loss)
        window.setdefault("step_time", []).append(time.perf_counter() - t0)
        window.setdefault("loss", []).append(loss)
        for key in ("agreement", "noise_scale", "grad_norm", "perturbation_norm"):
            if key in optimizer.stats:
                window.setdefault(key, []).append(optimizer.stats[key])
        if progress is not None:
            progress(step)
        if step % freq == 0 or step == steps - 1:
            metrics = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            for i, split in enumerate(data.splits):
                for name in ("in", "out"):
                    metrics[f"env{i}_{name}_acc"] = accuracy(model, *split[name], device)
            row = {
                "args": {"dataset": recipe.dataset.name, "algorithm": recipe.optimizer.method,
                         "objective": recipe.objective.name, "test_envs": data.test_envs,
                         "trial_seed": seed, "seed": seed, "recipe_hash": recipe.hash()},
                "hparams": recipe.optimizer.model_dump(mode="json"),
                "step": step,
                "epoch": step * recipe.training.batch_size / min(len(data.splits[i]["in"][1])
                                                                  for i in data.train_envs),
                **metrics,
            }
            ckpt = Checkpoint(step, metrics, row)
            history.append(ckpt)
            if on_checkpoint is not None:
                on_checkpoint(ckpt)
    return TrainResult(history, model, optimizer, data)


def results_jsonl(history: list[Checkpoint]) -> str:
    return "".join(json.dumps(c.row, sort_keys=True) + "\n" for c in history)
