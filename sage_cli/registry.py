"""One small registry type, used once per axis (datasets, backbones, objectives, optimizer methods, MTL
aggregators).

An entry is either an object (a settings class, registered by the decorator beside it) or a "module:attr"
string, or an ``Entry`` holding one with some metadata, resolved on first ``get`` — so listing and checking
names (recipe validation, dry runs) never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from .errors import UserError


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Entry:
    """A lazily imported constructor and what is known of it without importing it."""

    target: str  # "module:attr"
    kind: str = "dg"  # dg | mtl: which protocol it belongs to
    backbones: tuple[str, ...] = ()  # datasets: the backbones that can read it
    envs: tuple[str, ...] = ()  # DG datasets: environment names in DomainBed's order
    settings: tuple[str, ...] = ()  # backbones: the ``backbone:`` keys it reads (beyond ``name``)
    # backbones: bumped when the architecture changes, so runs of the old one are not resumed into the new
    # one; 0 adds nothing to a run's identity
    revision: int = 0
    in_memory: bool = False  # datasets: embedded and held in memory (no loader workers)


class Registry:
    def __init__(self, kind: str, entries: dict[str, Any] | None = None):
        self.kind = kind
        self._entries: dict[str, Any] = dict(entries or {})
        self._loaded: dict[str, Any] = {}

    def register(self, obj=None, *, name: str | None = None):
        """Add ``obj`` under ``name`` (default: a settings class's own tag value). Usable as a decorator:
        ``@METHODS.register`` above a settings class."""

        def add(entry):
            key = name or entry.model_fields[entry.tag].default
            if key in self._entries and self._entries[key] is not entry:
                raise ValueError(f"{self.kind} '{key}' registered twice")
            self._entries[key] = entry
            self._loaded.pop(key, None)
            return entry

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` if known, else a UserError with the closest known name."""
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; known: {', '.join(self.names())}"
            )
        return name

    def entry(self, name: str):
        """What is registered, unresolved (an ``Entry``'s metadata, a settings class)."""
        return self._entries[self.check(name)]

    def get(self, name: str):
        """The constructor itself, imported on first use."""
        if name not in self._loaded:
            entry = self.entry(name)
            target = entry.target if isinstance(entry, Entry) else entry
            self._loaded[name] = resolve(target) if isinstance(target, str) else target
        return self._loaded[name]
