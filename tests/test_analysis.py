"""The paper's analysis: the estimators of Theorem 1's two terms on problems with known answers, App. C's
numbers, Fig. 2's trajectories, `sage diagnose` on real checkpoints (DG and MTL), and the terms logged along
training without changing it."""

import json
import math
import warnings

import pytest
import torch
from typer.testing import CliRunner

from sage_cli.analysis import landscape, toy2d
from sage_cli.analysis.hessian import (
    HessianOperator,
    conjugate_gradient,
    hutchinson_trace,
    lanczos_extremes,
    power_iteration,
)
from sage_cli.analysis.terms import two_terms
from sage_cli.cli import app
from sage_cli.recipe import load_recipe
from sage_cli.train.dg import train_dg

QUICKSTART = "recipes/quickstart.yaml"
MTL_QUICKSTART = "recipes/mtl_quickstart.yaml"


def _quadratic(dim=20, seed=0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.linspace(shift, 10.0, dim, dtype=torch.float64)
    A = q @ torch.diag(eig) @ q.T
    theta = torch.randn(dim, generator=g, dtype=torch.float64).requires_grad_(True)
    return A, theta, HessianOperator(0.5 * theta @ A @ theta, [theta])


def test_hutchinson_on_a_quadratic_is_within_three_standard_errors():
    A, _, H = _quadratic()
    est = hutchinson_trace(H, H.dim, 200, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert est.stderr > 0 and abs(est.value - float(torch.trace(A))) < 3 * est.stderr
    assert H.products == 200


def test_cg_solves_a_small_spd_system_to_1e_6():
    A, _, H = _quadratic(dim=12)
    b = torch.randn(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    solve = conjugate_gradient(H, b, damping=0.1, max_iters=100, tol=1e-10)
    exact = torch.linalg.solve(A + 0.1 * torch.eye(12, dtype=torch.float64), b)
    assert solve.residual < 1e-6 and not solve.negative_curvature
    assert torch.allclose(solve.x, exact, atol=1e-6)


def test_eigenvalue_ends_and_negative_curvature_are_found():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.tensor([-2.0], dtype=torch.float64), torch.linspace(0.1, 5.0, 29, dtype=torch.float64)])
    A = q @ torch.diag(eig) @ q.T
    low, high = lanczos_extremes(lambda v: A @ v, 30, 30, g, dtype=torch.float64)
    assert abs(low + 2.0) < 1e-6 and abs(high - 5.0) < 1e-6
    assert abs(power_iteration(lambda v: A @ v, 30, 200, g, dtype=torch.float64) - 5.0) < 1e-3
    b = torch.ones(30, dtype=torch.float64)
    assert conjugate_gradient(lambda v: A @ v, b, 0.0, 100).negative_curvature  # indefinite: stopped, flagged
    theta = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    losses = torch.stack([0.5 * theta @ A @ theta + theta.sum(), 0.5 * theta @ A @ theta - theta.sum()])
    terms = two_terms(losses, [theta], probes=4, damping=1e-3, cg_iters=60)
    assert terms.damping == pytest.approx(1.5 * 2.0, rel=1e-6) and terms.cg_negative_curvature == 0
    # at θ = 0 the two gradients are ±1: Σg = 11ᵀ, so tr((A + λI)⁻¹Σg) = 1ᵀ(A + λI)⁻¹1
    expected = float(b @ torch.linalg.solve(A + terms.damping * torch.eye(30, dtype=torch.float64), b))
    assert terms.alignment_trace == pytest.approx(expected, rel=1e-6) and terms.agreement == pytest.approx(-1.0)


def test_appendix_c_numbers():
    c = toy2d.closed_form()
    assert c["H_bar"] == [[10.0, 0.0], [0.0, pytest.approx(4.01)]]
    assert c["theta_star"] == [pytest.approx(0.1), pytest.approx(0.0, abs=1e-12)]
    for optimum, sign in zip(c["domain_optima"], (1, -1)):
        assert optimum[0] == pytest.approx(0.0003, abs=5e-5) and optimum[1] == pytest.approx(sign * 0.499, abs=1e-3)
    assert c["domain_grads_at_0"] == [[-1.0, -2.0], [-1.0, 2.0]]
    assert c["Sigma_g"][0] == [0.0, 0.0] and c["Sigma_g"][1][1] == pytest.approx(3.24)
    assert c["curvature_trace"] == pytest.approx(14.01) and c["alignment_trace"] == pytest.approx(0.808, abs=1e-3)
    pop = toy2d.population_terms()
    assert abs(pop.curvature_trace - 14.01) < 1e-3 and abs(pop.alignment_trace - c["alignment_trace"]) < 1e-3
    assert pop.agreement == pytest.approx(-1.0) and pop.lambda_max == pytest.approx(10.0)


def test_appendix_c_on_sampled_data_within_three_standard_errors():
    draws = [toy2d.sampled_terms(50_000, seed) for seed in range(20)]
    exact = toy2d.closed_form()
    for key in ("curvature_trace", "alignment_trace"):
        values = [getattr(t, key) for t in draws]
        mean = sum(values) / len(values)
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        assert abs(mean - exact[key]) < 3 * se, (key, mean, se)


def test_appendix_c_command():
    result = CliRunner().invoke(app, ["analysis", "appendix-c", "--samples", "2000", "--seeds", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["population"]["curvature_trace"] == pytest.approx(14.01)
    assert "diag(0, 3.24)" in result.output and "14.0100" in result.output


def test_figure_2_trajectories_end_where_the_paper_says(tmp_path):
    ends = {t.label.split(" ")[0]: t.basin() for t in landscape.run(seed=0)}
    assert ends == {"ERM": "A", "SAM": "A", "SGLD": "A", "SAGE": "B"}
    a, b = (landscape.agreement(torch.tensor(p, dtype=torch.float64)) for p in (landscape.A, landscape.B))
    assert a < -0.9 and b > 0.9  # the domains disagree at A, agree at B


def test_figures_hand_matplotlib_arrays_not_tensors():
    # matplotlib converts with np.array(copy=False), which Tensor.__array__ does not take: a DeprecationWarning in
    # NumPy 2 (deprecated: a later NumPy may refuse it)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        image = landscape.figure([landscape.trajectory("ERM", steps=5)])
    assert image[:4] == b"\x89PNG"


def test_figure_2_and_appendix_d_commands_write_their_figures(tmp_path):
    result = CliRunner().invoke(app, ["analysis", "figure-2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figure_2.png").read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(app, ["analysis", "appendix-d", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "appendix_d.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "appendix_d.csv").read_text().splitlines()) == 22  # header + 21 values of α


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """A short quickstart run through the CLI: its run id, store and folder."""
    folder = tmp_path_factory.mktemp("diagnose")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = ["run", QUICKSTART, "--set", "training.steps=41", "--set", "training.checkpoint_freq=20",
            "--set", f"tracking.uri={uri}", "--set", f"training.output_dir={folder / 'runs'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output.split("mlflow run ")[1].split()[0], uri, folder


REQUIRED = {"curvature_trace", "curvature_stderr", "alignment_trace", "cg_residual", "agreement", "lambda_max", "K"}


def test_diagnose_a_run_by_id_logs_diag_metrics(quickstart_run):
    from mlflow.tracking import MlflowClient

    run_id, uri, _ = quickstart_run
    result = CliRunner().invoke(app, ["diagnose", run_id, "--tracking-uri", uri, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert REQUIRED <= set(data) and data["K"] == 5 and data["step"] == 40
    assert data["curvature_trace"] > 0 and data["alignment_trace"] > 0 and -1 <= data["agreement"] <= 1
    assert data["cg_residual"] < 1e-2 and data["alignment_factor"] == pytest.approx(0.1)
    history = MlflowClient(uri).get_metric_history(run_id, "diag_curvature_trace")
    assert [(m.step, m.value) for m in history] == [(40, pytest.approx(data["curvature_trace"]))]


def test_diagnose_a_checkpoint_file_gives_the_same_terms(quickstart_run):
    run_id, uri, folder = quickstart_run
    checkpoint = next((folder / "runs").glob("*/checkpoint.pt"))
    quick = ["--json", "--no-log", "--probes", "4", "--cg-iters", "5", "--power-iters", "5"]
    by_file = CliRunner().invoke(app, ["diagnose", str(checkpoint), *quick])
    by_id = CliRunner().invoke(app, ["diagnose", run_id, "--tracking-uri", uri, *quick])
    assert by_file.exit_code == 0 and by_id.exit_code == 0, by_file.output
    a, b = (json.loads(r.output.strip().splitlines()[-1]) for r in (by_file, by_id))
    assert a["curvature_trace"] == b["curvature_trace"] and a["alignment_trace"] == b["alignment_trace"]


def test_diagnose_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path / "nope" / "checkpoint.pt")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(app, ["diagnose", "abc123", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and "no MLflow store" in result.output and not (tmp_path / "none.db").exists()
    lone = tmp_path / "checkpoint.pt"
    lone.write_bytes(b"x")
    result = CliRunner().invoke(app, ["diagnose", str(lone)])
    assert result.exit_code == 2 and "pass the run's recipe with --recipe" in result.output


def test_diagnostics_along_training_change_nothing_else(tmp_path):
    base = {"training.steps": 21, "training.checkpoint_freq": 10, "training.output_dir": str(tmp_path)}
    plain = train_dg(load_recipe(QUICKSTART, base))
    measured = train_dg(load_recipe(QUICKSTART, {**base, "diagnostics.every": 2, "diagnostics.probes": 4,
                                                 "diagnostics.cg_iters": 5}))
    assert [sorted(k for k in c.metrics if k.startswith("diag_")) != [] for c in measured.history] == [True, False, True]
    for a, b in zip(plain.history, measured.history):  # the same training, metric for metric
        assert {k: v for k, v in a.metrics.items() if k != "step_time"} == \
            {k: v for k, v in b.metrics.items() if k != "step_time" and not k.startswith("diag_")}
    assert all(torch.equal(p, q) for p, q in zip(plain.model.parameters(), measured.model.parameters()))
    assert load_recipe(QUICKSTART, {"diagnostics.every": 2}).hash() == load_recipe(QUICKSTART).hash()


def test_mtl_diagnostics_use_the_tasks_and_the_shared_parameters(tmp_path):
    from sage_cli.mtl.train import train_mtl

    recipe = load_recipe(MTL_QUICKSTART, {"training.epochs": 1, "diagnostics.every": 1, "diagnostics.probes": 4,
                                          "diagnostics.cg_iters": 5, "training.output_dir": str(tmp_path)})
    result = train_mtl(recipe)
    last = result.history[-1].metrics
    assert last["diag_K"] == 2 and last["diag_curvature_trace"] != 0
    shared = sum(p.numel() for p in result.model.shared_parameters())
    from sage_cli.analysis.measure import measure
    from sage_cli.mtl.train import MTLTask
    from sage_cli.train.runtime import Runtime

    task = MTLTask(recipe, result.data, Runtime.plain("cpu"))
    task.model.load_state_dict(result.model.state_dict())
    assert measure(task, probes=2, cg_iters=2).n_params == shared < sum(p.numel() for p in result.model.parameters())


def test_report_draws_the_two_terms_along_training_per_row_label():
    from sage_cli.report.build import build
    from sage_cli.report.runs import Run

    def run(label, seed, scale):
        rows = [{"step": s, "env0_in_acc": 0.5, "env0_out_acc": 0.5, "env1_in_acc": 0.5, "env1_out_acc": 0.5,
                 "diag_curvature_trace": scale * (s + 1), "diag_alignment_trace": 0.1 * (s + 1)} for s in (0, 10, 20)]
        return Run(f"{label}{seed}", "FINISHED", "rotated_digits", "dg", label, label, seed, (1,), rows=rows)

    report = build([run("erm", 0, 100.0), run("erm", 1, 300.0), run("sage", 0, 10.0)], ["training"])
    figure = next(f for f in report.figures if f.key == "theorem_terms")
    assert figure.png[:4] == b"\x89PNG"
    lines = figure.csv.splitlines()
    assert lines[0] == "term,dataset,method,step,value"
    assert "diag_curvature_trace,rotated_digits,erm,10,2200.0" in lines  # the mean over erm's two seeds
    assert any(line.startswith("diag_alignment_trace,rotated_digits,sage,20,2.1") for line in lines)
    assert build([run("erm", 0, 1.0)], ["training"], with_figures=False).figures == []


def test_diagnose_takes_a_run_id_prefix_and_a_sage_runs_own_noise_scale(quickstart_run):
    run_id, uri, _ = quickstart_run
    quick = ["--json", "--no-log", "--probes", "4", "--cg-iters", "5", "--power-iters", "5"]
    own = CliRunner().invoke(app, ["diagnose", run_id[:8], "--tracking-uri", uri, *quick])
    assert own.exit_code == 0, own.output
    data = json.loads(own.output.strip().splitlines()[-1])
    assert data["run_id"] == run_id and data["sigma_source"] == "the run's β = γ(1 − S)"
    assert data["sigma"] == pytest.approx(data["noise_scale"]) and data["sigma"] > 0
    assert data["curvature_term"] == pytest.approx(data["sigma"] ** 2 / 2 * data["curvature_trace"])
    given = CliRunner().invoke(app, ["diagnose", run_id[:8], "--tracking-uri", uri, "--sigma", "0", *quick])
    assert json.loads(given.output.strip().splitlines()[-1])["curvature_term"] == 0
    wrong = CliRunner().invoke(app, ["diagnose", "zzzz", "--tracking-uri", uri])
    assert wrong.exit_code == 2 and "no run starting with 'zzzz'" in wrong.output


def test_figure_2_has_colour_bars_every_trajectory_visible_and_boxed_labels(monkeypatch):
    import sage_cli.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "png", lambda fig: drawn.append(fig) or b"")
    landscape.figure(landscape.run(seed=0))
    [fig] = drawn
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2 and {ax.get_ylabel() for ax in bars} == {"aggregate loss L̄", "agreement S(θ)"}
    panel = fig.axes[0]
    lines = {line.get_label().split(" →")[0]: line for line in panel.get_lines() if "→" in line.get_label()}
    erm, sam = lines["ERM"], lines["SAM"]
    assert erm.get_linestyle() == "--" and erm.get_linewidth() > sam.get_linewidth()  # ERM shows under SAM
    assert erm.get_zorder() < sam.get_zorder()
    boxed = [t for t in panel.texts if t.get_text() in ("A", "B")]
    assert len(boxed) == 2 and all(t.get_bbox_patch() is not None for t in boxed)
