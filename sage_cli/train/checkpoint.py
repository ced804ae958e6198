"""Atomic, verified, safely loadable checkpoints.

A checkpoint is written to a temporary file, hashed (SHA-256, recorded in the small JSON beside it), and
renamed into place; the one it replaces is kept as ``checkpoint.prev.pt`` (with its JSON) until the next
save, so a damaged file — truncated by a full disk, cut by a crash — is found by its hash on the next run,
which resumes from the previous good one (:func:`verified_meta`). Loading uses ``weights_only=True``
(tensors, containers and numbers only, no pickled code)."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError


@dataclass
class Record:
    """One evaluation point of a run: its step (DG) or epoch (MTL), metrics, and the DomainBed-style JSON row."""

    step: int
    metrics: dict[str, float]
    row: dict
    tags: dict | None = None  # run tags learnt while training (the per-domain path), not kept in checkpoints


def results_jsonl(history: list[Record]) -> str:
    """The records as DomainBed's ``results.jsonl``: one JSON row per evaluation."""
    import json

    return "".join(json.dumps(c.row, sort_keys=True) + "\n" for c in history)


def results_path(checkpoint: str | Path) -> Path:
    """The run folder's ``results.jsonl``, beside its checkpoint."""
    return Path(checkpoint).with_name("results.jsonl")


def write_results(checkpoint: str | Path, history: list[Record], append: bool = False) -> None:
    """Append the newest row (``append``) or rewrite every row (a resumed run: a kill between a row and its
    checkpoint left a row that the resumed run writes again)."""
    path = results_path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = history[-1:] if append else history
    with open(path, "a" if append else "w") as f:
        f.write(results_jsonl(rows))


def previous_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(path: str | Path, state: dict, meta: dict | None = None) -> None:
    """Write ``state`` to ``path`` (atomic rename), keeping the one it replaces as the previous checkpoint;
    with ``meta``, the JSON beside it too, with the new file's SHA-256."""
    from ..data.fetch import sha256_of

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        digest = sha256_of(tmp) if meta is not None else None
    except (OSError, RuntimeError) as exc:  # a full disk (torch's zip writer says so as a RuntimeError)
        tmp.unlink(missing_ok=True)  # never left filling the disk; the checkpoint it would replace is intact
        raise CheckpointNotSaved(path, exc) from None
    if meta is not None and path.is_file() and meta_path(path).is_file():
        prev = previous_path(path)
        os.replace(path, prev)
        os.replace(meta_path(path), meta_path(prev))
    os.replace(tmp, path)  # atomic on POSIX: a reader sees the old file or the new one, never half of one
    if meta is not None:
        save_meta(path, {**meta, "sha256": digest})


class CheckpointNotSaved(UserError):
    """The checkpoint could not be written (a full disk, a quota); the previous one is kept, whole."""

    def __init__(self, path: Path, exc: Exception):
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        # torch's zip writer reports a short write as "[enforce fail …] unexpected pos"; with the disk (nearly)
        # full that is what happened, and the user should read it so
        why = getattr(exc, "strerror", None) or ("no space left on the device" if free < 64e6
                                                 else str(exc).strip().splitlines()[0][:160])
        super().__init__(f"cannot save the checkpoint {path} ({why}; {free / 1e6:.0f} MB free there); the "
                         "previous checkpoint is kept: free some space and run the recipe again to resume")


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_state() -> dict:
    """The global RNGs: CPU, Python, and the current CUDA device's only (a job trains on one GPU; saving every
    visible one's made a checkpoint unloadable where fewer GPUs are visible)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s RNGs; a CUDA state without a CUDA device (a GPU checkpoint resumed on a CPU) is
    left out with a note."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # checkpoints before one-device states: every visible GPU's
        cuda = cuda[0] if cuda else None
    if cuda is None:
        return
    if torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    else:
        from ..errors import notice

        notice("this checkpoint comes from a GPU run and no CUDA device is visible: its CUDA random state is "
               "left out (dropout and noise on the CPU continue from their own states)")


def meta_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def save_meta(checkpoint: str | Path, meta: dict) -> None:
    """A small JSON beside the checkpoint (step, finished, MLflow run id): read without loading tensors."""
    import json

    path = meta_path(checkpoint)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, sort_keys=True))
    os.replace(tmp, path)


def read_meta(checkpoint: str | Path) -> dict | None:
    import json

    path = meta_path(checkpoint)
    if not (path.is_file() and Path(checkpoint).is_file()):
        return None
    return json.loads(path.read_text())


def remove_checkpoint(checkpoint: str | Path) -> None:
    prev = previous_path(checkpoint)
    for path in (Path(checkpoint), meta_path(checkpoint), results_path(checkpoint), prev, meta_path(prev)):
        path.unlink(missing_ok=True)


def _intact(checkpoint: Path) -> tuple[dict | None, str]:
    """(its meta, '') if the file matches the SHA-256 its JSON recorded, else (None, what is wrong)."""
    import json

    from ..data.fetch import sha256_of

    if not checkpoint.is_file():
        return None, "missing"
    try:
        meta = json.loads(meta_path(checkpoint).read_text())
    except (OSError, ValueError):
        return None, "its JSON is missing or unreadable"
    if "sha256" in meta and sha256_of(checkpoint) != meta["sha256"]:
        return None, "checksum mismatch: truncated or overwritten"
    return meta, ""


def verified_meta(checkpoint: str | Path) -> tuple[dict | None, str | None]:
    """(the meta of a checkpoint to resume from, or None; a notice when the newest was damaged and the
    previous one took its place). Raises ``UserError`` when checkpoints exist and none is intact."""
    from ..errors import UserError

    path, prev = Path(checkpoint), previous_path(checkpoint)
    if not path.is_file() and not prev.is_file():
        return None, None
    meta, problem = _intact(path)
    if meta is not None:
        return meta, None
    previous, _ = _intact(prev)
    if previous is None:
        raise UserError(f"checkpoint {path} is damaged ({problem}) and no good previous one is kept; "
                        "rerun with --restart to train from the start")
    os.replace(prev, path)
    os.replace(meta_path(prev), meta_path(path))
    return previous, (f"{path} is damaged ({problem}); resuming from the previous checkpoint "
                      f"(step {previous['step']})")


class Window:
    """Values gathered step by step between two checkpoints (the statistics a checkpoint averages); a part of
    the training state, so a run stopped between two checkpoints averages the same steps once resumed."""

    def __init__(self):
        self.values: dict[str, list] = {}

    def add(self, key: str, value) -> None:
        """``value``: a float, or a 0-dim tensor read only when the window is averaged or saved (reading a
        device's tensor waits for the device: once per checkpoint, not once per step)."""
        self.values.setdefault(key, []).append(value.detach() if isinstance(value, torch.Tensor) else float(value))

    def _floats(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in v] for k, v in self.values.items()}

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self._floats().items() if v}

    def clear(self) -> None:
        self.values = {}

    def state_dict(self) -> dict:
        return {"values": self._floats()}

    def load_state_dict(self, state: dict) -> None:
        self.values = {k: list(v) for k, v in state["values"].items()}


class GeneratorState:
    """A torch.Generator seen as something with a state dict (to checkpoint samplers' draws)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def save_training_state(path, step: int, finished: bool, recipe_hash: str, parts: dict, history: list,
                        extra: dict | None = None) -> None:
    """Everything a loop needs to continue bit-identically: each part's state dict (model, optimizer, …),
    every RNG, the checkpoint history; plus the small JSON beside it."""
    save_checkpoint(path, {
        "step": step, "finished": finished, "recipe_hash": recipe_hash,
        "parts": {name: part.state_dict() for name, part in parts.items()}, "rng": rng_state(),
        "history": [{"step": c.step, "metrics": c.metrics, "row": c.row} for c in history], **(extra or {}),
    }, meta={"step": step, "finished": finished, "recipe_hash": recipe_hash, **(extra or {})})


def restore_training_state(path, parts: dict) -> tuple[list[Record], int | None]:
    """Load a checkpoint written by ``save_training_state`` into ``parts``: (history, the step to resume at),
    or ([], None) when there is none to resume."""
    if path is None or not Path(path).is_file():
        return [], None
    state = load_checkpoint(path)
    for name, part in parts.items():
        if name in state["parts"] or not isinstance(part, Window):  # windows: absent from older checkpoints
            part.load_state_dict(state["parts"][name])
    set_rng_state(state["rng"])
    return [Record(r["step"], r["metrics"], r["row"]) for r in state["history"]], state["step"] + 1
