"""A step's statistics (its loss, gradient and perturbation norms, …), read as floats.

Kept as the step computed them — 0-dim tensors on the model's device — until someone reads them: turning a
CUDA tensor into a float waits for the device to finish everything queued before it, so a step that recorded
its four statistics as floats held the host back four times per step. The training loop averages them
unread (``unread()``) and reads them once per checkpoint. Not for values a step itself needs as a number
(SAGE's agreement S sets its noise scale β: that one is read during the step).
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch


class StepStats(MutableMapping):
    def __init__(self, **values):
        self._values: dict = {}
        self.update(values)

    def __getitem__(self, key: str) -> float:
        return float(self._values[key])

    def __setitem__(self, key: str, value) -> None:
        self._values[key] = value.detach() if isinstance(value, torch.Tensor) else value

    def __delitem__(self, key: str) -> None:
        del self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"StepStats({dict(self)})"

    def unread(self) -> dict:
        """The values as the step left them (floats or 0-dim tensors): to keep without waiting for the device."""
        return dict(self._values)


def unread(stats) -> dict:
    """A step's statistics without reading them: ``StepStats`` unread, any other mapping as it is."""
    return stats.unread() if isinstance(stats, StepStats) else dict(stats)
