"""Atomic, safely loadable checkpoints: write to a temporary file, then rename over the old one;
load with ``weights_only=True`` (tensors, containers and numbers only, no pickled code)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Record:
    """One evaluation point of a run: its step (DG) or epoch (MTL), metrics, and the DomainBed-style JSON row."""

    step: int
    metrics: dict[str, float]
    row: dict


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


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX: a reader sees the old file or the new one, never half of one


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    for path in (Path(checkpoint), meta_path(checkpoint), results_path(checkpoint)):
        path.unlink(missing_ok=True)


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
    })
    save_meta(path, {"step": step, "finished": finished, "recipe_hash": recipe_hash, **(extra or {})})


def restore_training_state(path, parts: dict) -> tuple[list[Record], int | None]:
    """Load a checkpoint written by ``save_training_state`` into ``parts``: (history, the step to resume at),
    or ([], None) when there is none to resume."""
    if path is None or not Path(path).is_file():
        return [], None
    state = load_checkpoint(path)
    for name, part in parts.items():
        part.load_state_dict(state["parts"][name])
    set_rng_state(state["rng"])
    return [Record(r["step"], r["metrics"], r["row"]) for r in state["history"]], state["step"] + 1
