"""Kernel launches and host syncs of one optimizer step, counted: every ATen op a step dispatches (on a GPU,
about one kernel launch each) and the ``_local_scalar_dense`` ones among them (a tensor read into Python —
``float(t)``, ``.item()`` — which on a GPU waits for the device). Counts, not times: the same on any machine,
so they show what a change to the hot path removed (``bench/step_ops.py``; tests hold the syncs of an optimizer
step and of a run's whole training step)."""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..optim.per_domain import batch_blocks
from .workloads import build, optimizers


class Count(TorchDispatchMode):
    """Ops by name; reads of ``host`` tensors (the base optimizer's step counters, which torch keeps on the CPU
    for a CUDA model too) are not syncs and are left out."""

    def __init__(self, host=()):
        super().__init__()
        self.ops = Counter()
        self.host = {t.data_ptr() for t in host}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        if not (name == "_local_scalar_dense" and args[0].data_ptr() in self.host):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count(model_name: str, freeze_bn: bool = True, **workload) -> dict:
    """Per method (ERM, SAM, SAGE; with LS on MTAN): the ops and host syncs of one step after a warm-up step.
    ``workload``: ``build``'s sizes (``image_size``, ``batch``, ``K``)."""
    work = build(model_name, freeze_bn=freeze_bn, **workload)
    out = {}
    for name, (make, _) in optimizers(work, "quintic", 5, "float32", 1).items():
        model = work.make_model()
        opt = make(model)
        closure = work.closure_for(model)
        with batch_blocks(work.blocks) if work.blocks else nullcontext():  # MTL: one batch
            opt.step(closure)  # warm-up: SAGE's one-time check of its fast path
            with Count(step_counters(opt)) as c:
                opt.step(closure)
        out[name] = {"ops": sum(c.ops.values()), "host_syncs": c.ops["_local_scalar_dense"]}
    return out


def step_counters(optimizer) -> list[torch.Tensor]:
    """The base optimizer's step counters: an unfused torch optimizer keeps them on the CPU for a CUDA model too
    and reads them each step, which is no sync (a run's fused one keeps them beside the parameters and never
    reads them; an optimizer resumed from a checkpoint saved unfused reads them as before)."""
    base = getattr(optimizer, "base_optimizer", optimizer)
    return [st["step"] for st in base.state.values() if torch.is_tensor(st.get("step"))]


def task_ops(task, step: int) -> Counter:
    """The ops, by name, of one whole training step of a run (``task``: what a protocol's ``start`` returns,
    already past its warm-up): its batch, its optimizer step and what the task keeps of the step (an MTL epoch's
    loss sums). Its host syncs: ``["_local_scalar_dense"]``."""
    with Count(step_counters(task.optimizer)) as c:
        task.step(step)
    return c.ops
