"""Where and how a run computes: the device, the precision, determinism, threads. Resolved once at start,
printed and tagged, so a GPU run says what it did (and a CPU run that meant to be a GPU run says so)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import UserError

# what a per-domain one-backward measurement may differ from the exact one by, per precision: float32 rounding,
# TF32's 10-bit mantissa in the matmuls, bfloat16's 8-bit one (both paths round differently, not wrongly)
CHECK_TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2, "bf16": 5e-2}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | tf32 | bf16, as the recipe asked
    deterministic: bool
    workers: int = 0

    @classmethod
    def plain(cls, device: str | torch.device = "cpu") -> Runtime:
        """fp32 on ``device``, no loader workers: for measuring a saved model (``sage diagnose``)."""
        return cls(torch.device(device), "fp32", False)

    def autocast(self):
        """The context of a forward pass: bfloat16 autocast for bf16, nothing otherwise."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def check_tolerance(self) -> float:
        return CHECK_TOLERANCE["fp32" if self.device.type == "cpu" and self.precision == "tf32" else self.precision]

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda" and not self.deterministic

    def describe(self) -> str:
        precision = self.precision + (" (no TF32 on a CPU: fp32)" if self.precision == "tf32" and
                                      self.device.type == "cpu" else "")
        return (f"device {self.device}{' (' + torch.cuda.get_device_name(self.device) + ')' if self.device.type == 'cuda' else ''}"
                f" · precision {precision} · deterministic {'on' if self.deterministic else 'off'}"
                f" · loader workers {self.workers}")

    def tags(self) -> dict[str, str]:
        return {"sage.device": str(self.device), "sage.precision": self.precision,
                "sage.deterministic": str(self.deterministic).lower(), "sage.workers": str(self.workers)}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device: cuda, but no CUDA device is visible here "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return torch.device(name)


def configure(training, workers: int = 0) -> Runtime:
    """Set torch's global switches for a run of ``training`` (a recipe's training section) and return them."""
    device = pick_device(training.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        tf32 = training.precision in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = not training.deterministic
    if training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    # only when it changes: torch.use_deterministic_algorithms imports torch._inductor (~1.2 s of every start)
    if torch.are_deterministic_algorithms_enabled() != training.deterministic:
        torch.use_deterministic_algorithms(training.deterministic)
    return Runtime(device, training.precision, training.deterministic, workers)
