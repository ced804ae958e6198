"""Sharpness-aware MTL with one perturbation per task: F-MTL, SAMO and SAGE-SAMO.

Every rule here follows one scheme (the references' "SAM, stage I / stage II"):

1. at θ, a perturbation direction d_k per task k: over the shared parameters and over task k's own head;
2. for each k, move to θ + ε_k (shared part and head k), take ∇L_k there, restore θ exactly;
3. combine the K perturbed gradients with the aggregator X (shared parameters; every head gets its own
   task's perturbed gradient) and take the base step.

F-MTL (Phan et al., ICCV 2025, official code): d_k = ∇L_k; ε_k = ρ T²d/‖T d‖ (T = |θ| when ``adaptive``,
    else 1) normalised over the shared part and over the head apart; the update is X(g_1..g_K) +
    X(h_1..h_K) with h_k = g_k(θ+ε_k) − g_k(θ) (``decompose``), or X of the perturbed gradients.
SAMO (Ban, Subramani & Ji, ICCV 2025, official code): one backward of the mean loss gives the global
    gradient g; each task's local gradient is estimated from two forwards (SPSA: ĝ_k = (L_k(θ+μz) −
    L_k(θ−μz))/(2μ) · z over the shared parameters, model in eval mode); per layer the mix is
    (1−β) g + β‖g‖ ĝ_k/‖ĝ_k‖ (``layerwise``; else (1−β) g + β ĝ_k), ε_k = ρ·mix/‖mix‖ over the shared
    parameters and ρ·ĝ/‖ĝ‖ over head k; the shared update is K·X(...) clipped to ``max_norm``.
SAGE-SAMO: SAMO's directions with SAGE's spectral ascent (ρ‖W‖_F · polar(d_k) per matrix) and SAGE's descent
    noise β·ξ, β = γ(1 − S) with S the agreement of the per-task gradients at θ.
"""

from __future__ import annotations

import torch

from .base import Anchor, WrappedOptimizer, _check_non_negative, add_noise
from .grads import (
    as_loss_vector,
    frozen_norm_stats,
    grads_of,
    loss_weights,
    mean_pairwise_cosine,
    norm_of,
    weighted_sum,
)
from .noise import NoiseSource
from .sage import AgreementNoise, SpectralAscent
from .stats import StepStats


def task_gradients(losses: torch.Tensor, params: list[torch.Tensor]) -> list[list[torch.Tensor | None]]:
    """∇L_k for every k; None where L_k does not reach a parameter (another task's head)."""
    K = losses.numel()
    return [list(torch.autograd.grad(losses[k], params, retain_graph=k < K - 1, allow_unused=True))
            for k in range(K)]


def zero_filled(per_task, params) -> list[list[torch.Tensor]]:
    """``task_gradients`` with zeros where a loss does not reach a parameter."""
    return [[torch.zeros_like(p) if g is None else g for p, g in zip(params, task)] for task in per_task]


class PerTaskSharpness(WrappedOptimizer):
    """Steps 1–3 above; subclasses say how d_k and ε_k are built and how the K gradients are combined."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, model=None,
                 defaults: dict | None = None, **base_kwargs):
        _check_non_negative(rho=rho)
        super().__init__(params, base_optimizer, {"rho": rho, **(defaults or {})}, model=model, **base_kwargs)

    # --- what subclasses define -------------------------------------------------------------------
    def directions(self, losses, weights, params, shared, anchor, closure) -> tuple[list[dict], list | None, dict]:
        """Per task {parameter index: d_k}, the per-task gradients at θ where computed, and statistics;
        ``anchor`` holds an exact copy of θ, to probe around it."""
        raise NotImplementedError

    def perturbation(self, params, direction: dict, shared) -> dict:
        raise NotImplementedError

    def combine(self, losses, weights, params, perturbed, clean) -> list:
        return self.combined_gradients(losses, weights, params, perturbed)

    def descent_noise_scales(self, params) -> list[float] | None:
        return None

    def noise_like(self, p):
        raise NotImplementedError

    # --- the scheme -------------------------------------------------------------------------------
    def scaled_by_group(self, params, direction: dict, shared, adaptive: bool = False) -> dict:
        """ε = ρ T²d/‖T d‖ (T = |θ| if ``adaptive``, else 1), normalised over the shared part and the head apart."""
        eps = {}
        for group in ([i for i in direction if shared[i]], [i for i in direction if not shared[i]]):
            if not group:
                continue
            t = {i: params[i].detach().abs() if adaptive else 1.0 for i in group}
            norm = norm_of([t[i] * direction[i] for i in group]).double()  # as float(): no read from the device
            rhos = self.per_param("rho")
            for i in group:
                eps[i] = direction[i] * (t[i] * t[i] if adaptive else 1.0) * (rhos[i] / (norm + 1e-12))
        return eps

    def step(self, closure, weights=None):
        with torch.enable_grad():
            losses = as_loss_vector(closure())
        w = loss_weights(losses, weights)
        params = self._params()
        shared = self.shared_mask(params)
        anchor = Anchor(params)
        with torch.enable_grad():
            directions, clean, extra = self.directions(losses, w, params, shared, anchor, closure)
        perturbed, perturbed_losses, eps_norms = [], [], []
        with frozen_norm_stats(self.model):
            for k, direction in enumerate(directions):
                eps = self.perturbation(params, direction, shared)
                eps_norms.append(norm_of(list(eps.values())))
                with anchor.at([eps.get(i) for i in range(len(params))]), torch.enable_grad():
                    loss_k = as_loss_vector(closure())[k]
                    perturbed.append(grads_of(loss_k, params))
                perturbed_losses.append(loss_k.detach())
        grads = self.combine(losses, w, params, perturbed, clean)
        add_noise(self, params, grads)
        self.base_optimizer.step()
        # statistics stay on the device (StepStats), summed in float64 and in order, as the floats they replace were
        self.stats = StepStats(loss=(w * losses).sum(), grad_norm=norm_of(grads),
                               perturbation_norm=sum(n.double() for n in eps_norms) / len(eps_norms),
                               perturbed_loss=sum(wk * lk.double() for wk, lk in zip(w.double(), perturbed_losses)),
                               **extra)
        return losses.detach()


def _heads(grads_k, shared) -> dict:
    """Task k's own head: the non-shared parameters its loss reaches."""
    return {i: g for i, g in enumerate(grads_k) if not shared[i] and g is not None}


class FMTL(PerTaskSharpness):
    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 2.0, adaptive: bool = True,
                 decompose: bool = True, model=None, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, model=model,
                         defaults={"adaptive": adaptive, "decompose": decompose}, **base_kwargs)
        self.adaptive, self.decompose = adaptive, decompose

    def directions(self, losses, weights, params, shared, anchor, closure):
        per_task = task_gradients(losses, params)
        clean = zero_filled(per_task, params)
        directions = [{**{i: g for i, g in enumerate(task) if shared[i]}, **_heads(raw, shared)}
                      for task, raw in zip(clean, per_task)]
        return directions, clean, {}

    def perturbation(self, params, direction, shared):
        return self.scaled_by_group(params, direction, shared, self.adaptive)

    def combine(self, losses, weights, params, perturbed, clean):
        agg = self.aggregator
        if not (self.decompose and agg is not None and agg.needs_jacobian):
            # X linear in the g_k (loss weightings, the mean): X(g) + X(h) = X(g + h), the perturbed gradients
            return self.combined_gradients(losses, weights, params, perturbed)
        flatness = [[gs - g for gs, g in zip(sam, cl)] for sam, cl in zip(perturbed, clean)]
        direction = agg.shared_direction(losses, params, clean) + agg.shared_direction(losses, params, flatness)
        return agg.scatter(params, perturbed, direction)


class SAMO(PerTaskSharpness):
    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 1e-3, beta: float = 0.5,
                 zo_eps: float = 0.01, layerwise: bool = True, max_norm: float = 1.0, seed: int | None = None,
                 model=None, defaults: dict | None = None, **base_kwargs):
        _check_non_negative(beta=beta, zo_eps=zo_eps, max_norm=max_norm)
        settings = {"beta": beta, "zo_eps": zo_eps, "layerwise": layerwise, "max_norm": max_norm, **(defaults or {})}
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults=settings, **base_kwargs)
        self.beta, self.zo_eps, self.layerwise, self.max_norm = beta, zo_eps, layerwise, max_norm
        self.probe = NoiseSource(seed)  # the SPSA directions z

    # --- global and local information ---------------------------------------------------------------
    def global_and_heads(self, losses, weights, params, shared):
        """The mean loss's gradient over the shared parameters, and each task's head gradient (cheap: the
        backward of L_k to its head only)."""
        head_idx = [i for i, s in enumerate(shared) if not s]
        heads = []
        for k in range(losses.numel()):
            g = torch.autograd.grad(losses[k], [params[i] for i in head_idx], retain_graph=True,
                                    allow_unused=True) if head_idx else []
            heads.append({i: gi for i, gi in zip(head_idx, g) if gi is not None})
        shared_idx = [i for i, s in enumerate(shared) if s]
        g = grads_of((weights * losses).sum(), [params[i] for i in shared_idx])
        return dict(zip(shared_idx, g)), heads, {}

    @torch.no_grad()
    def local_estimate(self, closure, params, anchor, shared_idx, k) -> dict:
        """SPSA: ĝ_k = (L_k(θ+μz) − L_k(θ−μz)) / (2μ) · z, z ~ N(0, I) over the shared parameters, in eval mode."""
        mu = self.zo_eps
        z = {i: self.probe.normal_like(params[i]) for i in shared_idx}
        offsets = [z.get(i) for i in range(len(params))]
        training = self.model.training if self.model is not None else None
        if self.model is not None:
            self.model.eval()
        try:
            with anchor.at(offsets, mu):
                plus = as_loss_vector(closure())[k]
            with anchor.at(offsets, -mu):
                minus = as_loss_vector(closure())[k]
        finally:
            if self.model is not None:
                self.model.train(training)
        projected = (plus - minus) / (2 * mu)
        return {i: projected.to(z[i].dtype) * z[i] for i in shared_idx}

    def mix(self, g: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        if self.layerwise:
            return (1 - self.beta) * g + self.beta * g.norm() * local / local.norm().clamp_min(1e-30)
        return (1 - self.beta) * g + self.beta * local

    def directions(self, losses, weights, params, shared, anchor, closure):
        global_grad, heads, extra = self.global_and_heads(losses, weights, params, shared)
        shared_idx = list(global_grad)
        directions = []
        for k in range(losses.numel()):
            local = self.local_estimate(closure, params, anchor, shared_idx, k)
            directions.append({**{i: self.mix(global_grad[i], local[i]) for i in shared_idx}, **heads[k]})
        return directions, None, extra

    def perturbation(self, params, direction, shared):
        return self.scaled_by_group(params, direction, shared)

    def combine(self, losses, weights, params, perturbed, clean):
        grads = self.combined_gradients(losses, weights, params, perturbed)
        shared = self.shared_mask(params)
        K = losses.numel()
        with torch.no_grad():  # the reference: the shared update ×K ("to match the sum loss"), then clipped
            shared_grads = [g.mul_(K) for g, s in zip(grads, shared) if s]
            if self.max_norm > 0:  # clipped on the device (× 1.0 when within the bound: exact), with no read
                norm = norm_of(shared_grads).double()
                scale = torch.where(norm > self.max_norm, self.max_norm / (norm + 1e-6), 1.0)
                for g in shared_grads:
                    g.mul_(scale)
        return grads

    def _extra_state(self) -> dict:
        return {"probe": self.probe.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        if "probe" in state:
            self.probe.load_state_dict(state["probe"])


class SAGESAMO(SAMO):
    """SAMO's per-task directions through SAGE's spectral ascent, plus SAGE's agreement noise at descent."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 1e-6, gamma: float = 1e-6,
                 polar: str = "quintic", ns_steps: int = 5, scale_by_weight_norm: bool = True, bias_rule: str = "sam",
                 noise: bool = True, beta: float = 0.5, zo_eps: float = 0.01, layerwise: bool = True,
                 max_norm: float = 1.0, polar_dtype: str = "float32", seed: int | None = None, model=None,
                 **base_kwargs):
        ascent = SpectralAscent(rho, polar, ns_steps, scale_by_weight_norm, bias_rule, polar_dtype)
        descent_noise = AgreementNoise(gamma, noise, seed)
        settings = dict(gamma=gamma, polar=polar, ns_steps=ns_steps, scale_by_weight_norm=scale_by_weight_norm,
                        bias_rule=bias_rule, noise=noise)
        probe_seed = None if seed is None else seed + 1  # z and ξ from different streams
        super().__init__(params, base_optimizer, rho=rho, beta=beta, zo_eps=zo_eps, layerwise=layerwise,
                         max_norm=max_norm, seed=probe_seed, model=model, defaults=settings, **base_kwargs)
        self.ascent, self.descent_noise = ascent, descent_noise

    def global_and_heads(self, losses, weights, params, shared):
        """The per-task gradients at θ (SAGE's agreement S needs them); their weighted mean is SAMO's g."""
        per_task = task_gradients(losses, params)
        heads = [_heads(task, shared) for task in per_task]
        filled = zero_filled(per_task, params)
        shared_idx = [i for i, s in enumerate(shared) if s]
        shared_grads = [[task[i] for i in shared_idx] for task in filled]
        global_grad = dict(zip(shared_idx, weighted_sum(shared_grads, weights)))
        agreement = mean_pairwise_cosine(shared_grads)
        return global_grad, heads, self.descent_noise.set_agreement(agreement)

    def perturbation(self, params, direction, shared):
        rhos = self.per_param("rho")
        keys = list(direction)
        eps = self.ascent.many([params[i] for i in keys], [direction[i] for i in keys], [rhos[i] for i in keys])
        return dict(zip(keys, eps))

    def descent_noise_scales(self, params) -> list[float]:
        return self.descent_noise.betas(self.per_param("gamma"))

    def noise_like(self, p):
        return self.descent_noise.like(p)

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "noise": self.descent_noise.source.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        if "noise" in state:
            self.descent_noise.source.load_state_dict(state["noise"])
