"""Writes to an MLflow run that its server could not take, kept in order beside the checkpoint and replayed.

Every write of a run (params, tags, metrics, texts, files, its end) is one JSON line here when the server is
unreachable; training goes on. The next write that reaches the server, the next ``sage run`` of the recipe,
or ``sage sync`` sends them, oldest first, and removes each one sent: nothing is lost, nothing sent twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import notice

SPOOL_NAME = "mlflow-spool.jsonl"
SET_ASIDE_NAME = "mlflow-spool.set-aside.jsonl"  # cut lines and writes the store refused: kept, never resent
MAX_PARAM_LENGTH = 6000  # mlflow truncates longer values (with a warning); keep ours well under


def apply(client, entry: dict) -> None:
    """Carry out one write on ``client``."""
    from mlflow.entities import Metric, Param, RunTag

    run_id, kind, args = entry["run_id"], entry["kind"], entry["args"]
    if kind == "params":
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in args["params"].items()]
        for i in range(0, len(items), 100):  # mlflow's batch limit
            client.log_batch(run_id, params=items[i:i + 100])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in args["tags"].items()])
    elif kind == "metrics":
        items = [Metric(k, float(v), args["timestamp"], args["step"]) for k, v in args["metrics"].items()]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i:i + 1000])
    elif kind == "text":
        client.log_text(run_id, args["text"], args["name"])
    elif kind == "file":
        if Path(args["path"]).is_file():  # a checkpoint removed since: its newer record was sent instead
            client.log_artifact(run_id, args["path"])
    elif kind == "finish":
        client.set_terminated(run_id, args["status"])
    else:
        raise ValueError(f"unknown spooled write {kind!r}")


def entry(uri: str, run_id: str, kind: str, **args) -> dict:
    if kind == "metrics":
        args.setdefault("timestamp", int(time.time() * 1000))
    return {"uri": uri, "run_id": run_id, "kind": kind, "args": args}


def refused(exc: Exception) -> bool:
    """Whether the store answered and said no (a param logged again with another value, a deleted run): an
    HTTP 4xx MLflow error. Anything else (no answer, a 5xx, a locked database) may pass: the write is kept."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and 400 <= exc.get_http_status_code() < 500


def _whole(line: str) -> dict | None:
    try:
        item = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(item, dict) and {"uri", "run_id", "kind", "args"} <= item.keys()
    return item if ok else None


class Spool:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def set_aside_path(self) -> Path:
        return self.path.with_name(SET_ASIDE_NAME)

    def entries(self) -> list[dict]:
        """The whole lines, in order. A line cut mid-write (a process killed while appending, a full disk) is
        moved to the set-aside file, with one notice: the lines around it are still sent."""
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text(errors="replace").splitlines() if line.strip()]
        items = [_whole(line) for line in lines]
        cut = [line for line, item in zip(lines, items) if item is None]
        good = [item for item in items if item is not None]
        if cut:
            self._set_aside([{"reason": "cut mid-write", "line": line} for line in cut])
            self._rewrite(good)
            notice(f"{len(cut)} cut line(s) of {self.path} (a write interrupted mid-line) set aside in "
                   f"{self.set_aside_path}; the {len(good)} whole line(s) are kept to send")
        return good

    def __len__(self) -> int:
        return len(self.entries())

    def append(self, item: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(item) + "\n")

    def _set_aside(self, records: list[dict]) -> None:
        with open(self.set_aside_path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))

    def _rewrite(self, items: list[dict]) -> None:
        if items:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(i) + "\n" for i in items))
            tmp.replace(self.path)
        elif self.path.exists():
            self.path.unlink()

    def replay(self, client_for) -> tuple[int, int]:
        """Send the entries in order with ``client_for(uri)``; (sent, left). A write the store refuses is set
        aside (one notice) and the next is sent; at the first that cannot reach the store, the rest are kept."""
        pending = self.entries()
        sent, refusals, at = 0, [], len(pending)
        try:
            for i, item in enumerate(pending):
                try:
                    apply(client_for(item["uri"]), item)
                except Exception as exc:
                    if not refused(exc):
                        at = i  # the store is away (or busy): keep this one and the rest for later
                        break
                    refusals.append({"reason": f"refused: {str(exc).splitlines()[0][:300]}", "entry": item})
                    continue
                sent += 1
        finally:
            if refusals:
                self._set_aside(refusals)
                notice(f"the store refused {len(refusals)} kept write(s) of {self.path} ({refusals[0]['reason']}); "
                       f"set aside in {self.set_aside_path}, the others were sent")
            left = pending[at:]
            self._rewrite(left)
        return sent, len(left)


def sync(folders: list[Path]) -> list[tuple[Path, int, int]]:
    """Replay every spool under ``folders`` (run folders, or their parents); (file, sent, left) each."""
    from mlflow.tracking import MlflowClient

    from .store import fail_fast_requests, server_unreachable

    fail_fast_requests()  # a server still away: say so, do not hang
    clients: dict[str, object] = {}
    away: dict[str, bool] = {}

    def client_for(uri):
        if away.setdefault(uri, server_unreachable(uri)):
            raise ConnectionError(uri)
        return clients.setdefault(uri, MlflowClient(tracking_uri=uri))

    results = []
    for folder in folders:
        for path in sorted(set(Path(folder).glob(SPOOL_NAME)) | set(Path(folder).glob(f"*/{SPOOL_NAME}"))):
            sent, left = Spool(path).replay(client_for)
            results.append((path, sent, left))
    return results
