"""``sage datasets download``: archives → the layout ``sage datasets`` checks, atomically.

Per dataset: the archives are fetched into ``ROOT/.sage-downloads/`` (resumable, see :mod:`.fetch`),
extracted into a scratch folder there, arranged into the dataset's folder under a temporary name, checked
with the same code as ``sage datasets``, and only then renamed into place (one ``rename`` on one file
system). An interrupted download therefore never leaves a folder that ``sage datasets`` would accept, and
running the command again resumes the archives and skips every dataset that is complete.

``SAGE_DOWNLOAD_MIRROR=URL`` fetches each archive from ``URL/<archive name>`` instead of its source and
verifies it against ``URL/SHA256SUMS`` where the mirror has one (GNU ``sha256sum`` or BSD ``SHA256 (f) = h``).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..filesystem import write_problem
from .fetch import Archive, FetchError, fetch, mirror, read_text, remote_size, sha256_of
from .inspect import inspect_one
from .sources import Source, sources

DOWNLOADS = ".sage-downloads"
MANIFEST = "manifest.json"
EXTRACT_FACTOR = 1.1  # the extracted images take about what their (already compressed) archives take


@dataclass
class Plan:
    name: str
    source: Source
    urls: dict[str, str]  # archive name -> where it is fetched from
    checksums: dict[str, str] = field(default_factory=dict)  # archive name -> published SHA-256
    sizes: dict[str, int | None] = field(default_factory=dict)


# the two formats mirrors publish: GNU ``sha256sum`` ("HEX  NAME", "HEX *NAME" for binary mode) and BSD/``shasum
# --tag`` ("SHA256 (NAME) = HEX")
GNU_SUM = re.compile(r"(?P<hex>[0-9a-fA-F]{64}) [ *](?P<name>.+)")
BSD_SUM = re.compile(r"SHA256 \((?P<name>.+)\) ?= ?(?P<hex>[0-9a-fA-F]{64})")


def parse_checksums(text: str, where: str) -> dict[str, str]:
    """archive name -> SHA-256 from a ``SHA256SUMS`` file in either format. A line that is neither is an error:
    skipping it would leave its archive checked by size alone, without a word."""
    sums = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = GNU_SUM.fullmatch(line) or BSD_SUM.fullmatch(line)
        if found is None:
            raise UserError(f"{where} line {n} is not a SHA-256 checksum line (neither `HEX  NAME` nor "
                            f"`SHA256 (NAME) = HEX`): {line[:80]!r}")
        sums[found["name"].strip()] = found["hex"].lower()
    return sums


def mirror_checksums(base: str) -> dict[str, str]:
    return parse_checksums(read_text(f"{base}/SHA256SUMS") or "", f"{base}/SHA256SUMS")


def writable_root(root: Path) -> Path:
    """``root``, created if needed, after a real write into it (permission bits say nothing to root)."""
    problem = write_problem(root / DOWNLOADS)
    if problem:
        raise UserError(f"cannot write to the data root {root}: {problem}")
    return root


def plan(names: list[str]) -> list[Plan]:
    known = sources()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown dataset '{unknown[0]}'; downloadable: {', '.join(known)}")
    base = mirror()
    checksums = mirror_checksums(base) if base else {}
    plans = []
    for name in dict.fromkeys(names):  # once each, in the order given
        source = known[name]
        urls = {a.name: (f"{base}/{a.name}" if base else a.url) for a in source.archives}
        plans.append(Plan(name, source, urls, {a.name: checksums[a.name] for a in source.archives
                                               if a.name in checksums}))
    return plans


def check_space(root: Path, plans: list[Plan]) -> None:
    """Refuse before downloading anything when the archives and their contents would not fit."""
    folder = root / DOWNLOADS
    needed = 0
    for p in plans:
        for a in p.source.archives:
            if (folder / a.name).is_file():
                size = (folder / a.name).stat().st_size
                p.sizes[a.name] = size
                needed += int(size * EXTRACT_FACTOR)
                continue
            size = remote_size(p.urls[a.name], p.name) or a.size or 0
            p.sizes[a.name] = size
            part = folder / (a.name + ".part")
            needed += size - (part.stat().st_size if part.is_file() else 0) + int(size * EXTRACT_FACTOR)
    free = shutil.disk_usage(folder).free
    if needed > free:
        what = ", ".join(p.name for p in plans)
        raise UserError(f"not enough disk space under {root} for {what}: about {needed / 1e9:.1f} GB needed "
                        f"(archives and their contents), {free / 1e9:.1f} GB free")


def declared_size(archive: Path) -> int:
    """The bytes an archive's members declare they expand to (a zip's central directory, a tar's headers)."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            return sum(i.file_size for i in z.infolist())
    with tarfile.open(archive) as t:
        return sum(m.size for m in t.getmembers() if m.isfile())


def extract(archive: Path, into: Path) -> None:
    """Extract ``archive`` into ``into`` once its declared size fits the free space; a failed extraction (a
    full disk all the same, a broken archive) is removed, never left filling the disk."""
    try:
        needed, free = declared_size(archive), shutil.disk_usage(into).free
        if needed > free:
            shutil.rmtree(into, ignore_errors=True)
            raise UserError(f"{archive.name} expands to {needed / 1e9:.2f} GB and {into} has {free / 1e9:.2f} GB "
                            "free; free some space and run the command again (the archive is kept)")
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(into)  # zipfile drops absolute and ../ parts of member names
        else:
            with tarfile.open(archive) as t:
                t.extractall(into, filter="data")  # no links out of the folder, no device files
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        archive.unlink()
        raise UserError(f"{archive.name} is not a readable archive ({type(exc).__name__}); it was removed, "
                        "run the command again to fetch it anew") from None
    except OSError as exc:  # the disk filled all the same (another writer, a lying header)
        shutil.rmtree(into, ignore_errors=True)
        raise UserError(f"extracting {archive.name} into {into} failed ({exc.strerror or exc}); the partial "
                        "extraction was removed, the archive is kept: run the command again") from None


def _record(root: Path, name: str, entry: dict) -> None:
    path = root / DOWNLOADS / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def install(root: Path, p: Plan, progress, notice: Callable[[str], None], keep_archives: bool = False) -> Path:
    """Fetch, extract, arrange, check and move one dataset into ``root``; its final folder."""
    folder = root / DOWNLOADS
    files = []
    for a in p.source.archives:
        task = progress.add_task(a.name, total=p.sizes.get(a.name) or None)
        files.append(fetch(a, p.urls[a.name], folder, p.name, p.checksums.get(a.name),
                           on_start=lambda total, done, t=task: progress.update(t, total=total, completed=done),
                           on_bytes=lambda n, t=task: progress.advance(t, n), notice=notice))
        done = files[-1].stat().st_size
        progress.update(task, total=done, completed=done)
    scratch, staged = folder / f"{p.name}.extract", folder / f"{p.name}.staged"
    for leftover in (scratch, staged):  # from an earlier attempt that was interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    scratch.mkdir()
    for file in files:
        extract(file, scratch)
    p.source.arrange(scratch, staged, p.source.names)
    final = root / p.source.directory
    report = _check_staged(staged, p.name)
    if report:
        shutil.rmtree(staged, ignore_errors=True)
        raise UserError(f"{p.name}: the downloaded archives do not give DomainBed's layout ({report}); nothing was "
                        "installed")
    old = None
    if final.exists():
        old = folder / f"{p.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(scratch, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _record(root, p.name, {
        "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "archives": [{"name": a.name, "url": p.urls[a.name], "bytes": (folder / a.name).stat().st_size,
                      "sha256": sha256_of(folder / a.name),
                      "verified": "sha256" if a.name in p.checksums or a.sha256 else "size"}
                     for a in p.source.archives],
    })
    if not keep_archives:
        for a in p.source.archives:
            (folder / a.name).unlink(missing_ok=True)
    return final


def _check_staged(staged: Path, name: str) -> str:
    """The first problem ``sage datasets`` would find in ``staged`` (checked under a link with the final name
    so the very same inspection code runs), or ''."""
    probe = staged.parent / f"{name}.check"
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir()
    try:
        (probe / sources()[name].directory).symlink_to(staged, target_is_directory=True)
        report = inspect_one(probe, name)
        if not report.present:
            return "no dataset folder"
        return report.problems[0] if report.problems else ""
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def status_of(root: Path, name: str) -> str:
    """'complete', 'absent', or the first problem of what is there."""
    report = inspect_one(root, name)
    if not report.present:
        return "absent"
    return report.problems[0] if report.problems else "complete"


def fetch_command(name: str, root: Path) -> str:
    return f"sage datasets download {name} --root {root}"


__all__ = ["Archive", "FetchError", "Plan", "check_space", "install", "plan", "status_of", "writable_root"]
