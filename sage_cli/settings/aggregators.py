"""Every MTL aggregator's settings (the recipe's ``aggregator:`` section), registered by name.

Two kinds: a *loss weighting* differentiates a weighted total of the task losses (one backward); a
*gradient aggregator* combines the per-task gradients of the shared parameters (K backwards). Defaults are
the references' (LibMTL, nash-mtl, FAMO, the CAGrad and FairGrad authors' code), defined here once.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..registry import Registry, resolve
from . import Choice

AGGREGATORS = Registry("aggregator")


class Aggregator(Choice):
    fits: ClassVar[tuple[str, ...]] = ("mtl",)
    kind: ClassVar[str] = "weighting"  # weighting | gradient
    name: str
    implementation: ClassVar[str] = ""

    def build(self, n_tasks: int, seed: int):
        return resolve(self.implementation)(n_tasks, self, seed)


def _impl(name: str) -> str:
    return f"sage_cli.mtl.aggregators.{name.lower()}:{name}"


@AGGREGATORS.register
class LS(Aggregator):
    """Linear scalarisation: Σ_k L_k."""

    name: Literal["ls"] = "ls"
    implementation: ClassVar[str] = _impl("LS")


@AGGREGATORS.register
class STL(Aggregator):
    """Single-task learning: task ``stl_task`` alone."""

    name: Literal["stl"] = "stl"
    stl_task: int = Field(0, ge=0)
    implementation: ClassVar[str] = _impl("STL")


@AGGREGATORS.register
class SI(Aggregator):
    """Scale-invariant: Σ_k log L_k."""

    name: Literal["si"] = "si"
    implementation: ClassVar[str] = _impl("SI")


@AGGREGATORS.register
class RLW(Aggregator):
    """Random loss weighting (Lin et al. 2022)."""

    name: Literal["rlw"] = "rlw"
    implementation: ClassVar[str] = _impl("RLW")


@AGGREGATORS.register
class DWA(Aggregator):
    """Dynamic weight average (Liu et al. 2019)."""

    name: Literal["dwa"] = "dwa"
    dwa_temperature: float = Field(2.0, gt=0)
    implementation: ClassVar[str] = _impl("DWA")


@AGGREGATORS.register
class UW(Aggregator):
    """Uncertainty weighting (Kendall et al. 2018)."""

    name: Literal["uw"] = "uw"
    implementation: ClassVar[str] = _impl("UW")


@AGGREGATORS.register
class FAMO(Aggregator):
    """FAMO (Liu et al. 2023): fast adaptive multitask optimisation."""

    name: Literal["famo"] = "famo"
    famo_w_lr: float = Field(0.025, gt=0)
    famo_gamma: float = Field(1e-3, ge=0)
    implementation: ClassVar[str] = _impl("FAMO")


class GradientAggregator(Aggregator):
    kind: ClassVar[str] = "gradient"


@AGGREGATORS.register
class MGDA(GradientAggregator):
    """MGDA (Sener & Koltun 2018): the min-norm point of the convex hull, solved exactly."""

    name: Literal["mgda"] = "mgda"
    implementation: ClassVar[str] = _impl("MGDA")


@AGGREGATORS.register
class PCGrad(GradientAggregator):
    """PCGrad (Yu et al. 2020), through TorchJD."""

    name: Literal["pcgrad"] = "pcgrad"
    implementation: ClassVar[str] = _impl("PCGrad")


@AGGREGATORS.register
class IMTLG(GradientAggregator):
    """IMTL-G (Liu et al. 2021), through TorchJD."""

    name: Literal["imtlg"] = "imtlg"
    implementation: ClassVar[str] = _impl("IMTLG")


@AGGREGATORS.register
class CAGrad(GradientAggregator):
    """CAGrad (Liu et al. 2021), as in the authors' code."""

    name: Literal["cagrad"] = "cagrad"
    cagrad_c: float = Field(0.4, ge=0)
    implementation: ClassVar[str] = _impl("CAGrad")


@AGGREGATORS.register
class FairGrad(GradientAggregator):
    """FairGrad (Ban & Ji 2024), through TorchJD."""

    name: Literal["fairgrad"] = "fairgrad"
    fairgrad_alpha: float = Field(2.0, gt=0)
    implementation: ClassVar[str] = _impl("FairGrad")


@AGGREGATORS.register
class GradDrop(GradientAggregator):
    """GradDrop (Chen et al. 2020), through TorchJD."""

    name: Literal["graddrop"] = "graddrop"
    implementation: ClassVar[str] = _impl("GradDrop")


@AGGREGATORS.register
class NashMTL(GradientAggregator):
    """Nash-MTL (Navon et al. 2022), through TorchJD (cvxpy + ECOS)."""

    name: Literal["nashmtl"] = "nashmtl"
    nash_max_norm: float = Field(1.0, ge=0)
    implementation: ClassVar[str] = _impl("NashMTL")


@AGGREGATORS.register
class MoCo(GradientAggregator):
    """MoCo (Fernando et al. 2023), with LibMTL's defaults."""

    name: Literal["moco"] = "moco"
    moco_beta: float = Field(0.5, gt=0)  # step of the gradient tracking y
    moco_beta_sigma: float = Field(0.5, ge=0)  # its decay β/t^σ
    moco_gamma: float = Field(0.1, gt=0)  # step of the weights λ
    moco_gamma_sigma: float = Field(0.5, ge=0)
    moco_rho: float = Field(0.0, ge=0)  # ℓ2 regularisation of λ's update
    implementation: ClassVar[str] = _impl("MoCo")
