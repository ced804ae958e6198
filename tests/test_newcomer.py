"""A new user's afternoon, end to end: a run, then a small sweep that reuses it, cancelled mid-way and run
again (the cancelled job resumes), `sage status`, `sage report` in all six formats, the LaTeX compiled by
pdflatex, the HTML opened in headless Chromium, and every cell carrying its n in agreement with `sage status`.
Real processes, a real sqlite store, real pdflatex and Chromium (.ci/run installs both; elsewhere the test
skips without them)."""

import json
import os
import shutil
import subprocess

import pytest
from sweep_helpers import QUICKSTART, child_runs, sage, start_sweep, wait_for_running_job

SHORT = {"training.steps": 40, "training.checkpoint_freq": 10}

needs_tools = pytest.mark.skipif(
    (shutil.which("pdflatex") is None or shutil.which("chromium") is None) and not os.environ.get("CI"),
    reason="needs pdflatex and chromium (.ci/run installs both; in CI this test never skips)")


@needs_tools
def test_a_newcomers_sweep_from_first_run_to_a_compiled_report(tmp_path):
    sets = [x for k, v in SHORT.items() for x in ("--set", f"{k}={v}")]
    first = sage(["run", QUICKSTART, *sets, "--set", "optimizer.method=erm"], tmp_path)
    assert first.returncode == 0, first.stderr
    exp = tmp_path / "study.yaml"
    exp.write_text(f"name: study\nrecipes: [{QUICKSTART}]\nmethods:\n  ERM: {{optimizer.method: erm}}\n"
                   "  SAGE: {optimizer.method: sage}\n"
                   f"overrides: {json.dumps(SHORT)}\nseeds: [0, 1]\ntest_envs: [5]\n")

    # each job waits 20 s after its first checkpoint: the cancel lands while one runs, however fast a 40-step
    # job is (without it, a job could finish between being seen RUNNING and the cancel)
    proc, uri = start_sweep(tmp_path, "sweep", str(exp), "--max-parallel", "1",
                            env={"SAGE_PAUSE_AT": "checkpoint@0:20"})
    try:
        wait_for_running_job(tmp_path, uri)
        cancel = sage(["cancel", "study"], tmp_path)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cancel.returncode == 0 and proc.returncode == 1 and "did not finish" in err, out + err
    assert "4 jobs (3 to run, 1 already finished)" in out
    killed = [r for r in child_runs(uri)[1] if r.info.status == "KILLED"]
    assert len(killed) == 1

    again = sage(["sweep", str(exp)], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = child_runs(uri)[0].get_run(killed[0].info.run_id)
    assert resumed.info.status == "FINISHED" and "sage.resumed_from_step" in resumed.data.tags  # same run, resumed
    status = sage(["status", "study"], tmp_path, env={"COLUMNS": "200"})
    assert status.stdout.strip().splitlines()[-1] == "4 finished"

    report = sage(["report", "study", "--out", "report"], tmp_path)
    assert report.returncode == 0, report.stderr
    out_dir = tmp_path / "report"
    for name in ("report.txt", "report.md", "report.tex", "report.csv", "report.json", "report.html"):
        assert (out_dir / name).stat().st_size > 200, name
    data = json.loads((out_dir / "report.json").read_text())
    cells = {r["method"]: r for r in data["dg"] if r["test_env"] == 5}
    assert {m: c["n"] for m, c in cells.items()} == {"ERM": 2, "SAGE": 2}  # as `sage status`: 2 seeds each
    assert all(c["n"] for t in data["tables"] for r in t["rows"] for c in r["cells"] if c["mean"] is not None
               and t["key"].startswith("dg-training-rotated"))
    assert "n = 2 trial seeds per cell" in (out_dir / "report.md").read_text()

    (out_dir / "paper.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                                       "\\input{report.tex}\n\\end{document}\n")
    latex = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=out_dir,
                           capture_output=True, text=True, timeout=120)
    assert latex.returncode == 0, latex.stdout[-3000:]

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", (out_dir / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table>") >= 2 and dom.count("<img") >= 2 and "ERM" in dom and "SAGE" in dom
