"""Interleaved step timings (medians), SAGE's parts, peak memory and the polar-factor costs, in one process."""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from contextlib import nullcontext

import torch

from ..optim.per_domain import batch_blocks
from .workloads import Workload, optimizers


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Parts:
    """Seconds spent in SAGE's first pass (forward + per-distribution statistics), its polar factors, and the rest."""

    def __init__(self, opt):
        self.seconds = {"statistics": 0.0, "polar": 0.0}
        self.device = None
        for method, part in (("first_forward", "statistics"), ("aggregate", "statistics"), ("perturbations", "polar")):
            setattr(opt, method, self._timed(getattr(opt, method), part))

    def _timed(self, fn, part):
        def timed(*args, **kwargs):
            _sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.seconds[part] += time.perf_counter() - t0
            return out
        return timed

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class _PeakMemory:
    """Growth of memory during the block: CUDA's allocator peak, or the process RSS sampled every millisecond
    (after glibc has handed freed memory back, so the baseline is what is live)."""

    def __init__(self, device):
        self.device, self.peak = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = _rss()
        self._max, self._stop = self.base, threading.Event()
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss() or 0)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max - self.base, 0)
        return False


def _state_bytes(model, opt) -> int:
    """Parameters, their gradients and the optimizer's buffers: what a method keeps between steps."""
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    for state in opt.base_optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _matrices_of(model) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(p.shape, generator=g).to(p.device) for p in model.parameters() if p.requires_grad and p.ndim >= 2]


def polar_costs(model, method: str, steps: int, dtype: torch.dtype, device) -> dict:
    """The polar factors of all the model's matrices (random gradients of their shapes): one at a time by the
    direct iteration in float32 (what SAGE did before), as SAGE computes them now (batched, each shape in the
    cheaper order) in float32 and in ``dtype``; and the error of the latter against the exact (SVD) factors,
    ‖Q − Q_svd‖_F / ‖Q_svd‖_F at the worst matrix."""
    from ..optim.polar_factor import polar_many

    grads = _matrices_of(model)

    def timed(fn, repeat=2):
        fn()  # warm-up
        times = []
        for _ in range(repeat):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    out = {"polar_matrices": len(grads),
           "polar_loop_seconds": timed(lambda: [polar_many([G], method, steps, order="direct") for G in grads]),
           "polar_batched_seconds": timed(lambda: polar_many(grads, method, steps))}
    if dtype != torch.float32:
        out[f"polar_batched_{str(dtype).split('.')[-1]}_seconds"] = timed(lambda: polar_many(grads, method, steps, dtype), 1)
    by_shape = {}
    for G in grads:  # one matrix per shape is enough to bound the error
        by_shape.setdefault(tuple(G.shape), G)
    sample = list(by_shape.values())
    approx = polar_many(sample, method, steps, dtype)
    exact = polar_many([G.double() for G in sample], "svd")
    out["polar_error_vs_svd"] = max(float((q.double() - e).norm() / e.norm()) for q, e in zip(approx, exact))
    return out


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _with_precision(closure, precision: str, device):
    """The closure under the precision a run would use (TF32 switches are set by the caller's ``configure``)."""
    if precision != "bf16":
        return closure

    def autocast_closure():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return closure()
    return autocast_closure


def run(work: Workload, steps: int, polar: str, ns_steps: int, polar_dtype: str, agreement_every: int,
        device: torch.device, progress=None, precision: str = "fp32") -> dict:
    """Warm-up, then ``steps`` interleaved repetitions of every method; medians."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    makers = optimizers(work, polar, ns_steps, polar_dtype, agreement_every)
    runs = {}
    for name, (make, per_rep) in makers.items():
        model = work.make_model()
        opt = make(model)
        if getattr(opt, "per_domain", None) is not None:  # its check at the precision's tolerance, as a run
            from ..train.runtime import Runtime

            opt.per_domain.tolerance = Runtime(device, precision, False).check_tolerance
        runs[name] = (model, opt, _with_precision(work.closure_for(model), precision, device), per_rep)
    parts = _Parts(runs["sage"][1])
    parts.device = device
    blocks = (lambda: batch_blocks(work.blocks)) if work.blocks else nullcontext

    def step(name):
        model, opt, closure, _ = runs[name]
        with blocks():
            opt.step(closure)

    for name in runs:  # warm-up: allocators, and SAGE's one-time check of its fast path
        step(name)
    times = {name: [] for name in runs}
    sage_parts = []
    for _ in range(steps):
        for name, (_, _, _, per_rep) in runs.items():
            if name == "sage":
                parts.reset()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(per_rep):
                step(name)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / per_rep)
            if name == "sage":
                sage_parts.append(dict(parts.seconds))
            if progress:
                progress()
    memory = {}
    for name, (model, opt, _, _) in runs.items():
        with _PeakMemory(device) as peak:
            step(name)
        memory[name] = None if peak.peak is None else _state_bytes(model, opt) + peak.peak
    med = {name: statistics.median(t) for name, t in times.items()}
    sage_opt = runs["sage"][1]
    part = {k: statistics.median(p[k] for p in sage_parts) for k in ("statistics", "polar")}
    part["second_pass"] = max(med["sage"] - part["statistics"] - part["polar"], 0.0)
    erm, sam, sage, polar_s = med["erm"], med["sam"], med["sage"], part["polar"]
    result = {
        "model": work.name, "workload": work.describe, "device": str(device), "machine": machine(device),
        "K": work.K, "batch": work.batch, "steps": steps, "polar": polar, "ns_steps": ns_steps, "precision": precision,
        "polar_dtype": polar_dtype, "parameters": sum(p.numel() for p in runs["erm"][0].parameters()),
        "per_domain_path": sage_opt.per_domain.path or "exact",
        "per_domain_reason": sage_opt.per_domain.reason,
        "step_seconds": med, "sage_parts_seconds": part,
        "ratio_sage_sam": sage / sam, "ratio_sage_erm": sage / erm,
        "polar_seconds": polar_s, "ratio_polar_erm": polar_s / erm,
        "overhead_beyond_polar": (sage - sam - polar_s) / sam,
        "peak_memory_bytes": memory,
        "ratio_memory_sage_sam": (memory["sage"] / memory["sam"]) if memory["sage"] and memory["sam"] else None,
    }
    K, r = work.K, polar_s / erm
    floor = ((1 + 2 * K) / 3 + 1 + r) if work.mtl else (2 + r)  # in ERM steps (passes)
    result["floor_passes"], result["ratio_sage_floor"] = floor, sage / (floor * erm)
    every = next((k for k in med if k.startswith("sage_every")), None)
    if every:
        result["ratio_sage_every_sam"] = med[every] / sam
    result.update(polar_costs(runs["sage"][0], polar if polar != "none" else "quintic", ns_steps,
                              torch.bfloat16 if polar_dtype == "bfloat16" else torch.float32, device))
    return result
