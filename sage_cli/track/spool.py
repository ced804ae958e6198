"""Writes to an MLflow run that its server could not take, kept in order beside the checkpoint and replayed.

Every write of a run (params, tags, metrics, texts, files, its end) is one JSON line here when the server is
unreachable; training goes on. The next write that reaches the server, the next ``sage run`` of the recipe,
or ``sage sync`` sends them, oldest first, and removes each one sent: nothing is lost, nothing sent twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SPOOL_NAME = "mlflow-spool.jsonl"
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


class Spool:
    def __init__(self, path: Path):
        self.path = Path(path)

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return len(self.entries())

    def append(self, item: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(item) + "\n")

    def replay(self, client_for) -> tuple[int, int]:
        """Send the entries in order with ``client_for(uri)``; (sent, left). Stops at the first that fails."""
        pending = self.entries()
        sent = 0
        try:
            for item in pending:
                apply(client_for(item["uri"]), item)
                sent += 1
        except Exception:  # the server is still away (or refuses): keep the rest for later
            pass
        finally:
            left = pending[sent:]
            if left:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text("".join(json.dumps(i) + "\n" for i in left))
                tmp.replace(self.path)
            elif self.path.exists():
                self.path.unlink()
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
