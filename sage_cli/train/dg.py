"""The DomainBed protocol: one mini-batch per training env per step (or one batch spread uniformly over
them), every env's in/out split evaluated at each checkpoint (step 0, every ``checkpoint_freq`` steps, the
last step), DomainBed-format JSON rows, and a resumable checkpoint at each of them."""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..catalog import DATASETS, MODELS, card
from ..data.pipeline import Item, Pipeline, in_memory, resolve_workers
from ..data.splits import ConcatSampler, InfiniteSampler, Split, load_batch, seed_hash, split_env, to_device
from ..errors import UserError, notice
from ..optim.build import build_optimizer
from ..optim.grads import flatten, grads_of
from ..optim.per_domain import batch_blocks
from ..recipe import Recipe
from .checkpoint import Record, Window
from .loop import TrainResult, train
from .runtime import Runtime


@dataclass
class DGData:
    env_names: list[str]
    classes: list[str]
    input_shape: tuple
    splits: list[dict[str, Split]]  # per env: {"in": Split, "out": Split}
    train_envs: list[int]
    test_envs: list[int]
    eval_cache: object | None = None  # data.eval_cache.EvalCache of an image folder, built at the first evaluation

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def load_dg_data(recipe: Recipe) -> DGData:
    """The recipe's dataset, split as its protocol says: the official split files where ``dataset.split`` is
    ``official`` and the card has them, else a seeded ``holdout_fraction`` of each env held out."""
    cfg = recipe.dataset
    spec, the_card = DATASETS.get(cfg.name), card(cfg.name)
    normalization = "clip" if recipe.backbone.name.startswith("clip") else "imagenet"
    official = cfg.split == "official" and bool(the_card.split_files)
    extra = ({"train_transform": cfg.train_transform, "eval_transform": cfg.eval_transform,
              "official_split": official} if the_card.folder else {})
    dataset = spec(root=cfg.root, image_size=cfg.image_size, normalization=normalization,
                   corrupt_images=cfg.corrupt_images, card=the_card, **extra)
    cache = None
    if cfg.eval_cache and hasattr(dataset, "image_size") and not in_memory(dataset.datasets):
        from ..data.eval_cache import EvalCache

        cache = EvalCache(cfg.name, dataset, cfg.cache_dir).plan()  # built at the first evaluation
    splits = []
    for i, env in enumerate(dataset.datasets):
        if official:  # "in": the official training list, "out": its validation list
            train, val = dataset.official[i]
            in_split, out_split = Split(env, torch.tensor(train, dtype=torch.long)), Split(env, torch.tensor(val, dtype=torch.long))
        else:
            out_split, in_split = split_env(env, cfg.holdout_fraction, seed_hash(recipe.training.seed, i))
        splits.append({"in": in_split, "out": out_split})
    envs = list(getattr(spec, "ENVIRONMENTS", None) or the_card.envs)
    n_classes = getattr(spec, "N_CLASSES", None) or the_card.n_classes
    classes = list(getattr(dataset, "classes", [str(c) for c in range(n_classes)]))
    n = len(envs)
    return DGData(envs, classes, tuple(getattr(dataset, "input_shape", spec.INPUT_SHAPE)),
                  splits, [i for i in range(n) if i not in cfg.test_envs], list(cfg.test_envs), cache)


EVAL_BATCH = 256


class Evaluation:
    """Every env's in/out accuracy: pixels from the evaluation cache where attached, else decoded by a persistent
    pool of workers (``dataset.eval_cache: false``), in the order and batches of decoding in the process (so the
    accuracies are the same whichever way the pixels come)."""

    def __init__(self, data: DGData, runtime: Runtime, workers: int):
        self.data, self.runtime, self.workers = data, runtime, workers
        self.keys = [(i, name) for i in range(len(data.splits)) for name in ("in", "out")]
        self.items = [(key, Item.of(key[0], data.splits[key[0]][key[1]].indices[j:j + EVAL_BATCH]))
                      for key in self.keys for j in range(0, len(data.splits[key[0]][key[1]]), EVAL_BATCH)]
        self._work = [item for _, item in self.items]
        self.pipeline: Pipeline | None = None
        # reused within and across evaluations: fresh 40–150 MB tensors per evaluation cost more in page faults on a
        # CPU than reading and normalising the cached pixels (a GPU's caching allocator would keep them anyway)
        self._staging: torch.Tensor | None = None
        self._normalised: torch.Tensor | None = None

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None:
            if self.data.eval_cache is not None:
                self.data.eval_cache.ensure(self.workers, say=notice)
            envs = [s["in"].env for s in self.data.splits]
            decodes = any(getattr(env, "pixels", 0) is None for env in envs)  # image folders without a cache
            self.pipeline = Pipeline(envs, self.workers if decodes else 0,
                                     pin_memory=self.runtime.device.type == "cuda", persistent=True)
        return self.pipeline

    def batches(self):
        """(key, x, y) on the device, normalised, in evaluation order; key = (env, "in" | "out"). Each x is
        overwritten by the next: use it before asking for the next batch."""
        pipeline, device = self._pipeline(), self.runtime.device
        envs = [s["in"].env for s in self.data.splits]
        cached = pipeline.workers == 0 and all(getattr(env, "pixels", None) is not None for env in envs)
        loaded = None if cached else pipeline.stream(self._work)
        for key, item in self.items:
            env = envs[item.env]
            if cached:  # read from the memory map into one (pinned, for a GPU) staging tensor, copied blocking
                shape = (len(item.indices), *env.pixels.shape[1:])
                self._staging = _reuse(self._staging, shape, torch.uint8, "cpu", pin=device.type == "cuda")
                x, y = env.batch_pixels(item.indices, out=self._staging[:len(item.indices)])
                x = x.to(device)
            else:
                x, y = next(loaded)
            out = None
            if x.dtype == torch.uint8:  # image pixels: normalised into one reused float32 tensor
                self._normalised = _reuse(self._normalised, x.shape, torch.float32, device)
                out = self._normalised[:len(x)]
            yield (key, *to_device(env, x, y, device, out))

    @torch.no_grad()
    def __call__(self, model) -> dict[tuple[int, str], float]:
        was_training = model.training
        model.eval()
        # counted on the device and read once at the end: a read per batch would make the host wait for each
        # forward pass before it reads the next batch's pixels, where it can read them while the GPU computes
        slot = {key: i for i, key in enumerate(self.keys)}
        correct = torch.zeros(len(self.keys), dtype=torch.long, device=self.runtime.device)
        for key, x, y in self.batches():
            with self.runtime.autocast():
                out = model(x)
            correct[slot[key]] += (out.argmax(1) == y).sum()
        model.train(was_training)
        return {key: n / max(len(self.data.splits[key[0]][key[1]]), 1) for key, n in zip(self.keys, correct.tolist())}

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self._staging = self._normalised = None


def _reuse(buffer: torch.Tensor | None, shape, dtype, device, pin: bool = False) -> torch.Tensor:
    """``buffer`` when it holds a batch of ``shape`` (rows beyond the batch unused), else a new one."""
    if buffer is not None and buffer.shape[1:] == tuple(shape[1:]) and len(buffer) >= shape[0]:
        return buffer
    return torch.empty(tuple(shape), dtype=dtype, device=device, pin_memory=pin)


class TargetAlignment:
    """cos(mean training-env gradient, held-out env gradient) on fixed batches (the paper's App. F)."""

    def __init__(self, data: DGData, runtime: Runtime, size: int = 64):
        self.batches = {i: (s["in"].env, load_batch(s["in"].env, s["in"].indices[:size], train=False))
                        for i, s in enumerate(data.splits)}
        self.train_envs, self.test_env = data.train_envs, data.test_envs[0]
        self.runtime = runtime

    def __call__(self, model, device) -> float:
        was_training = model.training
        model.eval()  # no BatchNorm statistics move for a measurement
        params = [p for p in model.parameters() if p.requires_grad]

        def grad(i):
            env, (x, y) = self.batches[i]
            x, y = to_device(env, x, y, device)
            with torch.enable_grad():
                with self.runtime.autocast():
                    loss = F.cross_entropy(model(x), y)
                return flatten(grads_of(loss, params))

        train = torch.stack([grad(i) for i in self.train_envs]).mean(0)
        target = grad(self.test_env)
        model.train(was_training)
        return float(F.cosine_similarity(train, target, dim=0))


@dataclass
class StepPlan:
    """One step's batches as decided by the samplers: an item per env that got images, their sample counts
    (``uniform``), and the samplers' state before the draw (what a checkpoint taken before this step holds)."""

    items: list[Item]
    weights: torch.Tensor | None
    state_before: dict


def steps_per_epoch(recipe: Recipe, data: DGData) -> int:
    """Steps in one pass over the training images: the concatenation's full batches (``concat``), the smallest
    training env's (``per_env``: DomainBed's epoch), or all training images' (``uniform``)."""
    sizes = [len(data.splits[i]["in"]) for i in data.train_envs]
    batch = recipe.training.batch_size
    return max(1, (min(sizes) if recipe.training.batch_sampling == "per_env" else sum(sizes)) // batch)


def total_steps(recipe: Recipe, data: DGData) -> int:
    t = recipe.training
    return t.epochs * steps_per_epoch(recipe, data) if t.unit == "epochs" else t.steps


class Batcher:
    """The per-step batches: ``per_env`` (DomainBed), ``uniform`` (each image's env drawn uniformly) or
    ``concat`` (one shuffled concatenation of the training envs, an epoch at a time).

    Steps are planned here, in order, from the samplers' generators, and loaded by a ``Pipeline`` (workers a
    few steps ahead, or in this process): the same plans whatever the worker count. ``state_dict`` is the
    samplers' state before the first planned step not yet consumed, so a resumed run plans it again."""

    def __init__(self, data: DGData, recipe: Recipe, pipeline: Pipeline | None = None):
        t = recipe.training
        self.data, self.mode, self.batch_size = data, t.batch_sampling, t.batch_size
        self.envs = list(data.train_envs)
        self.samplers = [InfiniteSampler(data.splits[i]["in"], t.batch_size, seed_hash(t.seed, "sampler", i))
                         for i in data.train_envs]
        self.generator = torch.Generator().manual_seed(seed_hash(t.seed, "envs"))
        self.concat = ConcatSampler([data.splits[i]["in"] for i in data.train_envs], t.batch_size,
                                    seed_hash(t.seed, "concat")) if self.mode == "concat" else None
        if self.concat is not None and self.concat.steps_per_epoch == 0:
            raise UserError(f"training.batch_size {t.batch_size} is larger than the {self.concat.total} training "
                            "images: no full batch (batch_sampling: concat drops the partial one)")
        self.pipeline = pipeline or Pipeline([s["in"].env for s in data.splits], 0)
        self._planned: deque[StepPlan] = deque()
        self._stream = None

    def _state(self) -> dict:
        state = {"samplers": [s.state_dict() for s in self.samplers], "generator": self.generator.get_state()}
        return {**state, "concat": self.concat.state_dict()} if self.concat is not None else state

    def plan(self) -> StepPlan:
        """The next step's batches, drawn from the generators (nothing is loaded)."""
        before = self._state()
        if self.mode == "per_env":
            items = [Item.of(e, *s.draw()) for e, s in zip(self.envs, self.samplers)]
            return StepPlan(items, None, before)
        if self.concat is not None:
            drawn = self.concat.draw()
            items = [Item.of(self.envs[k], indices, seeds) for k, indices, seeds in drawn]
            return StepPlan(items, torch.tensor([float(len(i)) for _, i, _ in drawn]), before)
        envs = torch.randint(len(self.samplers), (self.batch_size,), generator=self.generator)
        counts = torch.bincount(envs, minlength=len(self.samplers))
        items = [Item.of(e, *s.draw(int(n))) for e, s, n in zip(self.envs, self.samplers, counts) if n > 0]
        return StepPlan(items, counts[counts > 0].float(), before)

    def _steps(self):
        while True:
            plan = self.plan()
            self._planned.append(plan)
            yield tuple(plan.items)  # one work item a step: its batches load together

    def next(self):
        """(xs, ys, weights): one batch per env that got images this step (on the CPU, pinned for a CUDA
        device), and their sample counts."""
        if self._stream is None:
            self._stream = self.pipeline.stream(self._steps())
        x, y = next(self._stream)  # its plan was drawn before it, so it is the oldest planned one
        plan = self._planned.popleft()
        sizes = [len(item.indices) for item in plan.items]
        return list(x.split(sizes)), list(y.split(sizes)), plan.weights

    def state_dict(self) -> dict:
        return self._planned[0].state_before if self._planned else self._state()

    def load_state_dict(self, state: dict) -> None:
        self.close()  # whatever was planned ahead belongs to the old state
        for s, st in zip(self.samplers, state["samplers"]):
            s.load_state_dict(st)
        self.generator.set_state(state["generator"])
        if self.concat is not None:
            self.concat.load_state_dict(state["concat"])

    def close(self) -> None:
        self._stream = None  # a DataLoader iterator stops its workers when dropped
        self._planned.clear()


def training_domain_acc(metrics: dict, train_envs) -> float:
    """DomainBed's training-domain validation accuracy: the mean of the training envs' out accuracies."""
    return sum(metrics[f"env{i}_out_acc"] for i in train_envs) / len(train_envs)


def select_training_domain(history: list[Record], train_envs) -> Record:
    """DomainBed's training-domain validation: the checkpoint with the best mean train-env out accuracy."""
    return max(history, key=lambda c: training_domain_acc(c.metrics, train_envs))


def judged_key(recipe: Recipe, env: int) -> str:
    """The metric a run is judged by on a test env: its in split (DomainBed) or all its images."""
    return f"env{env}_{'all' if recipe.training.test_split == 'all' else 'in'}_acc"


def select(history: list[Record], recipe: Recipe, data: DGData) -> Record:
    """The checkpoint ``training.selection`` chooses (the first of equals, as ``max`` keeps it): DomainBed's
    training-domain validation (mean of the training envs' out accuracies), DISAM's merged source validation
    (accuracy over all their out images together), or the test env itself (oracle)."""
    selection = recipe.training.selection
    if selection == "training_domain":
        return select_training_domain(history, data.train_envs)
    key = "merged_out_acc" if selection == "merged_source" else judged_key(recipe, data.test_envs[0])
    return max(history, key=lambda c: c.metrics[key])


class DGTask:
    """One DG run: the model, the objective, the optimizer and the batches; evaluated by step."""

    resumable_anywhere = True

    def __init__(self, recipe: Recipe, data: DGData, runtime: Runtime):
        device = runtime.device
        self.recipe, self.data, self.device, self.runtime = recipe, data, device, runtime
        model = MODELS.get(recipe.backbone.name)(data.input_shape, data.n_classes, recipe.backbone, data.classes)
        self.model = model.to(device).train()
        if runtime.channels_last and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.objective = recipe.objective.build(self.model, len(data.train_envs), data.n_classes)
        self.optimizer = self.make_optimizer()
        envs = [s["in"].env for s in data.splits]
        self.pipeline = Pipeline(envs, runtime.workers if not in_memory(envs) else 0,
                                 pin_memory=device.type == "cuda")
        self.batcher = Batcher(data, recipe, self.pipeline)
        self.evaluation = Evaluation(data, runtime, runtime.workers)
        per_domain = getattr(self.optimizer, "per_domain", None)
        if per_domain is not None:
            per_domain.tolerance = runtime.check_tolerance
        self.inner_seed = iter(range(10**9))
        self.alignment = TargetAlignment(data, runtime)
        self.losses = Window()  # the training losses since the last evaluation
        self.parts = {"model": self.model, "optimizer": self.optimizer, "objective": self.objective,
                      "batcher": self.batcher, "losses": self.losses}
        self.per_epoch = steps_per_epoch(recipe, data)
        self.total_steps = PROTOCOL.total_steps(recipe, data)

    def make_optimizer(self):
        """What updates the model: the recipe's optimizer method over the model's and the objective's
        trainable parameters."""
        seed = seed_hash(self.recipe.training.seed, "noise")
        return build_optimizer(self.model, self.recipe.optimizer, seed=seed, extra=self.objective.parameters())

    def first_step(self, resumed_from: int) -> int:
        return resumed_from

    def make_inner_optimizer(self, module):
        seed = seed_hash(self.recipe.training.seed, "inner", next(self.inner_seed))
        return build_optimizer(module, self.recipe.optimizer, seed=seed)

    def close(self) -> None:
        self.batcher.close()
        self.evaluation.close()

    def step(self, step: int):
        xs, ys, weights = self.batcher.next()
        env = self.data.splits[self.data.train_envs[0]]["in"].env  # one dataset: one normalisation
        pairs = [to_device(env, x, y, self.device) for x, y in zip(xs, ys)]
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        if self.runtime.channels_last and xs[0].ndim == 4:
            xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        objective, model, autocast = self.objective, self.model, self.runtime.autocast

        def closure():
            with autocast():
                return objective.losses(model, xs, ys, weights)

        if getattr(objective, "owns_update", False):  # Fish: its meta-update drives the recipe's optimizer
            with autocast():
                losses = objective.update(model, xs, ys, weights, self.make_inner_optimizer)
        else:
            blocks = batch_blocks([len(x) for x in xs]) if objective.separable else nullcontext()
            with blocks:
                losses = self.optimizer.step(closure, weights=weights)
        loss = losses.mean()  # read by the loop one step later (no host sync here)
        objective.after_step(step)
        self.losses.add("loss", loss)
        return loss, getattr(objective, "inner_stats", None) or self.optimizer.stats

    def distribution_losses(self, batches: int, seed: int):
        """Cross-entropy on each training env's fixed batches (drawn from its in split by a generator of
        its own: no training RNG moves)."""
        losses = []
        for x, y in self.fixed_sample(batches * self.recipe.training.batch_size, seed, "diagnose"):
            with self.runtime.autocast():
                losses.append(F.cross_entropy(self.model(x), y))
        return torch.stack(losses), [p for p in self.model.parameters() if p.requires_grad]

    def fixed_sample(self, size: int, *key) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per training env, ``size`` images of its in split (evaluation pixels) drawn by a generator of its own,
        seeded by ``key`` and the env, so no training RNG moves; on the device."""
        out = []
        for i in self.data.train_envs:
            split = self.data.splits[i]["in"]
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed_hash(*key, i)))
            out.append(to_device(split.env, *load_batch(split.env, split.indices[order[:size]], train=False),
                                 self.device))
        return out

    def position_at(self, step: int) -> int | None:
        if self.recipe.training.unit == "epochs":  # after each epoch's last step
            return step if (step + 1) % self.per_epoch == 0 else None
        freq = self.recipe.training.checkpoint_freq
        return step if step % freq == 0 or step == self.total_steps - 1 else None

    def evaluate(self, step: int, window: dict[str, float]) -> Record:
        recipe, data = self.recipe, self.data
        metrics = {**window, **self.losses.means()}
        self.losses.clear()
        accs = self.evaluation(self.model)
        for (i, name), acc in accs.items():
            metrics[f"env{i}_{name}_acc"] = acc
        size = {key: len(data.splits[key[0]][key[1]]) for key in accs}
        if recipe.training.test_split == "all":  # every image of the env: its in and out splits together
            for i in range(len(data.splits)):
                n = size[(i, "in")] + size[(i, "out")]
                metrics[f"env{i}_all_acc"] = (accs[(i, "in")] * size[(i, "in")] + accs[(i, "out")] * size[(i, "out")]) / max(n, 1)
        if recipe.training.selection == "merged_source":  # all training envs' out images as one validation set
            out = [(i, "out") for i in data.train_envs]
            metrics["merged_out_acc"] = sum(accs[k] * size[k] for k in out) / max(sum(size[k] for k in out), 1)
        metrics["target_alignment"] = self.alignment(self.model, self.device)
        row = {
            "args": {"dataset": recipe.dataset.name, "algorithm": recipe.optimizer.label,
                     "objective": recipe.objective.name, "test_envs": data.test_envs,
                     "trial_seed": recipe.training.seed, "seed": recipe.training.seed, "recipe_hash": recipe.hash()},
            "hparams": recipe.optimizer.model_dump(mode="json"),
            "step": step,
            "epoch": ((step + 1) / self.per_epoch if recipe.training.unit == "epochs" else
                      step * recipe.training.batch_size / min(len(data.splits[i]["in"]) for i in data.train_envs)),
            **metrics,
        }
        path = getattr(getattr(self.optimizer, "per_domain", None), "path", None)
        return Record(step, metrics, row, {"sage.per_domain_path": path} if path else None)


class DGProtocol:
    """Domain generalization: DomainBed's loop, judged on the held-out env."""

    kind = "dg"

    def load(self, recipe: Recipe) -> DGData:
        return load_dg_data(recipe)

    def start(self, recipe: Recipe, data: DGData, runtime: Runtime) -> DGTask:
        if recipe.optimizer.task:  # a method that explores instead of training (BOA) brings its own task
            from ..registry import resolve

            return resolve(recipe.optimizer.task)(recipe, data, runtime)
        return DGTask(recipe, data, runtime)

    def total_steps(self, recipe: Recipe, data) -> int:
        return getattr(recipe.optimizer, "reflections", None) or total_steps(recipe, data)  # BOA: one a step

    def loader_workers(self, recipe: Recipe, data: DGData) -> int:
        """Worker processes for the input pipeline: none for data held in memory."""
        return 0 if in_memory([s["in"].env for s in data.splits]) else resolve_workers(recipe.dataset.workers)

    def first_step(self, recipe: Recipe, data, resumed_from: int) -> int:
        return resumed_from

    def status(self, record: Record, data) -> str:
        accs = " ".join(f"{record.metrics[f'env{i}_out_acc']:.3f}" for i in data.test_envs)
        val = [record.metrics[f"env{i}_out_acc"] for i in data.train_envs]
        return f"loss {record.metrics['loss']:.3f} · test out {accs} · val {sum(val) / len(val):.3f}"

    def finish(self, result: TrainResult, recipe: Recipe):
        """(final metrics, a table, the line to print)."""
        from rich.table import Table

        data, last = result.data, result.history[-1].metrics
        test = data.test_envs[0]
        key = judged_key(recipe, test)
        target = last[key]
        chosen = select(result.history, recipe, data)
        selected = chosen.metrics[key]
        title = (f"{recipe.name or 'run'} · {recipe.dataset.name} · {recipe.optimizer.label} "
                 f"· step {result.history[-1].step}")
        table = Table(title=title, min_width=len(title))  # a title wrapped at ' · ' read as cut
        for col in ("env", "role", "in acc", "out acc"):
            table.add_column(col, justify="right" if "acc" in col else "left")
        for i, name in enumerate(data.env_names):
            role = "[bold magenta]test[/]" if i in data.test_envs else "train"
            table.add_row(f"{i} ({name})", role, f"{last[f'env{i}_in_acc']:.4f}", f"{last[f'env{i}_out_acc']:.4f}")
        envs = ",".join(map(str, data.test_envs))
        how = {"training_domain": "training-domain validation", "merged_source": "merged source validation",
               "oracle": "oracle"}[recipe.training.selection]
        where = "" if recipe.training.test_split == "in" else " (all its images)"
        at = f", step {chosen.step}" if recipe.training.selection != "training_domain" else ""
        line = f"target env {envs}{where} accuracy: {target:.4f} (final), {selected:.4f} ({how}{at})"
        return {"target_acc": target, "target_acc_selected": selected}, table, line


PROTOCOL = DGProtocol()


def train_dg(recipe: Recipe, data: DGData | None = None, **kwargs) -> TrainResult:
    """``train`` with the DG protocol (see ``loop.train`` for the keywords)."""
    return train(recipe, PROTOCOL, data=data, **kwargs)
