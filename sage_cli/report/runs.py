"""What a report reads: the runs of a store (or a DomainBed output folder), each with its checkpoint rows.

A sqlite store is read with SQL directly (a thousand runs of twenty checkpoints in well under a second); any
other tracking URI through MLflow's client, one metric history request per run and key (in parallel).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


def domainbed_names() -> dict[str, str]:
    """sage's dataset name → DomainBed's (the cards'), for the datasets both tools know."""
    from ..catalog import folder_cards

    return {c.name: c.domainbed_name for c in folder_cards() if c.domainbed_name}


@dataclass
class Run:
    run_id: str
    status: str  # FINISHED, FAILED, RUNNING, KILLED, …
    dataset: str
    kind: str  # dg | mtl
    label: str  # the row label
    hparams: str  # what model selection chooses between (DomainBed's hparams_seed, as a key)
    trial_seed: int
    test_envs: tuple[int, ...]
    sweep: str = ""
    recipe_hash: str = ""
    start_time: int = 0
    params: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # per checkpoint: step and metrics, in step order
    final: dict[str, float] = field(default_factory=dict)  # the run's final_* metrics (MTL)
    draw: int | None = None  # a random search's draw index (0: the recipe's values)
    searched: tuple[str, ...] = ()  # the settings that search drew (dotted keys)
    pruned_at: int | None = None  # the step a search's early stopping stopped it at
    steps_saved: int = 0  # the steps that stop saved


DIAG_CURVES = ("diag_curvature_trace", "diag_alignment_trace")  # Theorem 1's terms, with diagnostics.every


def _wanted(key: str) -> bool:
    """The per-checkpoint metrics a report reads."""
    return (key.startswith("env") and key.endswith("_acc") or key in ("target_alignment", "loss", "step_time", "merged_out_acc")
            or key in DIAG_CURVES)


def _run(run_id, status, tags, params, start_time=0) -> Run | None:
    if "sage.dataset" not in tags or tags.get("sage.sweep_parent") == "true":
        return None
    envs = tags.get("sage.test_envs", "")
    kind = tags.get("sage.kind") or ("mtl" if not envs or "aggregator.name" in params else "dg")
    run = Run(run_id, status, tags["sage.dataset"], kind, tags.get("sage.label") or tags.get("sage.method", "?"),
              tags.get("sage.hparams_hash") or tags.get("sage.recipe_hash", run_id),
              int(tags.get("sage.seed", "0")),
              tuple(int(e) for e in envs.split(",") if e != "") if kind == "dg" else (),
              tags.get("sage.sweep_id", ""), tags.get("sage.recipe_hash", ""), int(start_time or 0), params)
    run.draw = int(tags["sage.draw"]) if tags.get("sage.draw", "").isdigit() else None
    run.pruned_at = int(tags["sage.pruned_at_step"]) if tags.get("sage.pruned") == "true" else None
    run.steps_saved = int(tags.get("sage.pruned_steps_saved", 0))
    run.searched = tuple(k for k in tags.get("sage.searched", "").split(",") if k)
    return run


def _rows(points: dict[int, dict[str, float]]) -> list[dict]:
    return [{"step": step, **values} for step, values in sorted(points.items())]


def from_store(uri: str, sweeps: list[str] | None = None, experiments: list[str] | None = None) -> list[Run]:
    """The runs of the named sweeps (prefixes of their ids), or of the named MLflow experiments; with neither,
    every sweep's runs in the store."""
    from ..track.store import check_store, fail_fast_requests, sqlite_path

    check_store(uri, read_only=True)  # a server that is down: one line within seconds, not minutes of retries
    fail_fast_requests()
    path = sqlite_path(uri)
    runs = _from_sqlite(path, experiments) if path is not None else _from_client(uri, experiments)
    if sweeps or not experiments:
        reused = reused_runs(runs, sweeps)
        runs = [r for r in runs if r.sweep and (not sweeps or any(r.sweep.startswith(s) for s in sweeps))] + reused
        if sweeps and not runs:
            raise UserError(f"no runs of sweep {', '.join(sweeps)} in {uri}")
    return sorted(runs, key=lambda r: (r.start_time, r.run_id))


def reused_runs(runs: list[Run], sweeps: list[str] | None) -> list[Run]:
    """The runs a sweep counts as its jobs without having started them: a job whose identity already had a
    FINISHED run (an earlier `sage run`, another sweep) is skipped by ``sage sweep`` and shown finished by
    ``sage status``; the report takes that run for the job, under the job's row label and the sweep's id, so
    the three agree. Only sweeps whose folder is on this machine can say which jobs they hold."""
    from dataclasses import replace

    from ..launch.state import SweepState, all_sweeps

    states = []
    for sweep in sweeps or []:
        try:
            states.append(SweepState.load(sweep))
        except UserError:
            continue
    states = states if sweeps else all_sweeps()
    finished: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.start_time):  # the newest FINISHED run of an identity
        if run.status == "FINISHED":
            finished[run.recipe_hash] = run
    out = []
    for state in states:
        own = {r.recipe_hash for r in runs if r.sweep == state.id}
        for job in state.jobs.values():
            run = finished.get(job.hash)
            if job.hash in own or run is None or run.sweep == state.id:
                continue
            out.append(replace(run, label=_row_label(job) or run.label, sweep=state.id))
    return out


def _row_label(job) -> str | None:
    """The report row a sweep's job belongs to: the label of its resolved recipe (as its own run would carry)."""
    from ..recipe import load_recipe

    try:
        return load_recipe(job.recipe_path).label
    except UserError:
        return None


def _from_sqlite(path: Path, experiments) -> list[Run]:
    import sqlite3

    if not path.is_file():
        raise UserError(f"no MLflow store at {path}")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            base = ("SELECT r.run_uuid, r.status, r.start_time FROM runs r JOIN experiments e "
                    "ON e.experiment_id = r.experiment_id WHERE r.lifecycle_stage = 'active'")
            if experiments:
                known = {n for (n,) in db.execute("SELECT name FROM experiments")}
                missing = [e for e in experiments if e not in known]
                if missing:
                    raise UserError(f"no experiment {missing[0]!r} in {path} (known: {', '.join(sorted(known))})")
                marks = ",".join("?" * len(experiments))
                found = db.execute(f"{base} AND e.name IN ({marks})", experiments).fetchall()
            else:
                found = db.execute(base).fetchall()
            tags: dict[str, dict] = {}
            for run_id, key, value in db.execute("SELECT run_uuid, key, value FROM tags WHERE key LIKE 'sage.%'"):
                tags.setdefault(run_id, {})[key] = value
            params: dict[str, dict] = {}
            for run_id, key, value in db.execute("SELECT run_uuid, key, value FROM params"):
                params.setdefault(run_id, {})[key] = value
            runs = {}
            for run_id, status, start in found:
                run = _run(run_id, status, tags.get(run_id, {}), params.get(run_id, {}), start)
                if run is not None:
                    runs[run_id] = run
            points: dict[str, dict[int, dict]] = {}
            final: dict[str, dict] = {}
            # the last value logged at each (key, step) wins: a resumed run may log a checkpoint again
            for run_id, key, step, value, is_nan in db.execute(
                    "SELECT run_uuid, key, step, value, is_nan FROM metrics ORDER BY timestamp"):
                if run_id not in runs:
                    continue
                value = _stored(value, is_nan)
                if key.startswith("final_"):
                    final.setdefault(run_id, {})[key[6:]] = value
                elif _wanted(key):
                    points.setdefault(run_id, {}).setdefault(step, {})[key] = value
        except sqlite3.OperationalError as exc:
            raise UserError(f"{path} is not an MLflow store ({exc})") from None
    for run_id, run in runs.items():
        run.rows = _rows(points.get(run_id, {}))
        run.final = final.get(run_id, {})
    return list(runs.values())


def _stored(value: float, is_nan) -> float:
    """A metric as MLflow's SQL store keeps it: NaN as 0.0 with ``is_nan`` set, ±inf as ±float max (what its
    client gives back as NaN and ±inf). Read as 0.0, a diverged run's NaN accuracy would compete as 0 %."""
    if is_nan:
        return math.nan
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


def _from_client(uri: str, experiments) -> list[Run]:
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    known = {e.name: e.experiment_id for e in client.search_experiments()}
    if experiments:
        missing = [e for e in experiments if e not in known]
        if missing:
            raise UserError(f"no experiment {missing[0]!r} in {uri} (known: {', '.join(sorted(known))})")
    ids = [known[e] for e in experiments] if experiments else list(known.values())
    found, token = [], None
    while ids:
        page = client.search_runs(ids, max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    runs = []
    for r in found:
        run = _run(r.info.run_id, r.info.status, r.data.tags, r.data.params, r.info.start_time)
        if run is not None:
            run.final = {k[6:]: v for k, v in r.data.metrics.items() if k.startswith("final_")}
            runs.append((run, [k for k in r.data.metrics if _wanted(k)]))

    if uri.startswith(("http://", "https://")):
        bulk = _bulk_histories(uri, runs)
        if bulk is not None:
            for run, _ in runs:
                run.rows = _rows(bulk.get(run.run_id, {}))
            return [run for run, _ in runs]

    def history(item):
        run, keys = item
        points: dict[int, dict] = {}
        for key in keys:
            for m in client.get_metric_history(run.run_id, key):
                points.setdefault(m.step, {})[key] = m.value
        run.rows = _rows(points)
        return run

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(history, runs))


def _bulk_histories(uri: str, runs) -> dict[str, dict[int, dict]] | None:
    """Every run's metric histories from an MLflow server in one request per 100 runs and key, through the
    endpoint its own UI uses (``/ajax-api/2.0/mlflow/metrics/get-history-bulk``, MLflow 2 and 3). None when the
    server does not answer it: then each history is asked for on its own."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    keys = sorted({k for _, ks in runs for k in ks})
    ids = [run.run_id for run, _ in runs]
    jobs = [(key, ids[i:i + 100]) for key in keys for i in range(0, len(ids), 100)]

    def fetch(job):
        key, chunk = job
        response = http_request(creds, "/ajax-api/2.0/mlflow/metrics/get-history-bulk", "GET",
                                params={"run_id": chunk, "metric_key": key, "max_results": 25000}, max_retries=0)
        if response.status_code != 200:
            raise OSError(response.status_code)
        return key, response.json().get("metrics", [])

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(fetch, jobs))
    except Exception:  # an older server or a proxy without the UI's routes
        return None
    out: dict[str, dict[int, dict]] = {}
    for key, metrics in answers:
        for m in sorted(metrics, key=lambda m: m.get("timestamp", 0)):  # the last value of a step wins
            out.setdefault(m["run_id"], {}).setdefault(int(m.get("step", 0)), {})[key] = m["value"]
    return out


def from_domainbed(directory: str | Path) -> list[Run]:
    """A DomainBed sweep output folder: one sub-folder per run with its results.jsonl (DomainBed's rows)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--from-domainbed {directory}: not a folder")
    runs, bad = [], Counter()
    for sub in sorted(p for p in directory.iterdir() if (p / "results.jsonl").is_file()):
        rows = []
        for line in (sub / "results.jsonl").read_text(errors="replace").splitlines():
            row = _domainbed_row(line) if line.strip() else "blank"
            if isinstance(row, dict):
                rows.append(row)
            elif row != "blank":
                bad[row] += 1
        if not rows:
            continue
        try:
            run = _domainbed_run(sub, rows)
        except (KeyError, TypeError, ValueError, AttributeError):
            bad["runs without usable args"] += 1
            continue
        runs.append(run)
    if bad:
        from ..errors import notice

        notice(f"--from-domainbed {directory}: skipped " + ", ".join(f"{n} {what}" for what, n in bad.items()))
    if not runs:
        raise UserError(f"--from-domainbed {directory}: no sub-folder holds a readable results.jsonl")
    return runs


def _domainbed_row(line: str) -> dict | str:
    """One results.jsonl row with a whole-number step and numeric accuracies, or what is wrong with it."""
    try:
        row = json.loads(line)
    except ValueError:
        return "cut or unreadable lines"
    if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), (int, float)):
        return "rows without a numeric step"
    accs = {k: v for k, v in row.items() if k.startswith("env") and k.endswith("_acc")}
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in accs.values()):
        return "rows with a non-numeric accuracy"
    numeric = {k: v for k, v in row.items() if not _wanted(k) or isinstance(v, (int, float))}  # loss: null
    return {**numeric, "step": int(row["step"])}


def _domainbed_run(sub: Path, rows: list[dict]) -> Run:
    """A run from its rows; the first row's ``args`` (and ``hparams``) say what it was."""
    args = rows[0]["args"]
    status = "FINISHED" if (sub / "done").exists() else "RUNNING"
    dataset = {v: k for k, v in domainbed_names().items()}.get(args["dataset"], args["dataset"])
    hparams = rows[0].get("hparams") or {}
    run = Run(sub.name, status, str(dataset), "dg", str(args["algorithm"]),
              f"{int(args.get('hparams_seed', 0)):08d}", int(args.get("trial_seed", 0)),
              tuple(int(e) for e in args["test_envs"]), params={f"hparams.{k}": str(v) for k, v in hparams.items()})
    run.rows = sorted(({k: v for k, v in r.items() if k == "step" or _wanted(k)} for r in rows),
                      key=lambda r: r["step"])
    return run
