"""One small registry type, used once per axis (datasets, backbones, objectives, optimizer methods).

Entries are "module:attribute" strings resolved on first use, so listing and checking names (recipe
validation, dry runs) never imports torch; ``register`` adds an object directly (plugins, tests).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

from .errors import UserError


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry:
    def __init__(self, kind: str, entries: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = obj
            return obj

        return deco

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

    def get(self, name: str):
        entry = self._entries[self.check(name)]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry
