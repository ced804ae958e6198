"""Reliability, second round: hostile or unlucky input is one line and exit 2 with nothing half-written, every
reader gives up on a store that is away within seconds, and what is written (CSV, LaTeX, Markdown, JSON) is
safe and well-formed whatever the labels and values. Real `sage` processes, a real `mlflow server` stopped
and started again, a real HTTP server answering 500, real PID reuse where the kernel lets us arrange it,
pdflatex on the LaTeX."""

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from report_fixtures import accs, add_run, mlflow_server
from sweep_helpers import QUICKSTART
from sweep_helpers import sage as _sage
from test_faults import small_filesystem
from test_reliability import one_line_error

from sage_cli.launch.state import JobRecord, SweepState
from sage_cli.processes import start_time

ROOT = Path(__file__).resolve().parents[1]


def sage(args, cwd, env=None, timeout=600):
    """`sage ARGS` in ``cwd``; ``env`` may name the tracking URI (the sweep helper's own always drops it)."""
    env = dict(env or {})
    uri = env.pop("MLFLOW_TRACKING_URI", None)
    if uri is None:
        return _sage(args, cwd, env=env, timeout=timeout)
    fixed = {**os.environ, "PYTHONPATH": str(ROOT), "SAGE_SWEEPS": str(Path(cwd) / "sweeps"), **env,
             "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, "-m", "sage_cli", *args], cwd=cwd, env=fixed, capture_output=True,
                          text=True, timeout=timeout)


def store_with(tmp_path, *label_rows, name="mlflow.db"):
    """A sqlite store with one finished toy3 run per (label, rows) of test env 0."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / name}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    for label, rows in label_rows:
        add_run(client, exp, dataset="toy3", label=label, hparams="h1", seed=0, test_envs=(0,), rows=rows)
    return uri


def report(tmp_path, uri, *args):
    return sage(["report", *args], tmp_path, env={"MLFLOW_TRACKING_URI": uri})


# ------------------------------------------------------------------------------------ B. security


def _with_pid(pid: int) -> subprocess.Popen | None:
    """A new process given ``pid`` again (the kernel's next-PID knob; root only), or None."""
    for _ in range(20):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_cancel_never_signals_a_process_that_reused_a_jobs_pid(tmp_path):
    job = subprocess.Popen(["sleep", "0.5"])  # a sweep's job, recorded as the launcher records it
    record = JobRecord("h1", "job", "r.json", "local", f"local:{job.pid}", started=start_time(job.pid))
    job.wait()
    stranger = _with_pid(job.pid)
    if stranger is None:  # the kernel's knob is not ours to turn: the same PID, started at another time
        stranger = subprocess.Popen(["sleep", "60"])
        record.scheduler_id, record.started = f"local:{stranger.pid}", str(int(start_time(stranger.pid)) - 1)
    try:
        os.environ["SAGE_SWEEPS"] = str(tmp_path / "sweeps")
        SweepState("s-reuse", "s", f"sqlite:///{tmp_path / 'mlflow.db'}", "e", launcher="local",
                   jobs={"h1": record}).save()
        result = sage(["cancel", "s-reuse"], tmp_path)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
        assert stranger.poll() is None  # not the job's process: never signalled
        # the record of the process that really runs: that one is stopped
        record.scheduler_id, record.started = f"local:{stranger.pid}", start_time(stranger.pid)
        record.cancelled, record.status = False, ""
        SweepState("s-live", "s", f"sqlite:///{tmp_path / 'mlflow.db'}", "e", launcher="local",
                   jobs={"h1": record}).save()
        assert sage(["cancel", "s-live"], tmp_path).returncode == 0
        assert stranger.wait(timeout=60) != 0
    finally:
        os.environ.pop("SAGE_SWEEPS", None)
        stranger.kill()


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(tmp_path):
    rows = [(0, accs(.6, .5, out=(.7, .6)))]
    uri = store_with(tmp_path, ("=HYPERLINK(\"http://x\")", rows), ("+1-2", rows), ("@SUM(A1)", rows), ("plain", rows))
    out = report(tmp_path, uri, "--format", "csv")
    assert out.returncode == 0, out.stderr
    labels = [line.split(",")[0] for line in out.stdout.splitlines() if line and not line.startswith(("#", "method"))]
    assert "'+1-2" in labels and "'@SUM(A1)" in labels and "plain" in labels
    assert all(not label.startswith(("=", "+", "-", "@", '"=')) for label in labels), labels


@pytest.mark.parametrize("command", [["status", "../x"], ["cancel", "../../etc"], ["status", "a/b"]])
def test_ids_are_names_never_paths(tmp_path, command):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "sweep.json").write_text("{}")  # what ../x would read, from the sweeps folder
    line = one_line_error(sage(command, tmp_path))
    assert "is not a sweep id" in line


def test_a_damaged_sweep_json_is_one_line(tmp_path):
    (tmp_path / "sweeps" / "cut").mkdir(parents=True)
    (tmp_path / "sweeps" / "cut" / "sweep.json").write_text('{"id": "cut", "jobs": {')
    assert "is damaged" in one_line_error(sage(["status", "cut"], tmp_path))
    listing = sage(["status"], tmp_path)
    assert listing.returncode == 0 and "skipped:" in listing.stderr


# ------------------------------------------------------------------------------------ C. stores away


def _readers(tmp_path, uri):
    """`sage report`, `status` and `export` against ``uri``, each within a hang guard."""
    state = SweepState("s-away", "s", uri, "e", launcher="local", jobs={"h1": JobRecord("h1", "job", "r.json")})
    os.environ["SAGE_SWEEPS"] = str(tmp_path / "sweeps")
    try:
        state.save()
    finally:
        os.environ.pop("SAGE_SWEEPS", None)
    env = {"MLFLOW_TRACKING_URI": uri}
    return [sage(["report"], tmp_path, env=env, timeout=60), sage(["status", "s-away"], tmp_path, env=env, timeout=60),
            sage(["export", "--domainbed", str(tmp_path / "db")], tmp_path, env=env, timeout=60)]


def test_every_reader_gives_up_on_a_stopped_server_in_one_line_and_works_once_it_is_back(tmp_path):
    store = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(store, tmp_path) as url:
        assert sage(["run", QUICKSTART, "--set", "training.steps=2", "--set", "training.checkpoint_freq=1"],
                    tmp_path, env={"MLFLOW_TRACKING_URI": url}).returncode == 0
    for result in _readers(tmp_path, url):  # stopped: nothing listens on its port any more
        assert "cannot reach the MLflow server" in one_line_error(result)
    port = int(url.rsplit(":", 1)[1])
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            back = sage(["report", "--experiment", "quickstart"], tmp_path, env={"MLFLOW_TRACKING_URI": url})
            if back.returncode == 0:
                break
            time.sleep(1)
        assert back.returncode == 0 and "rotated_digits" in back.stdout, back.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


class _Failing(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _fail(self):
        body = b'{"error_code": "INTERNAL_ERROR", "message": "database is on fire"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _fail


def test_a_server_answering_http_500_is_one_line_for_writers_and_readers(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        run = sage(["run", QUICKSTART, "--set", "training.steps=2"], tmp_path, env={"MLFLOW_TRACKING_URI": url},
                   timeout=120)
        assert "answers HTTP 500" in one_line_error(run) and not (tmp_path / "runs").exists()
        for result in _readers(tmp_path, url):
            assert "answers HTTP 500" in one_line_error(result)
    finally:
        server.shutdown()


def test_a_sqlite_store_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store'}"
    run = sage(["run", QUICKSTART, "--set", "training.steps=2"], tmp_path, env={"MLFLOW_TRACKING_URI": uri},
               timeout=60)
    assert "names a folder, not a database file" in one_line_error(run)
    assert "names a folder" in one_line_error(report(tmp_path, uri))


# --------------------------------------------------------------------- D. one line, nothing left


def test_nan_infinite_and_missing_accuracies_leave_checkpoints_out_in_every_format(tmp_path):
    nan, inf = float("nan"), float("inf")
    missing = accs(.5, .5, out=(.5, .5))
    del missing["env0_in_acc"]  # a run without its held-out accuracy
    uri = store_with(tmp_path, ("A", [(0, accs(nan, inf, out=(nan, .5))), (100, accs(.6, .55, out=(.7, .6)))]),
                     ("B", [(0, missing)]), ("C", [(0, accs(inf, .5, out=(.9, .9)))]))
    for fmt in ("text", "md", "latex", "csv", "json", "html"):
        out = report(tmp_path, uri, "--format", fmt, "--selection", "all")
        assert out.returncode == 0 and "Traceback" not in out.stderr, (fmt, out.stderr[-1500:])
        if fmt == "json":
            data = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))
            a = [r for r in data["dg"] if (r["method"], r["test_env"], r["selection"]) == ("A", 0, "training")]
            assert a[0]["mean"] == pytest.approx(60.0) and a[0]["n"] == 1  # the finite checkpoint chosen
            assert all(r["mean"] is None or math.isfinite(r["mean"]) for r in data["dg"])
    text = report(tmp_path, uri, "--format", "md").stdout
    assert "3 checkpoint(s) of 3 finished run(s) left out of model selection" in text, text


def test_bad_domainbed_rows_are_skipped_with_a_count(tmp_path):
    folder = tmp_path / "db"
    good = {"args": {"dataset": "PACS", "algorithm": "ERM", "test_envs": [0], "trial_seed": 0, "hparams_seed": 0},
            "step": 0, **{f"env{i}_{s}_acc": 0.5 for i in range(4) for s in ("in", "out")}}
    for name, text in {"a": json.dumps(good) + "\n" + json.dumps(good)[:30],  # a cut line
                       "b": json.dumps({k: v for k, v in good.items() if k != "args"}) + "\n",  # no args
                       "c": json.dumps({**good, "step": "ten"}) + "\n" + json.dumps({**good, "env0_in_acc": "x"}) + "\n",
                       "d": json.dumps({**good, "args": {**good["args"], "test_envs": "zero"}}) + "\n"}.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "results.jsonl").write_text(text)
        (folder / name / "done").touch()
    out = sage(["report", "--from-domainbed", str(folder), "--format", "json"], tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert ("skipped 1 cut or unreadable lines, 2 runs without usable args, 1 rows without a numeric step, 1 rows "
            "with a non-numeric accuracy") in out.stderr
    assert json.loads(out.stdout)["runs"] == 1


def test_from_domainbed_with_a_store_option_is_refused(tmp_path):
    (tmp_path / "db").mkdir()
    for option in (["--experiment", "x"], ["--tracking-uri", "sqlite:///m.db"]):
        line = one_line_error(sage(["report", "--from-domainbed", str(tmp_path / "db"), *option], tmp_path))
        assert "does not apply to it" in line


def test_read_only_output_folders_are_one_line(tmp_path):
    uri = store_with(tmp_path, ("A", [(0, accs(.6, .5, out=(.7, .6)))]))
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as ro:
        assert "cannot write there" in one_line_error(report(tmp_path, uri, "--out", str(ro / "report")))
        export = sage(["export", "--domainbed", str(ro / "db"), "--experiment", "x"], tmp_path,
                      env={"MLFLOW_TRACKING_URI": uri})
        assert "cannot write there" in one_line_error(export)


def test_a_recipe_name_too_long_for_the_file_system_is_one_line(tmp_path):
    line = one_line_error(sage(["validate", str(tmp_path / ("r" * 300 + ".yaml"))], tmp_path))
    assert "cannot read the recipe file (File name too long)" in line


@pytest.mark.parametrize("size", [["0", "0"], ["-3", "224"], ["224", "100000"]])
def test_bench_image_sizes_out_of_range_are_one_line(tmp_path, size):
    assert "--image-size" in one_line_error(sage(["bench", "--image-size", *size], tmp_path))


# -------------------------------------------------------------------------------- recipes, plans


def _bomb(kind: str) -> str:
    if kind == "list":
        text, prev = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n', "a"
        for n in "bcdefghi":
            text, prev = text + f"{n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]\n", n
        return text
    text, prev = "a: &a {x: 1, y: 2}\n", "a"
    for n in "bcdefghijklmnopqrstuvwxyz":
        text, prev = text + f"{n}: &{n} {{p: *{prev}, q: *{prev}}}\n", n
    return text


@pytest.mark.parametrize("text, message", [
    (_bomb("list"), "aliases expand to over"),
    (_bomb("map"), "aliases expand to over"),
    ("x: &x [*x]\n", "recursive YAML"),
    (None, "not a text file"),
    ("training:\n  seed: 1180591620717411303424\n", "training.seed"),
    ("dataset:\n  test_envs: [5, 5]\n", "listed twice"),
])
def test_hostile_recipes_are_one_line(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    if text is None:
        path.write_bytes(bytes(range(256)) * 4)  # binary garbage
    else:
        path.write_text(text)
    assert message in one_line_error(sage(["validate", str(path)], tmp_path, timeout=60))


def test_empty_value_lists_are_one_line(tmp_path):
    assert "no value given" in one_line_error(sage(["ablate", QUICKSTART, "--rho", ","], tmp_path))
    exp = tmp_path / "e.yaml"
    exp.write_text(f"recipes: [{QUICKSTART}]\ngrid:\n  optimizer.rho: []\n")
    assert "non-empty list" in one_line_error(sage(["sweep", str(exp), "--dry-run"], tmp_path))
    exp.write_text(f"recipes: [{QUICKSTART}]\nseeds: []\n")
    assert "empty list plans no job" in one_line_error(sage(["sweep", str(exp), "--dry-run"], tmp_path))


def test_output_dir_in_the_home_folder_means_the_home_folder(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = sage(["run", QUICKSTART, "--set", "training.steps=2", "--set", "training.checkpoint_freq=1",
                 "--set", "training.output_dir=~/sage-runs"], tmp_path,
                env={"HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert done.returncode == 0, done.stderr[-1500:]
    assert (home / "sage-runs").is_dir() and not (tmp_path / "~").exists()


# ---------------------------------------------------------------------------------- E. formats


def test_latex_compiles_and_markdown_keeps_its_columns_whatever_the_labels(tmp_path):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None and not os.environ.get("CI"):
        pytest.skip("needs pdflatex (Debian's texlive-latex-base; .ci/run installs it, in CI this never skips)")
    assert pdflatex, "pdflatex missing in CI: .ci/run installs texlive-latex-base and texlive-latex-recommended"
    label = r"$x^2$ {a} ~b_c & 50% #1 \cmd | é ∑"
    rows = [(0, accs(.6, .5, out=(.7, .6))), (100, accs(.65, .5, out=(.8, .6)))]
    uri = store_with(tmp_path, (label, rows), ("plain", rows))
    md = report(tmp_path, uri, "--format", "md").stdout
    tables = [block.splitlines() for block in md.split("\n\n") if block.startswith("| method")]
    assert tables and all(len({line.replace("\\|", "").count("|") for line in t}) == 1 for t in tables), tables
    tex = report(tmp_path, uri, "--format", "latex", "--selection", "all")
    assert tex.returncode == 0
    (tmp_path / "tables.tex").write_text(tex.stdout)
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                                        "\\input{tables.tex}\n\\end{document}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
