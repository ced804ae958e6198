"""A sweep's folder, ``<sweeps dir>/<sweep id>/``: sweep.json (jobs, launcher, scheduler ids), each job's
resolved recipe, and logs. ``sage status``, ``cancel`` and ``logs`` read it back."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def sweeps_dir() -> Path:
    return Path(os.environ.get("SAGE_SWEEPS", "sweeps")).resolve()


@dataclass
class JobRecord:
    hash: str
    label: str
    recipe_path: str
    launcher: str = ""
    scheduler_id: str = ""  # SLURM "<array>_<task>", or the local process id
    log_path: str = ""
    status: str = ""  # the launcher's own word: finished / failed / cancelled / skipped
    cancelled: bool = False


@dataclass
class SweepState:
    id: str
    name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str = ""
    launcher: str = ""
    jobs: dict[str, JobRecord] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return sweeps_dir() / self.id

    def job_environment(self) -> dict[str, str]:
        """What a job's process needs to tie its MLflow run to this sweep."""
        return {"SAGE_SWEEP_ID": self.id, "SAGE_PARENT_RUN_ID": self.parent_run_id}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "sweep.json.tmp"
        data = {**asdict(self), "jobs": {h: asdict(j) for h, j in self.jobs.items()}}
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.dir / "sweep.json")

    @classmethod
    def load(cls, sweep: str) -> SweepState:
        from ..errors import UserError

        path = sweeps_dir() / sweep / "sweep.json"
        if not path.is_file():
            matches = sorted(p.parent.name for p in sweeps_dir().glob(f"{sweep}*/sweep.json"))
            if len(matches) != 1:
                known = ", ".join(p.parent.name for p in sorted(sweeps_dir().glob("*/sweep.json"))) or "none"
                raise UserError(f"no sweep '{sweep}' under {sweeps_dir()} (known: {known})")
            path = sweeps_dir() / matches[0] / "sweep.json"
        data = json.loads(path.read_text())
        jobs = {h: JobRecord(**j) for h, j in data.pop("jobs").items()}
        return cls(**data, jobs=jobs)


def all_sweeps() -> list[SweepState]:
    states = []
    for path in sorted(sweeps_dir().glob("*/sweep.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        states.append(SweepState.load(path.parent.name))
    return states
