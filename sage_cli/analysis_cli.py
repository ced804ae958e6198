"""``sage diagnose`` and ``sage analysis``: the paper's analyses as commands (heavy imports inside each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .errors import UserError
from .errors import exit_with as _fail

analysis_app = typer.Typer(help="The paper's worked examples: App. C, App. D (Fig. 4), Fig. 2.",
                           no_args_is_help=True, rich_markup_mode=None)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def terms_rows(values: dict) -> list[list[str]]:
    return [
        ["K (distributions)", f"{values['K']}"],
        ["parameters", f"{values['n_params']:,}"],
        ["tr(H̄)  (Hutchinson)", f"{values['curvature_trace']:.6g} ± {values['curvature_stderr']:.2g}  ({values['probes']} probes)"],
        ["tr(H̄⁻¹Σg)  (CG)", f"{values['alignment_trace']:.6g}"],
        ["  damping λ · CG iterations · residual", f"{values['damping']:.3g}"
         + (f" (raised from {values['damping_asked']:g}: λ_min < 0)" if values['damping'] > values.get(
             'damping_asked', values['damping']) else "") + f" · {values['cg_iterations']} · {values['cg_residual']:.2e}"],
        ["alignment term  1/(2K) · tr(H̄⁻¹Σg)", f"{values['alignment_factor']:.4g} × … = {values['alignment_term']:.6g}"],
        ["curvature term  σ²/2 · tr(H̄)", f"{values['curvature_factor']:.4g} × … = {values['curvature_term']:.6g}  (σ = {values['sigma']:g}, "
                                           f"{values.get('sigma_source', 'given')})"],
        ["agreement S", f"{values['agreement']:.4f}"],
        ["λ_max(H̄) (power iteration) · λ_min (Lanczos)", f"{values['lambda_max']:.6g} · {values['lambda_min']:.4g}"],
        ["Hessian-vector products", f"{values['hessian_products']}"],
    ]


def diagnose(
    target: str = typer.Argument(..., help="An MLflow run id, or a checkpoint.pt file."),
    batches: int = typer.Option(2, "--batches", min=1, help="Fixed batches (of training.batch_size) per distribution."),
    probes: int = typer.Option(16, "--probes", min=2, help="Hutchinson probes for tr(H̄)."),
    damping: float = typer.Option(1e-2, "--damping", min=0.0, help="λ of (H̄ + λI)⁻¹; raised to 1.5·|λ_min| where H̄ has negative curvature."),
    cg_iters: int = typer.Option(20, "--cg-iters", min=1, help="Conjugate-gradient iterations per solve."),
    power_iters: int = typer.Option(20, "--power-iters", min=1, help="Power iterations for λ_max."),
    sigma: Optional[float] = typer.Option(None, "--sigma", min=0.0, help="σ of Eq. 5's parameter noise, for the curvature term (default: a SAGE run's own β = γ(1 − S) at this point, else 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batches and the probes."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="The run's recipe (default: recipe.yaml beside the checkpoint, or the run's artifact)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store of RUN_ID (default: $MLFLOW_TRACKING_URI or ./mlflow.db)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the diag_* metrics to the checkpoint's MLflow run."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line."),
):
    """The two terms of Theorem 1 at a checkpoint: tr(H̄) (Hutchinson) and tr(H̄⁻¹Σg) (CG on Hessian-vector
    products), with the agreement S and λ_max(H̄), on fixed batches of its training distributions."""
    try:
        from .analysis.measure import diag_metrics, measure
        from .train.diagnose import load_task, locate, log_to_run

        found = locate(target, recipe, tracking_uri)
        task = load_task(found, device)
        terms = measure(task, batches, probes, damping, cg_iters, power_iters, sigma or 0.0, seed)
    except UserError as exc:
        _fail(str(exc))
    gamma = getattr(found.recipe.optimizer, "gamma", None)
    noise = None
    if gamma is not None:  # SAGE's own noise at this point, β = γ(1 − S)
        from dataclasses import replace

        from .optim.sage import AgreementNoise

        noise = AgreementNoise(gamma).set_agreement(terms.agreement)["noise_scale"]
        if sigma is None:  # the curvature term is σ²/2 · tr(H̄): with the run's own σ, not 0
            terms = replace(terms, sigma=noise)
    values = terms.to_dict()
    values["sigma_source"] = "given" if sigma is not None else "the run's β = γ(1 − S)" if noise is not None else "none (0)"
    values["damping_asked"] = damping
    if noise is not None:
        values["noise_scale"] = noise
    values.update({"run_id": found.run_id, "checkpoint": str(found.checkpoint), "step": found.step,
                   "method": found.recipe.optimizer.label, "dataset": found.recipe.dataset.name})
    _table(f"Theorem 1 at {found.recipe.label} · {found.recipe.dataset.name} · step {found.step}", ["", "value"],
           terms_rows(values))
    if terms.damping > damping:
        typer.echo(f"note: H̄ is not positive definite here (λ_min ≈ {terms.lambda_min:.3g}): tr(H̄⁻¹Σg) is measured "
                   f"with (H̄ + {terms.damping:.3g}·I)⁻¹, the damping raised from {damping:g}")
    if terms.cg_negative_curvature or terms.cg_residual > 1e-2:
        typer.echo(f"note: CG stopped at residual {terms.cg_residual:.1e}"
                   + (f" ({terms.cg_negative_curvature} solves met negative curvature)" if terms.cg_negative_curvature
                      else "") + "; more --cg-iters or --damping lowers it")
    if log:
        logged = log_to_run(found, diag_metrics(terms))
        typer.echo(f"logged diag_* to run {found.run_id} at step {found.step}" if logged
                   else "no MLflow run recorded with this checkpoint: nothing logged")
    if as_json:
        typer.echo(json.dumps(values))


@analysis_app.command("appendix-c")
def appendix_c(
    samples: int = typer.Option(50_000, "--samples", min=10, help="Samples per domain in the sampled check."),
    seeds: int = typer.Option(20, "--seeds", min=2, help="Independent draws of the sampled check."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line."),
):
    """App. C: the two-domain linear example: the paper's numbers from its constants, and the two-term
    estimator on the closed-form population losses and on sampled data."""
    import statistics

    from .analysis import toy2d

    exact = toy2d.closed_form()
    pop = toy2d.population_terms()
    draws = [toy2d.sampled_terms(samples, s) for s in range(seeds)]

    def mean_se(key):
        values = [getattr(t, key) for t in draws]
        return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5

    def vec(v):
        return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"

    rows = [["H̄", "diag" + vec([exact["H_bar"][0][0], exact["H_bar"][1][1]]), "diag(10, 4.01)"],
            ["θ*", vec(exact["theta_star"]), "(0.1, 0)"],
            ["per-domain optima", " ".join(vec(o) for o in exact["domain_optima"]), "≈ (0.0003, ±0.499)"],
            ["per-domain gradients at 0", " ".join(vec(g) for g in exact["domain_grads_at_0"]), "(−1, −2) (−1, +2)"],
            ["Σg at θ*", "diag" + vec([exact["Sigma_g"][0][0], exact["Sigma_g"][1][1]]), "diag(0, 3.24)"],
            ["tr(H̄)", f"{exact['curvature_trace']:.4f}", "14.01"],
            ["tr(H̄⁻¹Σg)", f"{exact['alignment_trace']:.4f}", "≈ 0.81"]]
    _table("App. C · closed form from the constants", ["quantity", "computed", "paper"], rows)
    c_mean, c_se = mean_se("curvature_trace")
    a_mean, a_se = mean_se("alignment_trace")
    _table("App. C · the two-term estimator (Hutchinson, CG) at θ*", ["", "tr(H̄)", "tr(H̄⁻¹Σg)"], [
        ["exact", f"{exact['curvature_trace']:.6f}", f"{exact['alignment_trace']:.6f}"],
        ["population losses", f"{pop.curvature_trace:.6f}", f"{pop.alignment_trace:.6f}"],
        [f"sampled, {samples:,}/domain, mean ± SE of {seeds}", f"{c_mean:.4f} ± {c_se:.4f}", f"{a_mean:.4f} ± {a_se:.4f}"],
    ])
    if as_json:
        typer.echo(json.dumps({"closed_form": exact, "population": pop.to_dict(),
                               "sampled": {"samples": samples, "seeds": seeds, "curvature_trace": [c_mean, c_se],
                                           "alignment_trace": [a_mean, a_se]}}))


@analysis_app.command("appendix-d")
def appendix_d(
    out: Path = typer.Option(Path("sage-analysis"), "--out", help="Folder for appendix_d.png and appendix_d.csv (created)."),
    seed: int = typer.Option(0, "--seed"),
):
    """App. D (Fig. 4): sharpness of SAM, ASAM and SAGE (each bias rule) under W1, b1 → αW1, αb1,
    W2 → W2/α on the circles MLP; a PNG, a CSV and a table of the spread over α."""
    from .analysis import scale

    result = scale.run(seed)
    _table(f"App. D · sharpness L(θ+ε) − L(θ); MLP accuracy {result.accuracy:.3f}, "
           f"max output change {result.max_output_change:.1e}",
           ["method", "α = 0.1", "α = 1", "α = 10", "max/min over α"], scale.table(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "appendix_d.png").write_bytes(scale.figure(result))
    lines = ["alpha," + ",".join(f'"{m}"' for m in result.sharpness)]
    lines += [f"{a:.6g}," + ",".join(f"{result.sharpness[m][i]:.6g}" for m in result.sharpness)
              for i, a in enumerate(result.alphas)]
    (out / "appendix_d.csv").write_text("\n".join(lines) + "\n")
    typer.echo(f"wrote {out / 'appendix_d.png'} and {out / 'appendix_d.csv'}")


@analysis_app.command("figure-2")
def figure_2(
    out: Path = typer.Option(Path("sage-analysis"), "--out", help="Folder for figure_2.png (created)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the SGLD and SAGE noise."),
):
    """Fig. 2: ERM, SAM, SGLD and SAGE's agreement-scaled noise from one start on a two-minimum, two-domain
    landscape; where each ends, and a PNG over the loss and the agreement map."""
    import torch

    from .analysis import landscape

    trajectories = landscape.run(seed)
    _table(f"Fig. 2 · {landscape.STEPS} steps of SGD (lr {landscape.LR}) from {landscape.START}",
           ["method", "ends at", "basin", "S there"],
           [[t.label, "(" + ", ".join(f"{v:.2f}" for v in t.end) + ")", t.basin(),
             f"{float(landscape.agreement(torch.tensor(t.end, dtype=torch.float64))):.2f}"]
            for t in trajectories])
    out.mkdir(parents=True, exist_ok=True)
    (out / "figure_2.png").write_bytes(landscape.figure(trajectories))
    typer.echo(f"wrote {out / 'figure_2.png'}")


@analysis_app.command("boa")
def boa(
    out: Path = typer.Option(Path("sage-analysis"), "--out", help="Folder for boa.png (created)."),
    delta: float = typer.Option(0.3, "--delta", min=1e-6, help="Δℓ: the table is L̄ ≤ L̄(θ₀) + Δℓ."),
    reflections: int = typer.Option(40, "--reflections", min=1, help="R, the boundary points."),
):
    """BOA (Li et al., ICLR 2026, from its published description) on Fig. 2's landscape, from where SAM ends:
    every boundary point, its loss, and a PNG of the trajectory inside the table's wall."""
    from .analysis import billiard

    found = billiard.run(delta, reflections)
    shown = found.points[:5] + found.points[-2:]
    _table(f"BOA · ℓ_th = {found.threshold:.4f} · {len(found.points)} reflections (first 5, last 2)",
           ["point", "θ", "L̄ there"],
           [[str(found.points.index(p) + 1), "(" + ", ".join(f"{v:.3f}" for v in p) + ")",
             f"{found.losses[found.points.index(p)]:.6f}"] for p in shown])
    out.mkdir(parents=True, exist_ok=True)
    (out / "boa.png").write_bytes(billiard.figure(found))
    typer.echo(f"wrote {out / 'boa.png'}")


def register(app: typer.Typer) -> None:
    app.command()(diagnose)
    app.add_typer(analysis_app, name="analysis", short_help="The paper's worked examples (App. C, App. D, Fig. 2) and BOA's billiard.")
