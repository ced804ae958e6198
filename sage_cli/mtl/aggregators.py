"""Aggregators: how K task losses become one gradient for every parameter (the MTL solvers of Table 2).

Loss-weighting methods (LS, SI, RLW, DWA, UW, FAMO, STL) differentiate a weighted total loss. Gradient
methods (MGDA, PCGrad, IMTL-G, CAGrad, FairGrad) combine the per-task gradients of the *shared* parameters
(everything but the task heads) into one vector; task-specific parameters get their own task's gradient.
Every optimizer takes an aggregator (``aggregator=``), so SAGE-X and SAM-X are compositions, not new code:
SAGE uses the per-task gradients at θ for its agreement S and X's aggregate for its perturbation, then
applies X again at θ+ε.

TorchJD supplies PCGrad, IMTL-G and FairGrad, whose mathematics matches the references (tests compare them
with from-scratch computations on random Jacobians); MGDA is solved exactly here (TorchJD's Frank–Wolfe stops
at a tolerance), and CAGrad follows the reference code (TorchJD normalises the Gramian and drops the
1/(1 + c²) rescaling).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..optim.grads import flatten, grads_of, per_distribution_grads


class Aggregator:
    needs_jacobian = False

    def __init__(self, n_tasks: int, cfg=None, seed: int = 0):
        self.n_tasks = n_tasks
        self.cfg = cfg
        self.shared_ids: set[int] | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.last_weights: torch.Tensor | None = None
        self.current_losses: torch.Tensor | None = None

    def bind(self, shared_parameters) -> Aggregator:
        """Which parameters are shared (the rest are task heads)."""
        self.shared_ids = {id(p) for p in shared_parameters}
        return self

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    # loss weighting ------------------------------------------------------------------------------
    def total_loss(self, losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # gradient combination ------------------------------------------------------------------------
    def combine(self, J: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradients(self, losses: torch.Tensor, params: list[torch.Tensor], per_task=None) -> list[torch.Tensor]:
        """The gradient of every parameter in ``params``; ``per_task`` (g_k over ``params``) if known."""
        if not self.needs_jacobian:
            if per_task is None:
                return grads_of(self.total_loss(losses), params)
            return self._weighted_per_task(losses, params, per_task)
        per_task = per_task if per_task is not None else per_distribution_grads(losses, params)
        return self.scatter(params, per_task, self.shared_direction(losses, params, per_task))

    def shared_mask(self, params) -> list[bool]:
        return [self.shared_ids is None or id(p) in self.shared_ids for p in params]

    def shared_direction(self, losses: torch.Tensor, params, per_task) -> torch.Tensor:
        """X applied to the per-task gradients of the shared parameters: one flat vector."""
        shared = self.shared_mask(params)
        J = torch.stack([flatten([g for g, s in zip(task, shared) if s]) for task in per_task])
        self.current_losses = losses.detach().double().cpu()  # MoCo scales each g_k by its loss
        return self.combine(J.double()).to(J.dtype)

    def scatter(self, params, per_task, direction: torch.Tensor) -> list[torch.Tensor]:
        """The flat shared ``direction`` back into parameter shapes; task heads get their own task's gradient."""
        out, offset = [], 0
        for i, (p, s) in enumerate(zip(params, self.shared_mask(params))):
            if s:
                out.append(direction[offset:offset + p.numel()].reshape(p.shape).to(p.dtype))
                offset += p.numel()
            else:
                out.append(sum(task[i] for task in per_task))
        return out

    def _weighted_per_task(self, losses, params, per_task):
        """The total loss's gradient from already computed g_k (SAGE has them): Σ_k ∂T/∂L_k · g_k, plus
        ∂T/∂s for the aggregator's own parameters (UW)."""
        L = losses.detach().requires_grad_(True)
        own = self.parameters()
        with torch.enable_grad():
            coeffs = torch.autograd.grad(self.total_loss(L), [L, *own], allow_unused=True)
        dL, own_grads = coeffs[0], {id(p): g for p, g in zip(own, coeffs[1:])}
        out = []
        for i, p in enumerate(params):
            if id(p) in own_grads:
                out.append(own_grads[id(p)] if own_grads[id(p)] is not None else torch.zeros_like(p))
            else:
                out.append(sum(float(dL[k]) * task[i] for k, task in enumerate(per_task)))
        return out

    # hooks and state -----------------------------------------------------------------------------
    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        pass

    def after_update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        pass

    wants_losses_after_update = False

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _setting(cfg, name):
    """A setting from the aggregator's ``cfg``, else its default (``settings.py``, where every name is unique)."""
    if cfg is not None and hasattr(cfg, name):
        return getattr(cfg, name)
    from .settings import AGGREGATORS

    return next(AGGREGATORS.get(n).model_fields[name].default for n in AGGREGATORS.names()
                if name in AGGREGATORS.get(n).model_fields)


# ----------------------------------------------------------------------------------- loss weighting
class LS(Aggregator):
    """Linear scalarisation: Σ_k L_k (the references' convention)."""

    def total_loss(self, losses):
        return losses.sum()


class STL(Aggregator):
    """Single-task learning: only task ``stl_task``'s loss is trained."""

    def total_loss(self, losses):
        return losses[int(_setting(self.cfg, "stl_task"))]


class SI(Aggregator):
    """Scale-invariant: Σ_k log L_k."""

    def total_loss(self, losses):
        return torch.log(losses).sum()


class RLW(Aggregator):
    """Random loss weighting (Lin et al.): w = softmax(z), z ~ N(0, I), drawn afresh each step."""

    def total_loss(self, losses):
        w = F.softmax(torch.randn(self.n_tasks, generator=self.generator), dim=-1).to(losses)
        self.last_weights = w.detach()
        return (w * losses).sum()


class DWA(Aggregator):
    """Dynamic weight average (Liu et al.): w_k = K·softmax_k(r_k / T), r_k = L_k(t−1)/L_k(t−2) over epochs."""

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.temperature = float(_setting(cfg, "dwa_temperature"))
        self.history: list[list[float]] = []

    def weights(self) -> torch.Tensor:
        if len(self.history) < 2:
            return torch.ones(self.n_tasks)
        r = torch.tensor(self.history[-1]) / torch.tensor(self.history[-2])
        return self.n_tasks * F.softmax(r / self.temperature, dim=-1)

    def total_loss(self, losses):
        w = self.weights().to(losses)
        self.last_weights = w
        return (w * losses).sum()

    def end_epoch(self, mean_losses):
        self.history = (self.history + [[float(v) for v in mean_losses]])[-2:]

    def state_dict(self):
        return {**super().state_dict(), "history": self.history}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.history = [list(map(float, h)) for h in state.get("history", [])]


class UW(Aggregator):
    """Uncertainty weighting (Kendall et al.): Σ_k ½(exp(−s_k) L_k + s_k), s_k = log σ_k² learned."""

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.log_vars = torch.nn.Parameter(torch.zeros(n_tasks))

    def parameters(self):
        return [self.log_vars]

    def total_loss(self, losses):
        s = self.log_vars.to(losses)
        return (0.5 * (torch.exp(-s) * losses + s)).sum()

    def state_dict(self):
        return {**super().state_dict(), "log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])


class FAMO(Aggregator):
    """FAMO (Liu et al. 2023): weights z = softmax(ξ) on log-losses, normalised by c = Σ z_k / L_k; after
    each update ξ takes one Adam step (lr ``famo_w_lr``, weight decay ``famo_gamma``) towards the tasks whose
    log-loss fell least."""

    wants_losses_after_update = True

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.logits = torch.zeros(n_tasks, requires_grad=True)
        self.min_losses = torch.zeros(n_tasks)
        self.optimizer = torch.optim.Adam([self.logits], lr=float(_setting(cfg, "famo_w_lr")),
                                          weight_decay=float(_setting(cfg, "famo_gamma")))

    def total_loss(self, losses):
        z = F.softmax(self.logits, -1).to(losses).detach()
        d = losses - self.min_losses.to(losses) + 1e-8
        c = (z / d).sum().detach()
        self.last_weights = z
        return (d.log() * z / c).sum()

    def after_update(self, losses_before, losses_after):
        delta = (losses_before.detach().cpu() - self.min_losses + 1e-8).log() - \
                (losses_after.detach().cpu() - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            grad = torch.autograd.grad(F.softmax(self.logits, -1), self.logits, grad_outputs=delta)[0]
        self.optimizer.zero_grad()
        self.logits.grad = grad
        self.optimizer.step()

    def state_dict(self):
        return {**super().state_dict(), "logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])


# ------------------------------------------------------------------------------- gradient methods
def min_norm_weights(G: torch.Tensor) -> torch.Tensor:
    """argmin_{w ∈ simplex} wᵀGw, exactly: the best KKT point over every support set (K is small)."""
    K = G.shape[0]
    best, best_value = None, math.inf
    for size in range(1, K + 1):
        for support in itertools.combinations(range(K), size):
            idx = list(support)
            A = torch.zeros(size + 1, size + 1, dtype=G.dtype)
            A[:size, :size] = 2 * G[idx][:, idx]
            A[:size, size] = 1
            A[size, :size] = 1
            b = torch.zeros(size + 1, dtype=G.dtype)
            b[size] = 1
            sol = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
            w_s = sol[:size]
            if (w_s < -1e-12).any():
                continue
            w = torch.zeros(K, dtype=G.dtype)
            w[idx] = w_s.clamp_min(0)
            w = w / w.sum()
            value = float(w @ G @ w)
            if value < best_value - 1e-15:
                best, best_value = w, value
    return best


class MGDA(Aggregator):
    """MGDA (Désidéri; Sener & Koltun): the min-norm point of the convex hull of the task gradients."""

    needs_jacobian = True

    def combine(self, J):
        w = min_norm_weights(J @ J.T)
        self.last_weights = w
        return w @ J


class _TorchJD(Aggregator):
    needs_jacobian = True
    random = False  # True: TorchJD draws from torch's global RNG; those draws come from our generator instead

    def make(self):
        raise NotImplementedError

    def combine(self, J):
        if not hasattr(self, "_torchjd"):
            self._torchjd = self.make()
        if not self.random:
            return self._torchjd(J)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=self.generator)))
            return self._torchjd(J)


class PCGrad(_TorchJD):
    """PCGrad (Yu et al. 2020): each g_i projected off the g_j it conflicts with, in random order; summed."""

    random = True

    def make(self):
        from torchjd.aggregation import PCGrad as TorchJDPCGrad

        return TorchJDPCGrad()


class IMTLG(_TorchJD):
    """IMTL-G (Liu et al. 2021): weights making the update's projection on every unit task gradient equal."""

    def make(self):
        from torchjd.aggregation import IMTLG as TorchJDIMTLG

        return TorchJDIMTLG()


class FairGrad(_TorchJD):
    """FairGrad (Ban & Ji 2024): α-fair weights solving G w = w^(−1/α); update Σ w_k g_k (α = 2)."""

    def make(self):
        from torchjd.aggregation import FairGrad as TorchJDFairGrad

        return TorchJDFairGrad(alpha=float(_setting(self.cfg, "fairgrad_alpha")))


class GradDrop(_TorchJD):
    """GradDrop (Chen et al. 2020), lines 10–15 of Algorithm 1: per coordinate keep the gradients of one sign,
    the positive one with probability P = ½(1 + Σg/Σ|g|). Applied here to the shared parameters' gradients
    (the paper applies it at a shared activation layer)."""

    random = True

    def make(self):
        from torchjd.aggregation import GradDrop as TorchJDGradDrop

        return TorchJDGradDrop()


class NashMTL(_TorchJD):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining weights, Ĝα = 1/α on the Gramian normalised by its
    norm, solved by the reference's sequence of convex (ECOS) problems; the update's norm clipped at 1."""

    def make(self):
        import warnings

        from torchjd.aggregation import NashMTL as TorchJDNashMTL

        warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")
        return TorchJDNashMTL(n_tasks=self.n_tasks, max_norm=float(_setting(self.cfg, "nash_max_norm")),
                              update_weights_every=1, optim_niter=20)


def cagrad_direction(J: torch.Tensor, c: float = 0.4) -> torch.Tensor:
    """CAGrad (Liu et al. 2021), as in the reference code: w = argmin_{simplex} wᵀG g0_w + c‖g0‖√(wᵀGw) on
    the Gramian G = JJᵀ (g0 the mean gradient), then d = (g0 + c‖g0‖ g_w/‖g_w‖) / (1 + c²)."""
    from scipy.optimize import minimize

    G = (J @ J.T).cpu().numpy().astype(np.float64)
    K = G.shape[0]
    g0_norm = math.sqrt(max(G.mean(), 0.0))  # ‖g0‖² = 1ᵀG1/K²
    phi = c * g0_norm
    b = G.mean(1)  # G·(1/K)

    def objective(w):
        return float(w @ b + phi * math.sqrt(max(w @ G @ w, 1e-20)))

    res = minimize(objective, np.ones(K) / K, bounds=[(0, 1)] * K,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},), method="SLSQP",
                   options={"ftol": 1e-12, "maxiter": 500})
    w = torch.as_tensor(res.x, dtype=J.dtype)
    gw = w @ J
    g0 = J.mean(0)
    lam = phi / (gw.norm() + 1e-12)
    return (g0 + lam * gw) / (1 + c ** 2)


class CAGrad(Aggregator):
    needs_jacobian = True

    def combine(self, J):
        return cagrad_direction(J, float(_setting(self.cfg, "cagrad_c")))


class MoCo(Aggregator):
    """MoCo (Fernando et al. 2023), as in LibMTL's implementation of the authors' code: each g_k rescaled to
    norm L_k; a tracking estimate y_k ← y_k − β_t (y_k − g_k) with β_t = β / t^σ_β; weights
    λ ← softmax(λ − γ_t (Y Yᵀ + ρI) λ) with γ_t = γ / t^σ_γ; update Yᵀλ. Defaults: β 0.5, σ_β 0.5, γ 0.1,
    σ_γ 0.5, ρ 0."""

    needs_jacobian = True

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.beta = float(_setting(cfg, "moco_beta"))
        self.beta_sigma = float(_setting(cfg, "moco_beta_sigma"))
        self.gamma = float(_setting(cfg, "moco_gamma"))
        self.gamma_sigma = float(_setting(cfg, "moco_gamma_sigma"))
        self.rho = float(_setting(cfg, "moco_rho"))
        self.t = 0
        self.y: torch.Tensor | None = None
        self.lambd = torch.full((n_tasks,), 1.0 / n_tasks, dtype=torch.float64)

    def combine(self, J):
        self.t += 1
        losses = self.current_losses if self.current_losses is not None else torch.ones(self.n_tasks)
        G = J / (J.norm(dim=1, keepdim=True) + 1e-8) * losses.to(J).reshape(-1, 1)
        if self.y is None:
            self.y = torch.zeros_like(G)
        self.y = self.y - (self.beta / self.t ** self.beta_sigma) * (self.y - G)
        A = self.y @ self.y.T + self.rho * torch.eye(self.n_tasks, dtype=J.dtype, device=J.device)
        lam = self.lambd.to(J)
        self.lambd = F.softmax(lam - (self.gamma / self.t ** self.gamma_sigma) * (A @ lam), dim=-1)
        self.last_weights = self.lambd.float()
        return self.y.T @ self.lambd

    def state_dict(self):
        return {**super().state_dict(), "t": self.t, "y": self.y, "lambd": self.lambd}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.t, self.y, self.lambd = int(state["t"]), state["y"], state["lambd"]
