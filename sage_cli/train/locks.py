"""One identity, one run: an exclusive lock on the run folder (fcntl on ``<output_dir>/<hash>/.lock``) for
as long as ``sage run`` trains it. The kernel drops it when the process dies, however it dies, so holding
it also proves that no live process owns the folder's checkpoint or the MLflow run it records."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from ..errors import UserError


class RunLock:
    def __init__(self, folder: Path, wait: bool = False, notice=print):
        self.folder, self.wait, self.notice = Path(folder), wait, notice
        self.handle = None

    def _holder(self) -> str:
        try:
            who = json.loads((self.folder / ".lock").read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        since = time.strftime("%H:%M:%S", time.localtime(who.get("since", 0)))
        return f"PID {who.get('pid', '?')} on {who.get('host', '?')}, since {since}"

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.folder / ".lock", "a+")
        except OSError as exc:
            raise UserError(f"cannot write the run folder {self.folder} ({exc.strerror or exc}); set "
                            "training.output_dir to a writable folder") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            if not self.wait:
                self.handle.close()
                raise UserError(f"this recipe ({self.folder.name}) is already running ({holder}); wait for it, "
                                "or pass --wait to start when it ends") from None
            self.notice(f"waiting for the run of this recipe held by {holder}")
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps({"pid": os.getpid(), "host": platform.node(), "since": time.time()}))
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
