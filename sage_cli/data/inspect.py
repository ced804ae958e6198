"""``sage datasets``: what is on disk under a data root (DomainBed's folders, the MTL ``.npy`` layouts), and
what is wrong where."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import folder_cards
from .domainbed import scan, verify_images
from .layouts import DENSE, SPLITS, check_split


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


def inspect_root(root: Path, verify: bool = False, names=None) -> list[DatasetReport]:
    """One report per dataset (those in ``names``, or all)."""
    reports = []
    for spec in folder_cards():
        name = spec.name
        if names is not None and name not in names:
            continue
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
    for name, spec in DENSE.items():  # the MTL .npy layouts, at root/<name>
        if names is not None and name not in names:
            continue
        base = root / name
        report = DatasetReport(name, base, base.is_dir(), n_classes=spec.n_classes, expected_classes=spec.n_classes)
        if report.present:
            for split in SPLITS:
                report.envs[split], problems = check_split(base / split, spec)
                report.problems += problems
        reports.append(report)
    return reports


def inspect_one(root: Path, name: str) -> DatasetReport:
    return inspect_root(root, names=(name,))[0]
