"""The MLflow store, checked before a run exists, and created once under a lock.

``check_store`` answers within seconds: an unreachable server, a store path that cannot be written, or a
file that is not an SQLite database is one ``UserError``, before any run or training starts (an unreachable
server otherwise costs minutes of MLflow's retries; a garbage ``mlflow.db`` a traceback). ``store_lock``
serialises the first creation of an sqlite store and its experiments across processes (fcntl on
``<db>.lock``): two first runs at once otherwise race in MLflow's schema migration and can leave the store
broken (``_alembic_tmp_experiments already exists``).
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError
from ..filesystem import write_problem

TIMEOUT_S = 5


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_store(uri: str, read_only: bool = False) -> None:
    """One ``UserError`` when ``uri`` cannot be used now (``read_only``: by a reader, which writes nothing)."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        return
    db = sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise UserError(f"the MLflow store {uri} names a folder, not a database file: give the path of a "
                            "file (e.g. sqlite:///mlflow.db)")
        if not read_only:
            _check_writable(db.parent, f"cannot write the MLflow store {uri}")
        if db.is_file() and db.stat().st_size:
            with open(db, "rb") as f:
                if f.read(16) != SQLITE_HEADER:
                    raise UserError(f"{db} is not an MLflow store (not an SQLite database): move it away, or "
                                    "set MLFLOW_TRACKING_URI to another store")
        return
    if uri.startswith("file:") or "://" not in uri:  # a file store folder
        _check_writable(Path(uri.removeprefix("file://").removeprefix("file:")), f"cannot write the MLflow store {uri}")


def fail_fast_requests() -> None:
    """MLflow's HTTP client retries for minutes by default; a server that is away should fail a write at once
    (the write is then kept, see ``spool.py``), and a reader should say so at once."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def server_unreachable(uri: str) -> bool:
    """Whether ``uri`` is a server that does not answer now (sqlite and file stores never are)."""
    if not uri.startswith(("http://", "https://")):
        return False
    try:
        _check_server(uri)
    except UserError:
        return True
    return False


def _check_server(uri: str) -> None:
    for route in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + route, timeout=TIMEOUT_S):
                return
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise UserError(f"the MLflow server at {uri} answers HTTP {exc.code} ({exc.reason}) to {route}: it "
                                "is up but failing; see its log, or set MLFLOW_TRACKING_URI to another store") from None
            continue  # it answers: reachable (the next route, or MLflow itself, will say more)
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"cannot reach the MLflow server at {uri} ({getattr(exc, 'reason', exc)}); start it, "
                            "or set MLFLOW_TRACKING_URI / --tracking-uri to a store that is up") from None


def _check_writable(folder: Path, what: str) -> None:
    problem = write_problem(folder)
    if problem:
        raise UserError(f"{what}: {folder} is not writable ({problem})")


@contextlib.contextmanager
def store_lock(uri: str):
    """Exclusive across processes for an sqlite store; nothing to hold for others."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from ..filesystem import file_lock

    with file_lock(db.with_name(db.name + ".lock")):
        yield
