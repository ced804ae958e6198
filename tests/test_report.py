"""`sage report` and `sage export` on a real sqlite store of known numbers, checked against hand-computed cells."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import mlflow_server, synthetic_store

from sage_cli.mtl.benchmarks import NYUV2, delta_m
from sage_cli.report import paper
from sage_cli.report.build import build
from sage_cli.report.formats import to_latex
from sage_cli.report.runs import from_domainbed, from_store

ROOT = Path(__file__).resolve().parents[1]


def sage(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "sage_cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, timeout=300)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    return synthetic_store(path)


def cells(data, selection, method, env):
    found = [r for r in data["dg"] if (r["selection"], r["method"], r["test_env"]) == (selection, method, env)]
    assert len(found) == 1, (selection, method, env)
    return found[0]


def sem(values):
    m = sum(values) / len(values)
    return 100 * math.sqrt(sum((v - m) ** 2 for v in values) / len(values)) / math.sqrt(len(values))


@pytest.fixture(scope="module")
def report_json(store, tmp_path_factory):
    proc = sage(["report", "--tracking-uri", store, "--selection", "all", "--format", "json"],
                tmp_path_factory.mktemp("cwd"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_training_domain_selection_by_hand(report_json):
    a0 = cells(report_json, "training", "A", 0)
    # seed 0: h1 at step 100 (val .65 > h2's .60); seed 1: a tie at .70, DomainBed's reversed sort takes h2
    assert a0["mean"] == pytest.approx(62.0) and a0["sem"] == pytest.approx(sem([.60, .64])) and a0["n"] == 2
    assert cells(report_json, "training", "A", 1)["mean"] is None  # no run: X
    assert cells(report_json, "training", "A", "avg")["mean"] is None  # X when any env is X
    b0, b1 = cells(report_json, "training", "B", 0), cells(report_json, "training", "B", 1)
    # the running (seed 2, env 0) and failed (seed 2, env 1) runs count for nothing
    assert (b0["mean"], b0["n"]) == (pytest.approx(75.0), 2) and b0["sem"] == pytest.approx(sem([.7, .8]))
    assert (b1["mean"], b1["n"]) == (pytest.approx(75.0), 2) and b1["sem"] == pytest.approx(sem([.9, .6]))
    c0 = cells(report_json, "training", "C", 0)
    assert c0["mean"] == pytest.approx(50.0) and c0["n"] == 1  # two equal steps: the first wins


def test_oracle_selection_by_hand(report_json):
    a0 = cells(report_json, "oracle", "A", 0)
    # the last checkpoint of each candidate: seed 0 h2 (out .65 > .55) → .70; seed 1 h1 (.60 > .58) → .66
    assert a0["mean"] == pytest.approx(68.0) and a0["sem"] == pytest.approx(sem([.70, .66]))


def test_leave_one_domain_out_by_hand(report_json):
    c0 = cells(report_json, "loo", "C", 0)
    assert c0["mean"] == pytest.approx(60.0) and c0["n"] == 1  # step 100: (.6 + .8)/2 beats (.7 + .5)/2
    assert cells(report_json, "loo", "A", 0)["mean"] is None  # A has no pair runs


def test_not_finished_runs_are_named(report_json, store, tmp_path, monkeypatch):
    states = sorted(r["status"] for r in report_json["not_finished"])
    assert states == ["FAILED", "RUNNING"]
    # the sweep's folder names one more job, which never started
    from sage_cli.launch.state import JobRecord, SweepState

    monkeypatch.setenv("SAGE_SWEEPS", str(tmp_path / "sweeps"))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"dataset": {"name": "toy3"}}))
    SweepState("synthetic-1", "synthetic", store, "synthetic",
               jobs={"unstarted": JobRecord("unstarted", "A seed=2", str(job), "local")}).save()
    monkeypatch.delenv("SAGE_SWEEPS")
    proc = sage(["report", "--tracking-uri", store, "--selection", "loo"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "toy3: 3 of 14 jobs not finished: 1 failed, 1 running, 1 not started — see `sage status synthetic-1`" \
        in " ".join(proc.stdout.split())
    assert "toy3 C: LOO needs runs holding out each pair of envs; 1 of 3 pairs have no finished run ({1,2})" \
        in " ".join(proc.stdout.split())


def test_summary_table_as_domainbed_averages(store):
    report = build(from_store(store), ["training"], with_figures=False)
    summary = next(t for t in report.tables if t.key == "dg-training-summary")
    rows = dict(summary.rows)
    assert summary.columns == ["toy3", "Avg"]
    # per trial seed the mean over its test envs, then mean ± sem over seeds: B (.7+.9)/2, (.8+.6)/2
    assert rows["B"][0].mean == pytest.approx(75.0) and rows["B"][0].sem == pytest.approx(sem([.8, .7]))
    assert rows["A"][0].mean == pytest.approx(62.0) and rows["A"][1].mean == pytest.approx(62.0)
    detail = next(t for t in report.tables if t.key == "dg-training-toy3")
    b = dict(detail.rows)["B"]
    assert b[2].text() == "X" and b[-1].text() == "X"  # no env-2 run: the Avg of the env means is X too
    assert b[0].text() == "75.0 ± 3.5" and b[1].text() == "75.0 ± 10.6"


def test_mtl_table_means_delta_m_and_marks(report_json):
    mtl = {(r["method"], r["metric"]): r for r in report_json["mtl"]}
    assert mtl[("LS", "miou")]["mean"] == pytest.approx(39.5) and mtl[("LS", "miou")]["sem"] == pytest.approx(0.35355, abs=1e-4)
    means = {m: mtl[("SAGE-LS", m)]["mean"] for m in NYUV2.metrics}
    assert mtl[("SAGE-LS", "delta_m")]["mean"] == pytest.approx(
        delta_m([means[m] for m in NYUV2.metrics], NYUV2.stl, NYUV2.higher_is_better))
    assert means["abs"] == pytest.approx(0.575)
    assert mtl[("SAGE-LS", "miou")]["mark"] == "+"  # higher mIoU than LS
    assert mtl[("SAGE-LS", "abs")]["mark"] == "-"  # a larger depth error
    assert mtl[("SAGE-LS", "pixacc")]["mark"] == "±"  # 65.0005 and 65.00 print alike
    assert "mark" not in mtl[("LS", "miou")]


def test_every_format_and_figure(store, tmp_path):
    proc = sage(["report", "--tracking-uri", store, "--selection", "all", "--with-paper", "--out", str(tmp_path / "r")],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "r"
    for name in ("report.txt", "report.md", "report.tex", "report.csv", "report.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "tables" / "dg-training-toy3.csv").read_text().splitlines()[0].startswith("method,env0,env0 sem,env0 n")
    tex = (out / "report.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex and "\\underline{" in tex and "$\\pm$" in tex
    html = (out / "report.html").read_text()
    assert "<table>" in html and "http" not in html.replace("http-equiv", "")  # self-contained
    data = json.loads((out / "report.json").read_text())
    assert {f["method"] for f in data["paper_check"]} >= {"FISH", "IMTL-G", "SAGE-LS"}


def test_latex_bolds_the_best_and_underlines_the_second(store):
    report = build(from_store(store), ["training"], with_figures=False)
    detail = next(t for t in report.tables if t.key == "dg-training-toy3")
    line_b = next(line for line in to_latex(report).splitlines() if line.startswith("B &"))
    line_a = next(line for line in to_latex(report).splitlines() if line.startswith("A &"))
    assert "\\textbf{75.0 $\\pm$ 3.5}" in line_b and "\\underline{62.0 $\\pm$ 1.4}" in line_a
    assert detail.ranks(0) == {1: 1, 0: 2}


def test_the_papers_own_tables_check_out_but_where_they_do_not():
    flagged = {(f.table, f.method, f.what) for f in paper.flagged()}
    sage_rows = {"SAGE-LS", "SAGE-MGDA", "SAGE-FairGrad", "SAGE-SAMO-LS", "SAGE-SAMO-MGDA", "SAGE-SAMO-FairGrad"}
    expected = {("2", "IMTL-G", "nyuv2 Δm%"), ("1", "FISH", "Avg"), ("1", "SAGM", "Avg")}
    expected |= {("2", m, f"{d} Δm%") for m in sage_rows for d in ("nyuv2", "cityscapes")}
    assert flagged == expected
    sagm = next(f for f in paper.flagged() if f.method == "SAGM")
    assert "no DomainNet value" in sagm.note
    fish = next(f for f in paper.flagged() if f.method == "FISH")
    assert (fish.stated, round(fish.recomputed, 2)) == (75.0, 76.34)
    assert len(paper.consistency()) == 17 + 2 * 24


def test_with_paper_puts_the_papers_rows_beside_ours(store):
    report = build(from_store(store), ["training"], with_paper=True, with_figures=False)
    nyu = next(t for t in report.tables if t.key == "mtl-nyuv2")
    paper_rows = dict(nyu.paper)
    assert paper_rows["SAGE-LS"][0].mean == 39.67 and paper_rows["LS"][-1].mean == 5.59
    # the check names the protocol the paper's source states for each Table 1 row
    fish = next(n for n in report.notes if n.startswith("paper check: Table 1, FISH"))
    assert "[from the BOA paper [34]: CLIP ViT-B/16, VPT (prompts and head trained), test-domain (oracle) " \
           "selection] Avg: stated 75" in fish
    assert paper.table1_protocol("SAGE").startswith("the paper's App. E: CLIP ViT-B/16, full fine-tuning")


def test_export_to_domainbed_and_back_gives_the_same_cells(store, tmp_path):
    proc = sage(["export", "--domainbed", str(tmp_path / "db"), "--tracking-uri", store], tmp_path)
    assert proc.returncode == 0, proc.stderr
    folders = sorted((tmp_path / "db").iterdir())
    assert len(folders) == 11  # the finished DG runs: A 4, B 4, C 3 (not the failed, running or MTL ones)
    assert all((f / "done").exists() and (f / "results.jsonl").exists() for f in folders)
    row = json.loads((folders[0] / "results.jsonl").read_text().splitlines()[0])
    assert set(row["args"]) >= {"dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed", "seed",
                                "holdout_fraction"}
    assert {"step", "epoch", "loss", "step_time", "hparams", "env0_in_acc", "env2_out_acc"} <= set(row)
    ours = build(from_store(store), ["training", "oracle", "loo"], with_figures=False).data["dg"]
    back = build(from_domainbed(tmp_path / "db"), ["training", "oracle", "loo"], with_figures=False).data["dg"]
    key = lambda r: (r["selection"], r["method"], str(r["test_env"]))  # noqa: E731
    assert sorted(back, key=key) == sorted(ours, key=key)


def test_report_bad_input_is_one_line(store, tmp_path):
    for args, message in [(["--selection", "best"], "--selection 'best'"), (["--format", "pdf"], "--format 'pdf'"),
                          (["nosuchsweep"], "no runs of sweep nosuchsweep"),
                          (["--experiment", "nope"], "no experiment 'nope'")]:
        proc = sage(["report", "--tracking-uri", store, *args], tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = sage(["report", "--from-domainbed", str(tmp_path / "missing")], tmp_path)
    assert proc.returncode == 2 and "not a folder" in proc.stderr


def test_from_domainbed_reads_domainbeds_own_rows(tmp_path):
    run = tmp_path / "db" / "a1"
    run.mkdir(parents=True)
    rows = [{"args": {"dataset": "PACS", "algorithm": "ERM", "test_envs": [0], "trial_seed": 0, "hparams_seed": 0},
             "step": s, **{f"env{i}_{k}_acc": v for i in range(4) for k in ("in", "out")}, "env0_in_acc": t}
            for s, v, t in [(0, .5, .4), (300, .6, .7)]]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "done").touch()
    runs = from_domainbed(tmp_path / "db")
    assert runs[0].dataset == "pacs" and runs[0].label == "ERM"
    report = build(runs, ["training"], with_figures=False)
    detail = next(t for t in report.tables if t.key == "dg-training-pacs")
    assert detail.columns[:4] == ["art_painting", "cartoon", "photo", "sketch"]
    assert dict(detail.rows)["ERM"][0].mean == pytest.approx(70.0)


def test_a_report_through_an_mlflow_server_equals_the_sqlite_one(store, report_json, tmp_path):
    with mlflow_server(store, tmp_path) as url:
        proc = sage(["report", "--tracking-uri", url, "--selection", "all", "--format", "json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    served = json.loads(proc.stdout)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    for part in ("dg", "mtl"):
        assert sorted(served[part], key=key) == sorted(report_json[part], key=key)
    assert sorted(r["status"] for r in served["not_finished"]) == ["FAILED", "RUNNING"]


def test_latex_labels_every_table_prints_its_notes_names_envs_and_leaves_out_empty_tables(tmp_path):
    from mlflow.tracking import MlflowClient
    from report_fixtures import accs, add_run

    uri = f"sqlite:///{tmp_path / 'digits.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("d")
    for seed in (0, 1):  # no pair runs: every leave-one-domain-out table is X only
        add_run(client, exp, dataset="rotated_digits", label="SAGE", hparams="h", seed=seed, test_envs=(0,),
                rows=[(0, accs(.5, .4, out=(.6,) * 5, n=6))])
    result = build(from_store(uri, experiments=["d"]), ["training", "loo"], with_figures=False)
    tex = to_latex(result)
    kept = [t for t in result.tables if any(c.mean is not None for _, cells in t.rows for c in cells)]
    assert tex.count("\\label{tab:") == len(kept) == 2 and "\\label{tab:dg-training-rotated-digits}" in tex
    assert "0$^\\circ$ & 15$^\\circ$" in tex  # RotatedDigits' environments are angles
    assert "\\paragraph{Notes.}" in tex and not [line for line in tex.splitlines()[1:] if line.startswith("%")]
    assert "left out: rotated\\_digits $\\cdot$ model selection: leave-one-domain-out" in tex
    assert "leave-one-domain-out" not in "".join(line for line in tex.splitlines() if line.startswith("\\caption"))


def test_every_cell_carries_its_n_rankings_compare_equal_n_and_json_holds_every_table_and_choice(store):
    result = build(from_store(store), ["training"], with_figures=False)
    [toy] = [t for t in result.tables if t.key == "dg-training-toy3"]
    usual = toy.usual_n
    assert toy.notes[0] == f"n = {usual} trial seeds per cell unless marked (n=…)"
    odd = [(i, j, c) for i, (_, cells) in enumerate(toy.rows) for j, c in enumerate(cells[:-1])
           if c.mean is not None and c.n != usual]
    assert odd, "the fixture has cells averaging fewer seeds"
    for i, j, cell in odd:
        assert toy.cell_text(cell, j).endswith(f"(n={cell.n})") and i not in toy.ranks(j)
    assert any(note.startswith("A: chose ") and " at step" in note for note in toy.notes)
    data = json.loads(__import__("sage_cli.report.formats", fromlist=["to_json"]).to_json(result))
    assert {t["key"] for t in data["tables"]} == {t.key for t in result.tables}
    assert all("n" in c for t in data["tables"] for r in t["rows"] for c in r["cells"])
    a0 = [r for r in data["dg"] if r["method"] == "A" and r["test_env"] == 0][0]
    assert {p["trial_seed"] for p in a0["chosen"]} == {0, 1} and all("step" in p for p in a0["chosen"])


def test_runs_trained_otherwise_are_not_mixed_into_one_table(tmp_path):
    """A 400-step `sage run` beside 40-step ablation runs: before, candidates of one row without a word."""
    from mlflow.tracking import MlflowClient
    from report_fixtures import accs, add_run

    uri = f"sqlite:///{tmp_path / 'mixed.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("quickstart")
    for hparams, steps, value in (("long", 400, .9), ("short-a", 40, .5), ("short-b", 40, .6)):
        add_run(client, exp, dataset="toy3", label="sage", hparams=hparams, seed=0, test_envs=(0,),
                rows=[(0, accs(value, .5, out=(.7, .6)))], params={"training.steps": steps, "optimizer.rho": hparams})
    result = build(from_store(uri, experiments=["quickstart"]), ["training"], with_figures=False)
    titles = [t.title for t in result.tables]
    assert "toy3 · model selection: training-domain validation" in titles
    assert "toy3 [training.steps=400] · model selection: training-domain validation" in titles
    main = next(t for t in result.tables if t.key == "dg-training-toy3")
    assert main.rows[0][1][0].mean == pytest.approx(60.0)  # the 40-step candidates only: the 400-step run apart
    summary = next(t for t in result.tables if t.key == "dg-training-summary")
    assert summary.columns == ["toy3", "Avg"]  # a split-off group is not averaged in
    assert any("toy3: runs differ in training.steps; reported in 2 groups" in n for n in result.notes)


def test_runs_of_two_protocols_are_never_ranked_together(tmp_path):
    """DomainBed-protocol runs and DISAM-protocol runs of one dataset: separate tables, each stating its protocol;
    the DISAM group is judged on all the test env's images and has its merged-source selection."""
    from mlflow.tracking import MlflowClient
    from report_fixtures import accs, add_run

    uri = f"sqlite:///{tmp_path / 'protocols.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("protocols")
    disam = {"protocol": "disam", "dataset.split": "official", "dataset.train_transform": "disam",
             "dataset.eval_transform": "center_crop", "training.batch_sampling": "concat", "training.unit": "epochs",
             "training.selection": "merged_source", "training.test_split": "all", "training.epochs": 20}
    for seed in (0, 1):
        add_run(client, exp, dataset="toy3", label="sage", hparams="db", seed=seed, test_envs=(0,),
                rows=[(0, accs(.9, .5, out=(.7, .6)))], params={"protocol": "domainbed"})
        add_run(client, exp, dataset="toy3", label="erm", hparams="db-erm", seed=seed, test_envs=(0,),
                rows=[(0, accs(.8, .5, out=(.7, .6)))])  # logged before protocols existed: DomainBed's
        rows = [(5, {**accs(.2, .2, out=(.7, .6)), "merged_out_acc": .95, "env0_all_acc": .3}),
                (11, {**accs(.1, .1, out=(.9, .9)), "merged_out_acc": .9, "env0_all_acc": .4})]
        add_run(client, exp, dataset="toy3", label="sage", hparams="dm", seed=seed, test_envs=(0,), rows=rows,
                params=disam)
    result = build(from_store(uri, experiments=["protocols"]), ["training", "merged"], with_figures=False)
    by_key = {t.key: t for t in result.tables}
    plain, split = by_key["dg-training-toy3"], by_key["dg-training-toy3-protocol-disam"]
    assert split.title == "toy3 [protocol=disam] · model selection: training-domain validation"
    assert sorted(dict(plain.rows)) == ["erm", "sage"]
    assert all(c.mean is None for c in dict(split.rows)["erm"])  # no DISAM-protocol ERM run: no value there
    assert dict(plain.rows)["sage"][0].mean == pytest.approx(90.0)  # DomainBed's runs alone: the test env's in split
    assert "protocol domainbed · tuning full · test env: its in split · model selection: training-domain " \
           "validation" in plain.notes
    assert "protocol disam · tuning full · test env: all its images · model selection: training-domain " \
           "validation" in split.notes
    assert dict(split.rows)["sage"][0].mean == pytest.approx(40.0)  # step 11: best mean out accuracy; all images
    merged = by_key["dg-merged-toy3-protocol-disam"]
    assert dict(merged.rows)["sage"][0].mean == pytest.approx(30.0)  # step 5: the best merged accuracy
    assert all(c.mean is None for _, cells in by_key["dg-merged-toy3"].rows for c in cells[:-1])  # not logged
    assert by_key["dg-training-summary"].columns == ["toy3", "Avg"]  # the DISAM group is not averaged in
    assert any("toy3: runs differ in" in n and "protocol" in n for n in result.notes)


def test_figures_show_the_data_unsmoothed_with_their_spread(tmp_path):
    """App. F drew an EMA(0.6) of five checkpoints (a raw −0.003 drawn at 0.16) pooled over test envs."""
    import csv
    import io

    from mlflow.tracking import MlflowClient
    from report_fixtures import accs, add_run

    from sage_cli.report.figures import _compact

    uri = f"sqlite:///{tmp_path / 'curves.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("c")
    for seed, (a0, a1) in enumerate(((0.4, -0.003), (0.2, 0.013))):
        for env in (0, 1):
            add_run(client, exp, dataset="toy3", label="SAGE", hparams="h", seed=seed, test_envs=(env,),
                    rows=[(0, {**accs(.5, .5, test=env, out=(.6, .6)), "target_alignment": a0}),
                          (10, {**accs(.6, .5, test=env, out=(.7, .6)), "target_alignment": a1})])
    report = build(from_store(uri, experiments=["c"]), ["training"], with_figures=True)
    figures = {f.key: f for f in report.figures}
    assert {"alignment", "accuracy_curves", "bars-dg-training-summary"} <= set(figures)
    rows = list(csv.DictReader(io.StringIO(figures["alignment"].csv)))
    assert {r["line"] for r in rows} == {"SAGE · env 0", "SAGE · env 1"}  # one line per held-out env
    at10 = [r for r in rows if r["line"] == "SAGE · env 0" and r["step"] == "10"]
    assert float(at10[0]["mean"]) == pytest.approx(0.005) and at10[0]["n"] == "2" and float(at10[0]["sem"]) > 0
    curve = list(csv.DictReader(io.StringIO(figures["accuracy_curves"].csv)))
    assert {(r["step"], r["mean"]) for r in curve if r["line"] == "SAGE · env 1"} == {("0", "0.5"), ("10", "0.6")}
    assert [_compact(x) for x in ("ρ=0.0001", "γ=1e-06", "ρ=0.05")] == ["1e-4", "1e-6", "0.05"]
    for figure in figures.values():
        assert figure.png[:4] == b"\x89PNG"


def test_rows_differing_only_in_case_are_named_in_a_note(tmp_path):
    from mlflow.tracking import MlflowClient
    from report_fixtures import accs, add_run

    uri = f"sqlite:///{tmp_path / 'case.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    for label in ("SAGE", "sage"):
        add_run(client, exp, dataset="toy3", label=label, hparams=label, seed=0, test_envs=(0,),
                rows=[(0, accs(.6, .5, out=(.7, .6)))])
    notes = build(from_store(uri, experiments=["e"]), ["training"], with_figures=False).notes
    assert any("rows 'SAGE' and 'sage' differ only in case" in n for n in notes), notes
