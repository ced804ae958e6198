"""Ctrl-C at the worst moments: in a finalizer, while an MLflow run is being created, while a job process is
being started. The first Ctrl-C is a request obeyed at a safe point; it is never lost."""

import os
import signal
from pathlib import Path

import pytest

from sage_cli.interrupts import InterruptGuard

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def _interrupt_self():
    os.kill(os.getpid(), signal.SIGINT)


def test_first_ctrl_c_is_a_request_second_raises_at_once():
    with InterruptGuard() as interrupts:
        interrupts.check()  # nothing pressed: nothing raised
        _interrupt_self()
        sum(range(1000))  # the signal is handled here: recorded, not raised
        assert interrupts.presses == 1
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):
            _interrupt_self()
            sum(range(1000))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _InterruptedFinalizer:
    def __del__(self):
        _interrupt_self()
        sum(range(1000))  # without the guard a KeyboardInterrupt is raised here, inside __del__, and ignored


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_that_lands_in_a_finalizer_is_not_lost():
    """What made CI flaky: SQLAlchemy's weakref callback ate the Ctrl-C and training went on."""
    _InterruptedFinalizer()  # unguarded: the interrupt vanishes and the program goes on
    with InterruptGuard() as interrupts:
        _InterruptedFinalizer()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptGuard() as interrupts:
            _interrupt_self()
            sum(range(1000))
            interrupts.check()
            assert interrupts.presses == 0
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_the_mlflow_run_is_created_marks_it_killed(tmp_path, monkeypatch):
    """The race CI once hit: the run exists (RUNNING) but the try that marks it KILLED was not entered yet."""
    from mlflow.tracking import MlflowClient

    from sage_cli.recipe import load_recipe
    from sage_cli.train import runner

    created = runner.MlflowRun

    class InterruptedRightAfterCreation(created):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _interrupt_self()

    monkeypatch.setattr(runner, "MlflowRun", InterruptedRightAfterCreation)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(QUICKSTART, {"training.steps": 5, "training.output_dir": str(tmp_path / "runs"),
                                      "tracking.uri": uri})
    with pytest.raises(KeyboardInterrupt):
        runner.run_recipe(recipe)
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["KILLED"]


def test_ctrl_c_while_a_job_process_starts_stops_that_job(tmp_path, monkeypatch):
    """The local launcher's other window: the process exists but is not yet where Ctrl-C looks for it."""
    import subprocess
    import sys

    from rich.console import Console

    from sage_cli.launch import local
    from sage_cli.launch.state import JobRecord, SweepState

    monkeypatch.setenv("SAGE_SWEEPS", str(tmp_path))
    started = []

    def start_then_interrupt(state, job, threads, gpu=None):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        started.append(proc)
        _interrupt_self()  # Ctrl-C before the launcher has recorded the process
        return proc

    monkeypatch.setattr(local, "_start", start_then_interrupt)
    jobs = [JobRecord(hash=f"h{i}", label=f"job {i}", recipe_path="unused.yaml") for i in range(2)]
    state = SweepState(id="s", name="s", tracking_uri="", experiment="e", jobs={j.hash: j for j in jobs})
    try:
        with pytest.raises(KeyboardInterrupt):
            local.run_local(state, jobs, max_parallel=1, console=Console(quiet=True))
        assert len(started) == 1  # the second job never started
        assert started[0].poll() == -signal.SIGTERM  # the started one was stopped, not left running
        assert [j.status for j in jobs] == ["cancelled", "cancelled"]
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
