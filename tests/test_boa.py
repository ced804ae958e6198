"""BOA's parts on landscapes whose contours are known in closed form (quadratics, App. C's two-domain model);
BOA runs and sweeps from a SAM start."""

import json
import math
import os

import pytest
import torch

from sage_cli.analysis.toy2d import DOMAINS, Domain
from sage_cli.optim.boa import Billiard, finite_difference_hvp, krylov, line_search, projected_normal, reflect


@pytest.fixture
def float64():
    """Closed-form checks in double precision; the default dtype set back for the tests after these."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


def quadratic(diag):
    A = torch.diag(torch.tensor(diag, dtype=torch.float64))
    return (lambda t: float(0.5 * t @ A @ t)), (lambda t: A @ t), A


def test_line_search_lands_on_the_contour_from_inside(float64):
    loss, _, A = quadratic([1.0, 4.0, 9.0])
    p = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3)
    threshold, tol = 2.0, 1e-9
    for step in (1e-3, 0.1, 5.0):  # growing from small steps; halving a first step that overshoots
        hit = line_search(loss, torch.zeros(3), p, threshold, step, tol)
        exact = math.sqrt(2 * threshold / float(p @ A @ p))  # ½α²pᵀAp = ℓ_th
        assert hit.bounded and hit.loss <= threshold and threshold - hit.loss <= tol
        assert loss(hit.alpha * p) == pytest.approx(hit.loss) and hit.alpha == pytest.approx(exact, rel=1e-8)


def test_line_search_says_when_the_table_is_open(float64):
    def loss(t):  # flat along the second axis
        return float(t[0] ** 2)

    hit = line_search(loss, torch.zeros(2), torch.tensor([0.0, 1.0]), 1.0, 1.0, 1e-9, max_alpha=1e3)
    assert not hit.bounded and hit.loss <= 1.0


def test_reflection_keeps_the_norm_and_mirrors_about_the_normal(float64):
    g = torch.Generator().manual_seed(0)
    p, n = torch.randn(5, generator=g), torch.randn(5, generator=g)
    n = n / n.norm()
    r = reflect(p, n)
    assert r.norm() == pytest.approx(float(p.norm()))
    assert float(r @ n) == pytest.approx(-float(p @ n))  # the normal part flips
    assert torch.allclose(r - (r @ n) * n, p - (p @ n) * n)  # the rest is kept
    assert torch.allclose(reflect(r, n), p)


def test_krylov_basis_of_a_diagonal_hessian_spans_the_gradients_orbit(float64):
    eigen = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0])
    H = torch.diag(eigen)
    g0 = torch.linspace(1, 2, 8)
    for k in (3, 5, 8):
        sub = krylov(g0, lambda v: H @ v, k)
        Q = sub.basis
        assert Q.shape == (8, k) and torch.allclose(Q.T @ Q, torch.eye(k), atol=1e-10)
        orbit = [torch.linalg.matrix_power(H, j) @ g0 for j in range(k)]
        for v in orbit:  # every Hʲg₀, j < k, lies in the span
            assert (v - Q @ (Q.T @ v)).norm() <= 1e-8 * v.norm()
        raw = -sum(orbit)
        assert torch.allclose(sub.direction, raw / raw.norm(), atol=1e-10)  # p₀ = −Σ Hʲg₀, normalised
    # g₀ on 3 eigenvectors: its orbit spans 3 dimensions whatever k
    short = krylov(torch.tensor([1.0, 0, 0, 1.0, 0, 0, 0, 1.0]), lambda v: H @ v, 6)
    assert short.basis.shape[1] == 3


def test_finite_difference_products_agree_with_exact_ones_to_first_order(float64):
    def loss(t):
        return (t ** 4).sum() / 4 + (t[0] * t[1]) ** 2

    def grad(t):
        t = t.detach().requires_grad_(True)
        return torch.autograd.grad(loss(t), t)[0]

    theta = torch.tensor([0.7, -1.2, 0.4])
    t = theta.clone().requires_grad_(True)
    H = torch.autograd.functional.hessian(loss, t)
    v = torch.tensor([0.3, 0.5, -0.8])
    errors = [float((finite_difference_hvp(grad, theta, grad(theta), eps)(v) - H @ v).norm()) for eps in (1e-2, 1e-3)]
    assert errors[0] / errors[1] == pytest.approx(10, rel=0.05)  # O(ε): ten times smaller for ε ten times smaller


@pytest.mark.parametrize("landscape", ["quadratic", "app_c"])
def test_every_point_of_a_trajectory_lies_on_the_contour(float64, landscape):
    if landscape == "quadratic":
        loss, grad, A = quadratic([1.0, 3.0])
        theta0 = torch.tensor([0.2, -0.1])
        hvp = lambda v: A @ v  # noqa: E731
    else:  # App. C: the mean of the two domains' population losses (Eq. 39)
        domains = [Domain(s) for s in DOMAINS]
        H = sum(d.hessian() for d in domains) / 2
        b = sum(d.b() for d in domains) / 2
        loss = lambda t: float(0.5 - b @ t + 0.5 * t @ H @ t)  # noqa: E731
        grad = lambda t: H @ t - b  # noqa: E731
        theta0 = torch.linalg.solve(H, b) + torch.tensor([0.05, -0.02])
        hvp = lambda v: H @ v  # noqa: E731
    tol = 1e-8
    billiard = Billiard(loss, grad, delta_loss=0.05, step=0.01, tol=tol)
    billiard.start(theta0, hvp, k=2)
    points = [billiard.next() for _ in range(12)]
    for point in points:
        assert point.bounded and billiard.threshold - tol <= loss(point.theta) <= billiard.threshold
        assert point.loss == pytest.approx(loss(point.theta))
    assert len({tuple(round(float(x), 6) for x in p.theta) for p in points}) == 12  # it moves around the table
    # the state resumes the same trajectory
    again = Billiard(loss, grad, delta_loss=0.05, step=0.01, tol=tol)
    resumed = Billiard(loss, grad, delta_loss=0.05, step=0.01, tol=tol)
    again.start(theta0, hvp, k=2)
    for _ in range(5):
        again.next()
    resumed.load_state_dict({k: (v.clone() if torch.is_tensor(v) else v) for k, v in again.state_dict().items()})
    assert all(torch.equal(resumed.next().theta, points[i].theta) for i in range(5, 12))


def test_the_normal_is_projected_onto_the_subspace(float64):
    basis = torch.eye(3)[:, :2]
    normal = projected_normal(torch.tensor([1.0, 1.0, 5.0]), basis)
    assert torch.allclose(normal, -torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    assert projected_normal(torch.tensor([0.0, 0.0, 1.0]), basis) is None


# --------------------------------------------------------------------------- BOA runs through `sage run`
QUICKSTART = "recipes/quickstart.yaml"
BOA = ["--set", "optimizer.method=boa", "--set", "optimizer.reflections=4", "--set", "optimizer.krylov_dim=4",
       "--set", "optimizer.loss_batches=1", "--set", "optimizer.delta_loss=0.2"]


LOO = "[5, [0, 5], [1, 5], [2, 5], [3, 5], [4, 5]]"  # env 5 held out alone and with each other env: its LOO


@pytest.fixture(scope="module")
def loo_sweep(tmp_path_factory):
    """A digits sweep of SAM and BOA-from-SAM over env 5's leave-one-domain-out sets (12 jobs, 2 at a time)."""
    from sweep_helpers import ROOT, sage

    cwd = tmp_path_factory.mktemp("boa")
    (cwd / "exp.yaml").write_text(
        f"name: boaloo\nrecipes: [{ROOT / QUICKSTART}]\noverrides: {{training.steps: 20, training.checkpoint_freq: 10}}\n"
        "methods:\n  SAM: {optimizer.method: sam, optimizer.rho: 0.05}\n  BOA: {optimizer.method: boa, "
        "optimizer.init_from: SAM, optimizer.reflections: 2, optimizer.krylov_dim: 3, optimizer.loss_batches: 1}\n"
        f"seeds: [0]\ntest_envs: {LOO}\n")
    proc = sage(["sweep", str(cwd / "exp.yaml"), "--max-parallel", "2"], cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd


@pytest.fixture(scope="module")
def sam_start(loo_sweep):
    """The sweep's SAM run holding out env 5 alone: a trained start."""
    from sweep_helpers import child_runs

    _client, runs = child_runs(f"sqlite:///{loo_sweep / 'mlflow.db'}")
    [run] = [r for r in runs if r.data.tags.get("sage.label") == "SAM" and r.data.tags["sage.test_envs"] == "5"]
    return loo_sweep, run.info.run_id


def test_a_sweep_runs_each_boa_job_after_its_sam_start_and_the_report_selects_along_trajectories(loo_sweep):
    from sweep_helpers import child_runs, sage

    _client, runs = child_runs(f"sqlite:///{loo_sweep / 'mlflow.db'}")
    by_label = {lab: {r.data.tags["sage.test_envs"]: r for r in runs if r.data.tags.get("sage.label") == lab}
                for lab in ("SAM", "BOA")}
    assert len(by_label["SAM"]) == len(by_label["BOA"]) == 6
    for envs, boa in by_label["BOA"].items():
        sam = by_label["SAM"][envs]  # the start of the same held-out envs, finished before BOA began
        assert boa.data.params["optimizer.init_from"] == f"hash:{sam.data.tags['sage.recipe_hash']}"
        assert boa.info.start_time >= sam.info.end_time
    for selection in ("training", "loo", "oracle"):
        report = json.loads(sage(["report", "boaloo", "--selection", selection, "--format", "json"], loo_sweep).stdout)
        [cell] = [r for r in report["dg"] if r["method"] == "BOA" and r["test_env"] == 5]
        assert cell["mean"] is not None, selection  # chosen along the trajectories; LOO from the five pair runs
    plan = sage(["sweep", str(loo_sweep / "exp.yaml"), "--dry-run"], loo_sweep, env={"COLUMNS": "200"})
    assert "12 jobs (0 to run, 12 already finished)" in plan.stdout


def test_a_job_whose_start_failed_is_skipped(tmp_path, monkeypatch):
    from rich.console import Console

    from sage_cli.launch.local import run_local
    from sage_cli.launch.state import JobRecord, SweepState

    monkeypatch.setenv("SAGE_SWEEPS", str(tmp_path))
    start = JobRecord("s", "SAM", str(tmp_path / "missing.json"))  # `sage run` of no file: exits 2 at once
    boa = JobRecord("b", "BOA", str(tmp_path / "missing.json"), after="s")
    state = SweepState("deps", "deps", "sqlite:///unused.db", "e", jobs={"s": start, "b": boa})
    state.dir.mkdir(parents=True)
    status = run_local(state, [start, boa], 2, Console(file=open(os.devnull, "w")))
    assert status == {"s": "failed", "b": "skipped"} and boa.scheduler_id == ""  # never started


def test_sage_run_explores_from_a_sam_run_and_the_report_reads_the_trajectory(sam_start):
    from sweep_helpers import ROOT, sage

    from sage_cli.report.build import build
    from sage_cli.report.runs import from_store

    cwd, run_id = sam_start
    proc = sage(["run", str(ROOT / QUICKSTART), *BOA, "--set", f"optimizer.init_from={run_id}"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert "quickstart · rotated_digits · boa · step 3" in proc.stdout
    runs = [r for r in from_store(f"sqlite:///{cwd / 'mlflow.db'}", None, ["quickstart"]) if r.label == "boa"]
    assert len(runs) == 1 and [row["step"] for row in runs[0].rows] == [0, 1, 2, 3]  # a checkpoint per point
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}").get_metric_history(runs[0].run_id, "boa_threshold")
    threshold = history[0].value
    assert {m.value for m in history} == {threshold} and len(history) == 4  # ℓ_th, logged at every point
    assert all(row["loss"] <= threshold + 1e-6 for row in runs[0].rows)  # every point inside the table
    for selection in ("training", "oracle"):
        result = build(runs, [selection], with_figures=False)
        table = next(t for t in result.tables if t.key == f"dg-{selection}-rotated_digits")
        assert dict(table.rows)["boa"][5].mean is not None  # the held-out env's accuracy, chosen along the path


def test_a_boa_run_stopped_mid_trajectory_resumes_on_the_same_trajectory(sam_start, tmp_path):
    from sage_cli.errors import Preempted
    from sage_cli.recipe import load_recipe
    from sage_cli.train.dg import train_dg

    cwd, run_id = sam_start
    values = {"optimizer.method": "boa", "optimizer.reflections": 4, "optimizer.krylov_dim": 3,
              "optimizer.loss_batches": 1, "optimizer.hvp": "finite_difference", "optimizer.fd_eps": 1e-3,
              "optimizer.init_from": str(next((cwd / "runs").glob("*/checkpoint.pt"))),
              "training.output_dir": str(tmp_path)}
    recipe = load_recipe(QUICKSTART, values)
    whole = train_dg(recipe)
    steps = []
    with pytest.raises(Preempted):
        train_dg(recipe, checkpoint_path=tmp_path / "ckpt.pt", progress=steps.append, should_stop=lambda: len(steps) >= 2)
    resumed = train_dg(recipe, checkpoint_path=tmp_path / "ckpt.pt")
    assert resumed.resumed_from == 2

    def path(history):
        return [(r.step, r.metrics["loss"], r.metrics["env5_in_acc"]) for r in history]

    assert path(resumed.history) == path(whole.history)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()))


def test_boa_needs_its_start():
    from sage_cli.errors import UserError
    from sage_cli.recipe import load_recipe
    from sage_cli.train.boa import start_checkpoint

    recipe = load_recipe(QUICKSTART, {"optimizer.method": "boa"})
    with pytest.raises(UserError, match="explores from a trained start: set optimizer.init_from"):
        start_checkpoint(None, recipe)
    with pytest.raises(UserError, match="checkpoint /nope/x.pt does not exist"):
        start_checkpoint("/nope/x.pt", recipe)
    with pytest.raises(Exception, match="fd_eps acts only with hvp 'finite_difference'"):
        load_recipe(QUICKSTART, {"optimizer.method": "boa", "optimizer.fd_eps": 0.1})


def test_sage_analysis_boa_draws_the_billiard_inside_the_tables_wall(tmp_path):
    from typer.testing import CliRunner

    from sage_cli.analysis import billiard, landscape
    from sage_cli.cli import app

    found = billiard.run(reflections=12)
    start = float(landscape.aggregate(torch.tensor(found.start, dtype=torch.float64)))
    assert found.threshold == pytest.approx(start + billiard.DELTA)
    assert all(found.threshold - billiard.TOL <= loss <= found.threshold for loss in found.losses)
    assert all(float(landscape.aggregate(torch.tensor(p, dtype=torch.float64))) == pytest.approx(loss)
               for p, loss in zip(found.points, found.losses))
    result = CliRunner().invoke(app, ["analysis", "boa", "--out", str(tmp_path), "--reflections", "6"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "boa.png").read_bytes()[:4] == b"\x89PNG" and "6 reflections" in result.output


def test_boa_from_a_pruned_start_is_pruned_too(tmp_path):
    from mlflow.tracking import MlflowClient

    from sage_cli.errors import Pruned
    from sage_cli.recipe import load_recipe
    from sage_cli.train.boa import start_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("e"), tags={"sage.recipe_hash": "0123456789abcdef",
                                                                 "sage.pruned": "true"})
    client.set_terminated(run.info.run_id, "FINISHED")
    recipe = load_recipe(QUICKSTART, {"optimizer.method": "boa", "tracking.uri": uri})
    with pytest.raises(Pruned, match="is a random-search draw that was pruned"):
        start_checkpoint("hash:0123456789abcdef", recipe)
    from sage_cli.errors import UserError

    with pytest.raises(UserError, match="no finished run of that recipe"):
        start_checkpoint("hash:fedcba9876543210", recipe)
