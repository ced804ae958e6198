"""A sweep's folder, ``<sweeps dir>/<sweep id>/``: sweep.json (jobs, launcher, scheduler ids), each job's
resolved recipe, and logs. ``sage status``, ``cancel`` and ``logs`` read it back."""

from __future__ import annotations

import json
import os
import re
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
    started: str = ""  # a local job's process start time: with its PID, who may be signalled
    after: str = ""  # the hash of the job it starts from (BOA from SAM): started once that one has finished


@dataclass
class SweepState:
    id: str
    name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str = ""
    launcher: str = ""
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    launched_by: str = ""  # host:pid:start of a blocking (local) launcher: once it is gone, nothing more starts

    @property
    def dir(self) -> Path:
        return sweeps_dir() / self.id

    @property
    def cancel_mark(self) -> Path:
        """Left by `sage cancel` (another process than the launcher): no job of the sweep starts any more. A file
        of its own, because the launcher rewrites sweep.json as its jobs end."""
        return self.dir / "cancelled"

    def job_environment(self) -> dict[str, str]:
        """What a job's process needs to tie its MLflow run to this sweep."""
        return {"SAGE_SWEEP_ID": self.id, "SAGE_PARENT_RUN_ID": self.parent_run_id}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "sweep.json.tmp"
        data = {**asdict(self), "jobs": {h: asdict(j) for h, j in self.jobs.items()}}
        tmp.write_text(json.dumps(data, indent=1))  # jobs in plan order: `sage status` lists them so
        os.replace(tmp, self.dir / "sweep.json")

    @classmethod
    def load(cls, sweep: str) -> SweepState:
        from ..errors import UserError

        check_name(sweep, "sweep id")
        path = sweeps_dir() / sweep / "sweep.json"
        if not path.is_file():
            matches = sorted(p.parent.name for p in sweeps_dir().glob(f"{sweep}*/sweep.json"))
            if len(matches) > 1:
                raise UserError(f"'{sweep}' matches {len(matches)} sweeps ({', '.join(matches[:5])}"
                                f"{', …' if len(matches) > 5 else ''}); give more of the id")
            if len(matches) != 1:
                known = ", ".join(p.parent.name for p in sorted(sweeps_dir().glob("*/sweep.json"))) or "none"
                raise UserError(f"no sweep '{sweep}' under {sweeps_dir()} (known: {known})")
            path = sweeps_dir() / matches[0] / "sweep.json"
        try:
            data = json.loads(path.read_text())
            jobs = {h: JobRecord(**j) for h, j in data.pop("jobs").items()}
            return cls(**data, jobs=jobs)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # cut, edited or not ours
            raise UserError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]}); move the sweep folder "
                            "away, or run its experiment again to rewrite it") from None


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(value: str, what: str) -> str:
    """Ids (sweeps, jobs, runs) are names, never paths: ``../x`` must not read outside the sweeps folder."""
    from ..errors import UserError

    if not NAME.fullmatch(value or ""):
        raise UserError(f"'{value}' is not a {what}: ids are names of letters, digits, '.', '_' and '-' "
                        "(`sage status` lists the sweeps)")
    return value


def all_sweeps(skipped: list[str] | None = None) -> list[SweepState]:
    """Every readable sweep, newest first; a damaged one is named in ``skipped`` instead."""
    from ..errors import UserError

    states = []
    for path in sorted(sweeps_dir().glob("*/sweep.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            states.append(SweepState.load(path.parent.name))
        except UserError as exc:
            if skipped is not None:
                skipped.append(str(exc))
    return states
