"""Every optimizer method's settings, registered by name; ``build`` makes the optimizer.

One class per method, holding only what that method reads, with its defaults defined here once (the radius
of each method is its paper's: SAGE at the paper's DG value, App. E). The implementations live in one module
each in ``sage_cli/optim/`` (``sage.py``, ``sam.py``, …) and are imported by ``build`` only, so checking a recipe never imports
torch. The method's settings go into the optimizer's param groups, so a group may override ρ (or γ) as it
would torch's own ``lr``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..registry import Registry
from . import Choice, non_defaults
from .distributions import DOMAINBED, SAGM, ByDataset, Dist

METHODS = Registry("optimizer method")
FIG3 = "SAGE paper, Fig. 3: 10^-7 … 10^-4"


class Method(Choice):
    """What every method shares: the base optimizer it wraps and that optimizer's settings."""

    tag: ClassVar[str] = "method"
    method: str
    base: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)  # base sgd only

    # the keyword names of the implementation's constructor, for settings named otherwise in recipes
    rename: ClassVar[dict[str, str]] = {}
    implementation: ClassVar[str] = ""  # "module:Class"
    # a method that does not train step by step (BOA): the DG task class that runs it, "module:Class"
    task: ClassVar[str] = ""
    # random search (``search/``): each setting's distribution, with its source; a subclass adds its own
    search: ClassVar[dict] = {
        "lr": ByDataset(Dist("log10", (-5, -3.5), domainbed="lr", source=DOMAINBED),
                        small=Dist("log10", (-4.5, -2.5), domainbed="lr", source=DOMAINBED)),
        "weight_decay": ByDataset(Dist("log10", (-6, -2), domainbed="weight_decay", source=DOMAINBED),
                                  small=Dist("choice", (0.0,), domainbed="weight_decay", source=DOMAINBED)),
    }

    def misfit(self, kind):
        if self.base != "sgd" and self.momentum != Method.model_fields["momentum"].default:
            return "momentum", self.momentum, f"momentum acts only with base 'sgd', not '{self.base}'"
        return None

    @property
    def label(self) -> str:
        """The method's name in tables and run tags."""
        return self.method

    def idle(self) -> set[str]:
        return set() if self.base == "sgd" else {"momentum"}

    def own_settings(self) -> dict:
        """The method's own keywords for its implementation (everything but the base optimizer's)."""
        shared = set(Method.model_fields)
        return {self.rename.get(k, k): getattr(self, k) for k in type(self).model_fields if k not in shared}

    def base_kwargs(self) -> dict:
        # torch's fused kernel: one pass over each parameter instead of one per operation of the update (Adam on
        # 2 CPU cores, in a run's step: ResNet-50 0.07 -> 0.017 s, ViT-B/16 0.15 -> 0.04 s); the same update up
        # to float rounding
        kwargs = {"lr": self.lr, "weight_decay": self.weight_decay, "fused": True}
        if self.base == "sgd":
            kwargs["momentum"] = self.momentum
        return kwargs

    def base_optimizer(self):
        import torch

        return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[self.base]

    def build(self, params, model=None, seed: int | None = None):
        import inspect

        from ..registry import resolve

        cls = resolve(self.implementation)
        extra = {"seed": seed} if "seed" in inspect.signature(cls).parameters else {}
        return cls(params, self.base_optimizer(), model=model, **self.own_settings(), **extra, **self.base_kwargs())


# no public registry of their own was found for SAM, GSAM, DISAM and GAM: they draw ρ from SAGM's list
SAM_TYPE_SEARCH = {**Method.search, "rho": Dist("choice", (0.01, 0.02, 0.05, 0.1), source=f"{SAGM}, its ρ list")}


@METHODS.register
class ERM(Method):
    """Plain training: the base optimizer on the (aggregate) gradient."""

    method: Literal["erm"] = "erm"
    implementation: ClassVar[str] = "sage_cli.optim.base:SinglePassOptimizer"


@METHODS.register
class SAGE(Method):
    """SAGE (arXiv 2605.07914, Alg. 1): spectral ascent ρ‖W‖_F·polar(G), descent noise β = γ(1 − S)."""

    method: Literal["sage"] = "sage"
    rho: float = Field(1e-6, ge=0)
    gamma: float = Field(1e-6, ge=0)
    # the span of the paper's Fig. 3 ρ × γ grid (arXiv 2605.07914, §5.3; experiments/figure3_officehome.yaml)
    search: ClassVar[dict] = {**Method.search, "rho": Dist("log10", (-7, -4), source=FIG3),
                              "gamma": Dist("log10", (-7, -4), source=FIG3)}
    polar: Literal["quintic", "cubic", "svd", "polar_express", "none"] = "quintic"
    ns_steps: int = Field(5, ge=1)
    scale_by_weight_norm: bool = True
    bias_rule: Literal["sam", "scaled", "none"] = "sam"
    noise: bool = True
    # precision of the Newton–Schulz products; bfloat16 pays off only where the hardware multiplies in bf16
    polar_dtype: Literal["float32", "bfloat16"] = "float32"
    # S and β refreshed every n steps, the cached β in between (departs from Alg. 1 when n > 1; MTL speed)
    agreement_every: int = Field(1, ge=1)
    # MTL: ``samo`` is SAGE-SAMO-X, SAMO's per-task directions through SAGE's ascent; samo_* act only then
    perturbation: Literal["global", "samo"] = "global"
    samo_beta: float = Field(0.5, ge=0, le=1)
    samo_zo_eps: float = Field(0.01, gt=0)
    samo_layerwise: bool = True
    samo_max_norm: float = Field(1.0, ge=0)
    rename: ClassVar[dict[str, str]] = {"samo_beta": "beta", "samo_zo_eps": "zo_eps", "samo_layerwise": "layerwise",
                                        "samo_max_norm": "max_norm"}

    def misfit(self, kind):
        if self.perturbation != "samo":
            for key in sorted(k for k in non_defaults(self) if k.startswith("samo_")):
                return key, getattr(self, key), f"{key} acts only with perturbation 'samo' (SAGE-SAMO)"
        elif self.agreement_every != 1:
            return "agreement_every", self.agreement_every, "agreement_every acts only with perturbation 'global'"
        return super().misfit(kind)

    @property
    def label(self) -> str:
        return "sage-samo" if self.perturbation == "samo" else "sage"

    def idle(self) -> set[str]:
        samo = {k for k in type(self).model_fields if k.startswith("samo_")}
        return super().idle() | (set() if self.perturbation == "samo" else samo)

    def own_settings(self) -> dict:
        own = super().own_settings()
        if own.pop("perturbation") != "samo":
            for key in ("beta", "zo_eps", "layerwise", "max_norm"):
                own.pop(key)
        else:
            own.pop("agreement_every")
        return own

    @property
    def implementation(self) -> str:  # type: ignore[override]
        return "sage_cli.optim.pertask:SAGESAMO" if self.perturbation == "samo" else "sage_cli.optim.sage:SAGE"


@METHODS.register
class SAM(Method):
    """SAM (Foret et al. 2021): ε = ρ ḡ/‖ḡ‖."""

    method: Literal["sam"] = "sam"
    rho: float = Field(0.05, ge=0)
    search: ClassVar[dict] = SAM_TYPE_SEARCH
    implementation: ClassVar[str] = "sage_cli.optim.sam:SAM"


@METHODS.register
class ASAM(Method):
    """ASAM (Kwon et al. 2021): ε = ρ T²ḡ/‖Tḡ‖, T = |w| + η."""

    method: Literal["asam"] = "asam"
    rho: float = Field(0.5, ge=0)
    eta: float = Field(0.01, ge=0)
    implementation: ClassVar[str] = "sage_cli.optim.sam:ASAM"


@METHODS.register
class GSAM(Method):
    """GSAM (Zhuang et al. 2022): SAM's ascent, descent g_h − α g_⊥."""

    method: Literal["gsam"] = "gsam"
    rho: float = Field(0.05, ge=0)
    search: ClassVar[dict] = SAM_TYPE_SEARCH
    alpha: float = Field(0.01, ge=0)
    implementation: ClassVar[str] = "sage_cli.optim.sam:GSAM"


@METHODS.register
class SAGM(Method):
    """SAGM (Wang et al. 2023): ε = (ρ/‖g‖ − α) g, descent ½(g + g_h)."""

    method: Literal["sagm"] = "sagm"
    rho: float = Field(0.05, ge=0)
    alpha: float = Field(0.001, ge=0)
    search: ClassVar[dict] = {**Method.search, "rho": Dist("choice", (0.01, 0.02, 0.05, 0.1), source=SAGM),
                              "alpha": Dist("choice", (0.01, 0.02, 0.05, 0.1), source=SAGM)}
    implementation: ClassVar[str] = "sage_cli.optim.sam:SAGM"


@METHODS.register
class DISAM(Method):
    """DISAM (Zhang et al. 2024): ascent along ∇(L̄ − λ Var_k L_k)."""

    method: Literal["disam"] = "disam"
    rho: float = Field(0.05, ge=0)
    search: ClassVar[dict] = SAM_TYPE_SEARCH
    variance_weight: float = Field(0.1, ge=0)
    implementation: ClassVar[str] = "sage_cli.optim.sam:DISAM"


@METHODS.register
class GAM(Method):
    """GAM (Zhang et al., CVPR 2023): four gradient evaluations per step."""

    method: Literal["gam"] = "gam"
    rho: float = Field(0.02, ge=0)
    search: ClassVar[dict] = SAM_TYPE_SEARCH
    gam_norm_rho: float = Field(0.2, ge=0)
    gam_gamma: float = Field(0.03, ge=0)
    rename: ClassVar[dict[str, str]] = {"gam_norm_rho": "norm_rho", "gam_gamma": "gamma"}
    implementation: ClassVar[str] = "sage_cli.optim.gam:GAM"


@METHODS.register
class GGA(Method):
    """GGA (Ballas & Diou, CVPR 2025): gradient-guided annealing in a window of steps."""

    method: Literal["gga"] = "gga"
    gga_start: int = Field(0, ge=0)
    gga_end: int = Field(100, ge=0)
    gga_candidates: int = Field(10, ge=0)
    gga_neighborhood: float = Field(1e-4, ge=0)
    gga_tolerance: float = Field(0.1, ge=0)
    rename: ClassVar[dict[str, str]] = {f"gga_{k}": k for k in ("start", "end", "candidates", "neighborhood",
                                                                 "tolerance")}
    implementation: ClassVar[str] = "sage_cli.optim.gga:GGA"


@METHODS.register
class SGLD(Method):
    """Constant Gaussian noise σ·ξ on the gradient (the paper's Fig. 2 baseline)."""

    method: Literal["sgld"] = "sgld"
    sigma: float = Field(1e-3, ge=0)
    implementation: ClassVar[str] = "sage_cli.optim.sgld:SGLD"


@METHODS.register
class Muon(Method):
    """torch.optim.Muon on 2-D matrices, Adam on the rest (the Fig. 3 baseline); no base optimizer."""

    method: Literal["muon"] = "muon"
    ns_steps: int = Field(5, ge=1)

    def build(self, params, model=None, seed=None):
        from ..optim.base import SinglePassOptimizer
        from ..optim.muon import MuonWithAdam

        return SinglePassOptimizer(params, MuonWithAdam, model=model, lr=self.lr, weight_decay=self.weight_decay,
                                   ns_steps=self.ns_steps)


@METHODS.register
class SAMO(Method):
    """SAMO (Ban, Subramani & Ji, ICCV 2025): per-task SAM ascents from SPSA estimates (on DG: per domain)."""

    method: Literal["samo"] = "samo"
    rho: float = Field(1e-3, ge=0)
    samo_beta: float = Field(0.5, ge=0, le=1)  # weight of the local (per-task) information
    samo_zo_eps: float = Field(0.01, gt=0)  # SPSA step μ
    samo_layerwise: bool = True  # per layer, the local estimate rescaled to the global gradient's norm
    samo_max_norm: float = Field(1.0, ge=0)  # the shared update's norm clip (0: none)
    rename: ClassVar[dict[str, str]] = SAGE.rename
    implementation: ClassVar[str] = "sage_cli.optim.pertask:SAMO"


@METHODS.register
class FMTL(Method):
    """F-MTL (Phan et al., ICCV 2025): one SAM ascent per task (on DG: per domain)."""

    method: Literal["fmtl"] = "fmtl"
    rho: float = Field(2.0, ge=0)
    fmtl_adaptive: bool = True  # ε = ρ T²g/‖Tg‖ with T = |θ| (the reference's default)
    fmtl_decompose: bool = True  # X(g) + X(g_perturbed − g) rather than X(g_perturbed)
    rename: ClassVar[dict[str, str]] = {"fmtl_adaptive": "adaptive", "fmtl_decompose": "decompose"}
    implementation: ClassVar[str] = "sage_cli.optim.pertask:FMTL"


@METHODS.register
class BOA(Method):
    """BOA (Li et al., ICLR 2026), from its published description (``optim/boa.py``): from a trained start
    (``init_from``), R reflections along the boundary of {ℓ ≤ ℓ(θ₀) + Δℓ} within a k-dimensional Krylov
    subspace, each boundary point a checkpoint. Every setting below is sage's choice where the description
    leaves it open; the base optimizer's settings do not act (BOA takes no gradient step)."""

    method: Literal["boa"] = "boa"
    fits: ClassVar[tuple[str, ...]] = ("dg",)
    # a checkpoint file, a recipe (its run's checkpoint), an MLflow run id or hash:<recipe hash>; in an experiment
    # file, another method's label (BOA from SAM: each job starts from that method's job of its seed and envs)
    init_from: str | None = None
    delta_loss: float = Field(0.1, gt=0)  # Δℓ above the start's training loss
    krylov_dim: int = Field(10, ge=1, le=50)  # k (the description: 5–20)
    hvp: Literal["exact", "finite_difference"] = "exact"  # double backward, or (∇ℓ(θ₀ + εv) − ∇ℓ(θ₀))/ε
    fd_eps: float = Field(1e-3, gt=0)  # ε of the finite differences
    step: float = Field(0.05, gt=0)  # h, the line search's first step (parameter-space distance)
    tol: float = Field(1e-3, gt=0)  # the line search stops within tol below ℓ_th
    reflections: int = Field(10, ge=1)  # R: one checkpoint per boundary point
    loss_batches: int = Field(4, ge=1)  # ℓ_train: a fixed, seeded sample of loss_batches × batch_size per env
    implementation: ClassVar[str] = "sage_cli.train.boa:Explorer"
    task: ClassVar[str] = "sage_cli.train.boa:BOATask"

    def misfit(self, kind):
        if self.hvp != "finite_difference" and self.fd_eps != BOA.model_fields["fd_eps"].default:
            return "fd_eps", self.fd_eps, "fd_eps acts only with hvp 'finite_difference'"
        return super().misfit(kind)

    def idle(self) -> set[str]:
        return {"base", "lr", "weight_decay", "momentum"} | ({"fd_eps"} if self.hvp != "finite_difference" else set())
