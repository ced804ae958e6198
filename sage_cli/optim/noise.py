"""Seeded Gaussian/uniform noise owned by an optimizer: reproducible, and resumable through state_dict."""

from __future__ import annotations

import torch


class NoiseSource:
    """One torch.Generator per device, all seeded from ``seed`` (None: drawn from torch's global RNG, so
    ``torch.manual_seed`` still makes a run repeatable)."""

    def __init__(self, seed: int | None = None):
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def normal_like(self, p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=self._generator(p.device), device=p.device, dtype=p.dtype)

    def uniform_like(self, p: torch.Tensor, low: float, high: float) -> torch.Tensor:
        u = torch.rand(p.shape, generator=self._generator(p.device), device=p.device, dtype=p.dtype)
        return low + (high - low) * u

    def state_dict(self) -> dict:
        return {"seed": self.seed, "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))
        self._generators = {}
        for key, gen_state in state.get("generators", {}).items():
            device = _here(key)
            if device is None:
                from ..errors import notice

                notice(f"the checkpoint's {key} noise generator cannot continue without a CUDA device: "
                       f"noise on this machine is drawn afresh from seed {self.seed} (the run is no longer "
                       "bit-identical to an uninterrupted one)")
                continue
            gen = torch.Generator(device=device)
            gen.set_state(gen_state)
            self._generators[str(device)] = gen


def _here(key: str) -> torch.device | None:
    """Where a generator saved on device ``key`` continues: a CUDA one on this process's current CUDA device (its
    state is a seed and an offset, the same on any GPU), None without one."""
    device = torch.device(key)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        return None
    return torch.device("cuda", torch.cuda.current_device())
