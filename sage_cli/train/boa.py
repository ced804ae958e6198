"""BOA runs: the Billiard Optimization Algorithm (``optim/boa.py``) in the DG loop. The model starts from the
checkpoint ``optimizer.init_from`` names (a run of the same dataset and held-out envs: SAM-trained for the
paper's "BOA (SAM pretrained)" row); each step is one reflection, and each boundary point is evaluated and
checkpointed like a training checkpoint, so model selection along the trajectory (training-domain, LOO,
oracle) comes from the report, and a run stopped mid-trajectory resumes on the same trajectory.

ℓ_train is the mean over the training envs of the cross-entropy on a fixed, seeded sample of
``loss_batches × batch_size`` images per env (evaluation transform: no augmentation), held on the device; the
model is in eval mode while BOA measures it. Not for: training (BOA takes no gradient step).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..analysis.hessian import HessianOperator
from ..errors import Pruned, UserError
from ..optim.boa import Billiard, finite_difference_hvp
from .dg import DGTask


def _pruned(uri: str, run_id: str) -> bool:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(run_id).data.tags.get("sage.pruned") == "true"


def start_checkpoint(init_from: str | None, recipe) -> Path:
    """The checkpoint file ``init_from`` names: a file, a recipe (its run's checkpoint under its output folder),
    an MLflow run id, or ``hash:<recipe hash>`` (the finished run of that identity in this recipe's store: what a
    sweep plans for BOA from its SAM job); its run must hold out the same envs of the same dataset."""
    from .diagnose import locate
    from .runner import checkpoint_path_for

    if not init_from:
        raise UserError("optimizer.method boa explores from a trained start: set optimizer.init_from to a "
                        "checkpoint file, a recipe whose run finished, or a run id")
    if init_from.endswith((".yaml", ".yml")):
        from ..recipe import load_recipe

        start = load_recipe(init_from)
        path = checkpoint_path_for(start)
        if not path.is_file():
            raise UserError(f"optimizer.init_from {init_from}: its run has no checkpoint at {path}; run it first "
                            f"(sage run {init_from})")
    else:
        if init_from.startswith("hash:"):
            from ..track.mlflow_run import finished_run_of, resolve_tracking_uri

            uri = resolve_tracking_uri(recipe.tracking.uri)
            run_id = finished_run_of(uri, init_from[len("hash:"):])
            if run_id is None:
                raise UserError(f"optimizer.init_from {init_from}: no finished run of that recipe in {uri}; its "
                                "start job has not finished")
            if _pruned(uri, run_id):  # a search stopped that draw early: nothing worth exploring from
                raise Pruned(0, f"its start ({init_from}) is a random-search draw that was pruned")
            init_from = run_id
        target = locate(init_from, tracking_uri=recipe.tracking.uri)
        start, path = target.recipe, target.checkpoint
    same = (start.dataset.name, list(start.dataset.test_envs)) == (recipe.dataset.name, list(recipe.dataset.test_envs))
    if not same:
        raise UserError(f"optimizer.init_from {init_from}: it trained on {start.dataset.name} holding out "
                        f"{start.dataset.test_envs}; this run holds out {recipe.dataset.test_envs} of "
                        f"{recipe.dataset.name}")
    return path


class Explorer:
    """The BOA state a checkpoint holds (the billiard's θ, p, basis and ℓ_th) and the functions it measures
    the model by."""

    def __init__(self, model, batches, *, init_from=None, delta_loss=0.1, krylov_dim=10, hvp="exact", fd_eps=1e-3,
                 step=0.05, tol=1e-3, reflections=10, loss_batches=4):
        # the settings' defaults (``settings/methods.py`` BOA), so a direct call means what a recipe does;
        # init_from, reflections and loss_batches are the task's (the start, the step count, ``batches``)
        self.model, self.batches = model, batches
        self.krylov_dim, self.hvp, self.fd_eps = krylov_dim, hvp, fd_eps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.billiard = Billiard(self.loss, self.grad, delta_loss=delta_loss, step=step, tol=tol)
        self.started = False
        self.stats: dict[str, float] = {}

    def _loss(self, theta: torch.Tensor) -> torch.Tensor:
        vector_to_parameters(theta.to(self.params[0].dtype), self.params)
        return torch.stack([F.cross_entropy(self.model(x), y) for x, y in self.batches]).mean()

    def loss(self, theta: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self._loss(theta))

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            grads = torch.autograd.grad(self._loss(theta), self.params)
        return parameters_to_vector(grads).detach()

    def start(self) -> None:
        theta0 = parameters_to_vector(self.params).detach().clone()
        if self.hvp == "exact":
            with torch.enable_grad():
                operator = HessianOperator(self._loss(theta0), self.params)
            hvp = operator
        else:
            hvp = finite_difference_hvp(self.grad, theta0, self.grad(theta0), self.fd_eps)
        subspace = self.billiard.start(theta0, hvp, self.krylov_dim)
        self.started = True
        self.stats = {"boa_krylov_dim": float(subspace.basis.shape[1])}

    def step(self) -> float:
        was_training = self.model.training
        self.model.eval()  # no BatchNorm statistic moves while BOA measures
        try:
            if not self.started:
                self.start()
            point = self.billiard.next()
            vector_to_parameters(point.theta.to(self.params[0].dtype), self.params)
        finally:
            self.model.train(was_training)
        self.stats = {**self.stats, "boa_alpha": point.alpha, "boa_threshold": self.billiard.threshold,
                      "boa_bounded": float(point.bounded)}
        return point.loss

    def state_dict(self) -> dict:
        return {"started": self.started, "stats": dict(self.stats),
                **(self.billiard.state_dict() if self.started else {})}

    def load_state_dict(self, state: dict) -> None:
        self.started, self.stats = bool(state["started"]), dict(state["stats"])
        if self.started:
            self.billiard.load_state_dict(state)


class BOATask(DGTask):
    """A DG task whose steps are BOA's reflections from the ``init_from`` checkpoint."""

    def make_optimizer(self) -> Explorer:
        from .checkpoint import load_checkpoint

        settings = self.recipe.optimizer
        path = start_checkpoint(settings.init_from, self.recipe)
        try:
            self.model.load_state_dict(load_checkpoint(path)["parts"]["model"])
        except Exception as exc:  # another backbone's or dataset's parameters, a damaged file
            raise UserError(f"optimizer.init_from: cannot load the model from {path} ({type(exc).__name__}); "
                            "is it a run of this backbone and dataset?") from None
        size = settings.loss_batches * self.recipe.training.batch_size
        return Explorer(self.model, self.fixed_sample(size, self.recipe.training.seed, "boa"),
                        **settings.own_settings())

    def step(self, step: int):
        loss = self.optimizer.step()
        self.losses.add("loss", loss)
        return loss, self.optimizer.stats

    def position_at(self, step: int) -> int | None:
        return step  # every boundary point is a checkpoint
