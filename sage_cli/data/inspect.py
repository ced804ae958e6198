"""``sage datasets``: what is on disk under a data root, and what is wrong where."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .domainbed import SPECS, scan, verify_images


@dataclass
class DatasetReport:
    name: str
    path: Path
    present: bool
    envs: dict[str, int] = field(default_factory=dict)  # env -> image count
    n_classes: int = 0
    expected_classes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present and not self.problems


def inspect_root(root: Path, verify: bool = False) -> list[DatasetReport]:
    reports = []
    for name, spec in SPECS.items():
        base = root / spec.directory
        report = DatasetReport(name, base, base.is_dir(), expected_classes=spec.n_classes)
        if report.present:
            found = scan(base, list(spec.envs))
            report.envs = {env: len(s) for env, s in zip(found.envs, found.samples)}
            report.n_classes = len(found.classes)
            report.problems = list(found.problems)
            if verify:
                for env_samples in found.samples:
                    report.problems += [f"unreadable image {p}" for p in verify_images(env_samples)]
        reports.append(report)
    return reports
