"""Kernel launches and host syncs of one optimizer step, counted (`python bench/step_ops.py`): every ATen op a
step dispatches (on a GPU, about one kernel launch each) and the ``_local_scalar_dense`` ones among them (a
tensor read into Python — ``float(t)``, ``.item()`` — which on a GPU waits for the device). Counts, not times:
the same on any machine, so they show what a change to the hot path removed."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sage_cli.optim.per_domain import batch_blocks
from sage_cli.speed.workloads import build, optimizers


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


def count(model_name: str, freeze_bn: bool = True) -> dict:
    work = build(model_name, freeze_bn=freeze_bn)
    out = {}
    for name, (make, _) in optimizers(work, "quintic", 5, "float32", 1).items():
        model = work.make_model()
        opt = make(model)
        closure = work.closure_for(model)
        with batch_blocks(work.blocks):
            opt.step(closure)  # warm-up: SAGE's one-time check of its fast path
            steps = [st["step"] for st in opt.base_optimizer.state.values() if torch.is_tensor(st.get("step"))]
            with Count(steps) as c:
                opt.step(closure)
        out[name] = {"ops": sum(c.ops.values()), "host_syncs": c.ops["_local_scalar_dense"]}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--train-bn", action="store_true", help="resnet50: BatchNorm in training mode (exact path)")
    args = parser.parse_args()
    print(json.dumps({args.model + (" train-bn" if args.train_bn else ""): count(args.model, not args.train_bn)}))
