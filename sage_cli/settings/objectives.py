"""Every DG objective's settings (``objective.hparams``), registered by name; ``build`` makes the objective.

Defaults are DomainBed's (facebookresearch/DomainBed, ``domainbed/hparams_registry.py``), defined here once;
the implementations read them from here. Torch-free: recipes are checked without importing torch.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from ..registry import Registry, resolve
from . import Choice, Section
from .distributions import DOMAINBED, Dist

OBJECTIVES = Registry("objective")


class Hparams(Section):
    # ``lambda`` is a Python keyword: fields carry it as an alias
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # random search (``search/``): each setting's distribution by its recipe name, with its source
    search: ClassVar[dict] = {}


class Objective(Choice):
    fits: ClassVar[tuple[str, ...]] = ("dg",)
    name: str
    hparams: Hparams = Field(default_factory=Hparams)
    implementation: ClassVar[str] = ""

    def build(self, model, n_envs: int, n_classes: int):
        return resolve(self.implementation)(model, n_envs, self, n_classes)


@OBJECTIVES.register
class ERM(Objective):
    """Empirical risk minimisation: each env's mean cross-entropy (MTL: the task losses as they are)."""

    fits: ClassVar[tuple[str, ...]] = ("dg", "mtl")
    name: Literal["erm"] = "erm"
    implementation: ClassVar[str] = "sage_cli.objectives.base:ERM"


class AnnealedHparams(Hparams):
    lambda_: float = Field(1.0, alias="lambda", ge=0)  # the penalty weight after the warm-up
    anneal_iters: int = Field(500, ge=0)  # steps with penalty weight 1


class IRMHparams(AnnealedHparams):
    lambda_: float = Field(1e2, alias="lambda", ge=0)
    search: ClassVar[dict] = {"lambda": Dist("log10", (-1, 5), float, "irm_lambda", DOMAINBED),
                              "anneal_iters": Dist("log10", (0, 4), int, "irm_penalty_anneal_iters", DOMAINBED)}


@OBJECTIVES.register
class IRM(Objective):
    """IRMv1 (Arjovsky et al. 2019)."""

    name: Literal["irm"] = "irm"
    hparams: IRMHparams = Field(default_factory=IRMHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.penalties:IRM"


class VRExHparams(AnnealedHparams):
    lambda_: float = Field(1e1, alias="lambda", ge=0)
    search: ClassVar[dict] = {"lambda": Dist("log10", (-1, 5), float, "vrex_lambda", DOMAINBED),
                              "anneal_iters": Dist("log10", (0, 4), int, "vrex_penalty_anneal_iters", DOMAINBED)}


@OBJECTIVES.register
class VREx(Objective):
    """V-REx (Krueger et al. 2021): ERM + λ·Var_k(L_k)."""

    name: Literal["vrex"] = "vrex"
    hparams: VRExHparams = Field(default_factory=VRExHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.penalties:VREx"


class MatchingHparams(Hparams):
    gamma: float = Field(1.0, ge=0)  # weight of the feature-distribution distance
    search: ClassVar[dict] = {"gamma": Dist("log10", (-1, 1), float, "mmd_gamma", DOMAINBED)}


@OBJECTIVES.register
class MMD(Objective):
    """MMD (Li et al. 2018): Gaussian-kernel MMD between every pair of envs' features."""

    name: Literal["mmd"] = "mmd"
    hparams: MatchingHparams = Field(default_factory=MatchingHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.penalties:MMD"


@OBJECTIVES.register
class CORAL(Objective):
    """Deep CORAL (Sun & Saenko 2016): feature means and covariances matched across envs."""

    name: Literal["coral"] = "coral"
    hparams: MatchingHparams = Field(default_factory=MatchingHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.penalties:CORAL"


class AdversarialHparams(Hparams):
    lambda_: float = Field(1.0, alias="lambda", ge=0)  # gradient reversal strength
    mlp_width: int = Field(256, gt=0)  # the discriminator's hidden width
    search: ClassVar[dict] = {"lambda": Dist("log10", (-2, 2), float, "lambda", DOMAINBED),
                              "mlp_width": Dist("log2", (6, 10), int, "mlp_width", DOMAINBED)}


@OBJECTIVES.register
class DANN(Objective):
    """DANN (Ganin et al. 2016): a domain discriminator behind gradient reversal."""

    name: Literal["dann"] = "dann"
    hparams: AdversarialHparams = Field(default_factory=AdversarialHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.adversarial:DANN"


@OBJECTIVES.register
class CDANN(Objective):
    """CDANN (Li et al. 2018): DANN conditioned on the class."""

    name: Literal["cdann"] = "cdann"
    hparams: AdversarialHparams = Field(default_factory=AdversarialHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.adversarial:CDANN"


class RSCHparams(Hparams):
    f_drop_factor: float = Field(1 / 3, ge=0, le=1)
    b_drop_factor: float = Field(1 / 3, ge=0, le=1)
    search: ClassVar[dict] = {"f_drop_factor": Dist("uniform", (0, 0.5), float, "rsc_f_drop_factor", DOMAINBED),
                              "b_drop_factor": Dist("uniform", (0, 0.5), float, "rsc_b_drop_factor", DOMAINBED)}


@OBJECTIVES.register
class RSC(Objective):
    """RSC (Huang et al. 2020): self-challenging by muting the features with the largest gradients."""

    name: Literal["rsc"] = "rsc"
    hparams: RSCHparams = Field(default_factory=RSCHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.rsc:RSC"


class FishHparams(Hparams):
    meta_lr: float = Field(0.5, gt=0)
    search: ClassVar[dict] = {"meta_lr": Dist("choice", (0.05, 0.1, 0.5), float, "meta_lr", DOMAINBED)}


@OBJECTIVES.register
class Fish(Objective):
    """Fish (Shi et al. 2022): inner steps per env, then a meta-step towards their end point."""

    name: Literal["fish"] = "fish"
    hparams: FishHparams = Field(default_factory=FishHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.fish:Fish"


class IIBHparams(Hparams):
    lambda_beta: float = Field(1e-4, ge=0)
    lambda_inv_risks: float = Field(10.0, ge=0)


@OBJECTIVES.register
class IIB(Objective):
    """IIB (Li et al. 2022): invariant information bottleneck."""

    name: Literal["iib"] = "iib"
    hparams: IIBHparams = Field(default_factory=IIBHparams)
    implementation: ClassVar[str] = "sage_cli.objectives.iib:IIB"
