"""DomainBed interoperability: ``sage export --domainbed DIR`` writes one folder per finished run, each with
DomainBed's ``results.jsonl`` (one row per checkpoint) and an empty ``done``, so that DomainBed's own
``python -m domainbed.scripts.collect_results --input_dir DIR`` reads sage's runs; ``sage report
--from-domainbed DIR`` reads such a folder (``runs.from_domainbed``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .dg import hparams_seeds
from .runs import Run, domainbed_names

ROW_KEYS = ("step", "epoch", "loss", "step_time")


def _typed(value: str):
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def domainbed_rows(run: Run, hparams_seed: int, rows: list[dict]) -> list[dict]:
    """``rows`` (sage's results.jsonl of ``run``) with DomainBed's ``args`` and ``hparams``."""
    holdout = _typed(run.params.get("dataset.holdout_fraction", "0.2"))
    args = {"dataset": domainbed_names().get(run.dataset, run.dataset), "algorithm": run.label,
            "test_envs": list(run.test_envs), "trial_seed": run.trial_seed, "hparams_seed": hparams_seed,
            "seed": run.trial_seed, "holdout_fraction": holdout, "output_dir": run.run_id}
    hparams = {k: _typed(v) for k, v in sorted(run.params.items())}
    out = []
    for row in rows:
        metrics = {k: v for k, v in row.items() if k.startswith("env") and k.endswith("_acc")}
        out.append({"args": args, "hparams": hparams, **{k: row.get(k) for k in ROW_KEYS}, **metrics})
    return out


def _artifact_rows(uri: str, run: Run) -> list[dict]:
    """The run's results.jsonl artifact (every checkpoint's row, with epoch and loss)."""
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = MlflowClient(tracking_uri=uri).download_artifacts(run.run_id, "results.jsonl", tmp)
        except Exception:  # an older run without the artifact: its metrics are the rows
            return [dict(r, epoch=None) for r in run.rows]
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def export(uri: str, runs: list[Run], directory: Path) -> int:
    """Write the finished DG runs; returns how many."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--domainbed {directory}: cannot create it ({exc.strerror})") from None
    finished = [r for r in runs if r.status == "FINISHED" and r.kind == "dg"]
    seeds = hparams_seeds(finished)
    for run in finished:
        folder = directory / run.run_id
        folder.mkdir(exist_ok=True)
        rows = domainbed_rows(run, seeds[run.run_id], _artifact_rows(uri, run))
        tmp = folder / "results.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        tmp.replace(folder / "results.jsonl")
        (folder / "done").touch()
    return len(finished)
