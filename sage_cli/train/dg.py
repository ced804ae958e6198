"""The DomainBed protocol: one mini-batch per training env per step (or one batch spread uniformly over
them), every env's in/out split evaluated at each checkpoint (step 0, every ``checkpoint_freq`` steps, the
last step), DomainBed-format JSON rows, and a resumable checkpoint at each of them."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..catalog import DATASETS, MODELS
from ..data.splits import InfiniteSampler, Split, load_batch, seed_hash, split_env
from ..optim.build import build_optimizer
from ..optim.grads import flatten, grads_of
from ..optim.per_domain import batch_blocks
from ..recipe import Recipe
from .checkpoint import Record
from .loop import TrainResult, train


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


def select_training_domain(history: list[Record], train_envs) -> Record:
    """DomainBed's training-domain validation: the checkpoint with the best mean train-env out accuracy."""
    return max(history, key=lambda c: sum(c.metrics[f"env{i}_out_acc"] for i in train_envs) / len(train_envs))


class DGTask:
    """One DG run: the model, the objective, the optimizer and the batches; evaluated by step."""

    resumable_anywhere = True

    def __init__(self, recipe: Recipe, data: DGData, device: torch.device):
        seed = recipe.training.seed
        self.recipe, self.data, self.device = recipe, data, device
        model = MODELS.get(recipe.backbone.name)(data.input_shape, data.n_classes, recipe.backbone, data.classes)
        self.model = model.to(device).train()
        self.objective = recipe.objective.build(self.model, len(data.train_envs), data.n_classes)
        self.optimizer = build_optimizer(self.model, recipe.optimizer, seed=seed_hash(seed, "noise"),
                                         extra=self.objective.parameters())
        self.batcher = Batcher(data, recipe)
        self.inner_seed = iter(range(10**9))
        self.alignment = TargetAlignment(data)
        self.parts = {"model": self.model, "optimizer": self.optimizer, "objective": self.objective,
                      "batcher": self.batcher}
        self.total_steps = recipe.training.steps
        self.losses: list[float] = []

    def first_step(self, resumed_from: int) -> int:
        return resumed_from

    def make_inner_optimizer(self, module):
        seed = seed_hash(self.recipe.training.seed, "inner", next(self.inner_seed))
        return build_optimizer(module, self.recipe.optimizer, seed=seed)

    def step(self, step: int):
        xs, ys, weights = self.batcher.next()
        xs, ys = [x.to(self.device) for x in xs], [y.to(self.device) for y in ys]
        objective, model = self.objective, self.model
        if getattr(objective, "owns_update", False):  # Fish: its meta-update drives the recipe's optimizer
            losses = objective.update(model, xs, ys, weights, self.make_inner_optimizer)
        else:
            blocks = batch_blocks([len(x) for x in xs]) if objective.separable else nullcontext()
            with blocks:
                losses = self.optimizer.step(lambda: objective.losses(model, xs, ys, weights), weights=weights)
        loss = float(losses.mean())
        objective.after_step(step)
        self.losses.append(loss)
        return loss, getattr(objective, "inner_stats", None) or self.optimizer.stats

    def distribution_losses(self, batches: int, seed: int):
        """Cross-entropy on each training env's fixed batches (drawn from its in split by a generator of
        its own: no training RNG moves)."""
        size = batches * self.recipe.training.batch_size
        losses = []
        for i in self.data.train_envs:
            split = self.data.splits[i]["in"]
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed_hash(seed, "diagnose", i)))
            x, y = load_batch(split.env, split.indices[order[:size]], train=False)
            losses.append(F.cross_entropy(self.model(x.to(self.device)), y.to(self.device)))
        return torch.stack(losses), [p for p in self.model.parameters() if p.requires_grad]

    def position_at(self, step: int) -> int | None:
        freq = self.recipe.training.checkpoint_freq
        return step if step % freq == 0 or step == self.total_steps - 1 else None

    def evaluate(self, step: int, window: dict[str, float]) -> Record:
        recipe, data = self.recipe, self.data
        metrics = {**window, "loss": sum(self.losses) / len(self.losses)}
        self.losses = []
        for i, split in enumerate(data.splits):
            for name in ("in", "out"):
                metrics[f"env{i}_{name}_acc"] = accuracy(self.model, split[name], self.device)
        metrics["target_alignment"] = self.alignment(self.model, self.device)
        row = {
            "args": {"dataset": recipe.dataset.name, "algorithm": recipe.optimizer.label,
                     "objective": recipe.objective.name, "test_envs": data.test_envs,
                     "trial_seed": recipe.training.seed, "seed": recipe.training.seed, "recipe_hash": recipe.hash()},
            "hparams": recipe.optimizer.model_dump(mode="json"),
            "step": step,
            "epoch": step * recipe.training.batch_size / min(len(data.splits[i]["in"]) for i in data.train_envs),
            **metrics,
        }
        return Record(step, metrics, row)


class DGProtocol:
    """Domain generalization: DomainBed's loop, judged on the held-out env."""

    kind = "dg"

    def load(self, recipe: Recipe) -> DGData:
        return load_dg_data(recipe)

    def start(self, recipe: Recipe, data: DGData, device) -> DGTask:
        return DGTask(recipe, data, device)

    def total_steps(self, recipe: Recipe, data) -> int:
        return recipe.training.steps

    def first_step(self, recipe: Recipe, data, resumed_from: int) -> int:
        return resumed_from

    def status(self, record: Record, data) -> str:
        accs = " ".join(f"{record.metrics[f'env{i}_out_acc']:.3f}" for i in data.test_envs)
        return f"loss {record.metrics['loss']:.3f} · test out {accs}"

    def finish(self, result: TrainResult, recipe: Recipe):
        """(final metrics, a table, the line to print)."""
        from rich.table import Table

        data, last = result.data, result.history[-1].metrics
        test = data.test_envs[0]
        target = last[f"env{test}_in_acc"]
        selected = select_training_domain(result.history, data.train_envs).metrics[f"env{test}_in_acc"]
        table = Table(title=f"{recipe.name or 'run'} · {recipe.dataset.name} · {recipe.optimizer.label} "
                            f"· step {result.history[-1].step}")
        for col in ("env", "role", "in acc", "out acc"):
            table.add_column(col, justify="right" if "acc" in col else "left")
        for i, name in enumerate(data.env_names):
            role = "[bold magenta]test[/]" if i in data.test_envs else "train"
            table.add_row(f"{i} ({name})", role, f"{last[f'env{i}_in_acc']:.4f}", f"{last[f'env{i}_out_acc']:.4f}")
        envs = ",".join(map(str, data.test_envs))
        line = f"target env {envs} accuracy: {target:.4f} (final), {selected:.4f} (training-domain validation)"
        return {"target_acc": target, "target_acc_selected": selected}, table, line


PROTOCOL = DGProtocol()


def train_dg(recipe: Recipe, data: DGData | None = None, **kwargs) -> TrainResult:
    """``train`` with the DG protocol (see ``loop.train`` for the keywords)."""
    return train(recipe, PROTOCOL, data=data, **kwargs)
