"""What makes a SAGE step cheaper: ``agreement_every`` (MTL), the Gramian-based aggregators, and ``sage bench``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sage_cli.mtl.aggregators as A
import sage_cli.optim.sage as sage_module
from sage_cli.mtl.models import DigitPairsNet
from sage_cli.optim import SAGE
from sage_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]

SAGE_BIN = str(Path(sys.executable).parent / "sage")


def _mtl(seed=0):
    torch.manual_seed(seed)
    model = DigitPairsNet()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 16, 32, generator=g)
    y = [torch.randint(0, 10, (8,), generator=g) for _ in range(2)]

    def closure():
        out = model(x)
        return torch.stack([F.cross_entropy(out[t], yt) for t, yt in zip(model.tasks, y)])
    return model, closure


def _sage(model, aggregator=None, **kw):
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=1e-2, gamma=1e-2, lr=1e-3, model=model, seed=0, **kw)
    opt.aggregator = (aggregator or A.LS(2)).bind(model.shared_parameters())
    return opt


def test_agreement_every_refreshes_s_every_n_steps_with_k_backwards_only_then(monkeypatch):
    calls = []
    real = sage_module.per_distribution_grads
    monkeypatch.setattr(sage_module, "per_distribution_grads", lambda *a: calls.append(1) or real(*a))
    model, closure = _mtl()
    opt = _sage(model, agreement_every=3)
    agreements = []
    for _ in range(7):
        opt.step(closure)
        agreements.append(opt.stats["agreement"])
    assert len(calls) == 3  # steps 0, 3 and 6
    assert agreements[0] == agreements[1] == agreements[2] != agreements[3] == agreements[4] == agreements[5]
    assert agreements[6] != agreements[5]
    assert opt.stats["noise_scale"] == pytest.approx(1e-2 * (1 - agreements[6]))


def test_agreement_every_resumes_bit_identically():
    model, closure = _mtl()
    straight = _sage(model, agreement_every=4)
    for _ in range(6):
        straight.step(closure)
    model2, closure2 = _mtl()
    first = _sage(model2, agreement_every=4)
    for _ in range(3):
        first.step(closure2)
    state, params = first.state_dict(), {k: v.clone() for k, v in model2.state_dict().items()}
    model3, closure3 = _mtl()
    model3.load_state_dict(params)
    resumed = _sage(model3, agreement_every=4)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.step(closure3)
    for p, q in zip(model.parameters(), model3.parameters()):
        assert torch.equal(p, q)


def test_agreement_every_one_is_alg_1_and_keeps_the_identity():
    base = load_recipe("recipes/quickstart.yaml")
    assert load_recipe("recipes/quickstart.yaml", {"optimizer.agreement_every": 1}).hash() == base.hash()
    assert load_recipe("recipes/quickstart.yaml", {"optimizer.agreement_every": 4}).hash() != base.hash()
    assert load_recipe("recipes/quickstart.yaml", {"optimizer.polar_dtype": "float32"}).hash() == base.hash()


def test_agreement_every_with_samo_is_refused():
    from sage_cli.errors import UserError

    with pytest.raises(UserError, match="agreement_every"):
        load_recipe("recipes/mtl_quickstart.yaml", {"optimizer.method": "sage", "optimizer.perturbation": "samo",
                                                    "optimizer.agreement_every": 2})


@pytest.mark.parametrize("name", ["MGDA", "PCGrad", "IMTLG", "CAGrad", "FairGrad", "NashMTL"])
def test_gramian_aggregators_equal_their_jacobian_form(name):
    """The aggregate from the Gramian (built per parameter, no K × n Jacobian) is the one from J itself."""
    torch.manual_seed(0)
    shared, head = torch.nn.Parameter(torch.randn(40)), torch.nn.Parameter(torch.randn(4))
    J = torch.randn(3, 40)
    per_task = [[J[k].clone(), torch.randn(4) * (k == 1)] for k in range(3)]
    a, b = getattr(A, name)(3).bind([shared]), getattr(A, name)(3).bind([shared])
    assert a.from_gramian
    losses = torch.rand(3)
    fast = a.gradients(losses, [shared, head], per_task)
    slow = b.scatter([shared, head], per_task, b.shared_direction(losses, [shared, head], per_task))
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, atol=1e-5, rtol=1e-5)


def test_sage_mgda_uses_the_gramian_it_measured(monkeypatch):
    seen = []
    real = A.MGDA.gradients
    monkeypatch.setattr(A.MGDA, "gradients", lambda self, *a: seen.append(a[3]) or real(self, *a))
    model, closure = _mtl()
    opt = _sage(model, A.MGDA(2))
    opt.step(closure)
    assert seen[0] is not None and seen[0].dtype == torch.float64 and seen[0].shape == (2, 2)


def test_bench_json_has_the_promised_keys():
    proc = subprocess.run([SAGE_BIN, "bench", "--model", "vit_tiny", "--steps", "1", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("step_seconds", "ratio_sage_sam", "ratio_sage_erm", "polar_seconds", "ratio_polar_erm",
                "overhead_beyond_polar", "per_domain_path", "peak_memory_bytes"):
        assert key in result
    assert set(result["step_seconds"]) == {"erm", "sam", "sage"} == set(result["peak_memory_bytes"])
    assert result["per_domain_path"] == "one-backward"
    assert all(v > 0 for v in result["step_seconds"].values())
    assert result["ratio_sage_erm"] == pytest.approx(result["step_seconds"]["sage"] / result["step_seconds"]["erm"])
    assert "SAGE/SAM" in proc.stdout


def test_bench_with_train_mode_batchnorm_reports_the_exact_path():
    # --polar none: the path is chosen from the model alone, and SAGE steps without polar factors are cheaper
    proc = subprocess.run([SAGE_BIN, "bench", "--model", "resnet50", "--train-bn", "--image-size", "32", "32",
                           "--batch", "6", "--steps", "1", "--polar", "none", "--json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["per_domain_path"] == "exact" and "BatchNorm in training mode" in result["per_domain_reason"]


def test_bench_under_bf16_keeps_the_one_backward_path():
    proc = subprocess.run([SAGE_BIN, "bench", "--model", "vit_tiny", "--steps", "1", "--precision", "bf16", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["precision"] == "bf16" and result["per_domain_path"] == "one-backward"


def test_bench_data_times_the_real_pipeline(tmp_path):
    from fixtures import make_tree

    make_tree(tmp_path, "pacs", per_class=6, size=40)
    proc = subprocess.run([SAGE_BIN, "bench", "--data", str(tmp_path), "--dataset", "pacs", "--workers", "2",
                           "--image-size", "16", "16", "--batch", "4", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("workers", "train_images_per_second", "train_images_per_second_inprocess", "eval_images_per_second",
                "eval_images_per_second_decode", "step_seconds_with_data", "step_seconds_with_data_inprocess"):
        assert result[key] > 0, key
    assert result["workers"] == 2 and result["images"] == 4 * 3 * 6 and result["per_domain_path"] == "one-backward"
    assert "training images/s" in proc.stdout


@pytest.mark.parametrize("args, message", [(["--model", "vgg"], "--model 'vgg'"),
                                           (["--polar-dtype", "fp8"], "--polar-dtype 'fp8'"),
                                           (["--device", "cuda"], "no CUDA device"),
                                           (["--batch", "2", "--domains", "3"], "gives a domain no image"),
                                           (["--precision", "fp16"], "--precision 'fp16'"),
                                           (["--data", "/nonexistent"], "--data and --dataset go together"),
                                           (["--data", "/nonexistent", "--dataset", "nyuv2"], "--dataset 'nyuv2'"),
                                           (["--data", "/nonexistent", "--dataset", "pacs"], "/nonexistent"),
                                           (["--data", "/tmp", "--dataset", "pacs", "--workers", "many"],
                                            "--workers 'many'")])
def test_bench_bad_input_is_one_line_exit_2(args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    proc = subprocess.run([SAGE_BIN, "bench", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_step_reads_from_the_device_only_what_it_needs():
    """On a GPU each read of a number waits for the device: ERM reads none, SAM its ‖ḡ‖ (ε's scale), SAGE its
    agreement S (β's); the loss and the norms stay on the device until a checkpoint averages them. (MTL, where
    SAGE with LS once read ∂T/∂L_k per parameter and task — 1,189 reads a step on MTAN —: the test below.)"""
    from sage_cli.speed.ops import count

    assert {name: c["host_syncs"] for name, c in count("small_cnn").items()} == {"erm": 0, "sam": 1, "sage": 1}


METHODS = {"erm": {}, "sam": {}, "sage": {}, "samo": {}, "fmtl": {}, "sage-samo": {"optimizer.perturbation": "samo"}}


@pytest.mark.parametrize("recipe, reads", [("quickstart", {"erm": 0, "sage": 1}),
                                           ("mtl_quickstart", {"erm": 0, "sam": 1, "sage": 1, "samo": 0, "fmtl": 0,
                                                               "sage-samo": 1})])
def test_a_runs_whole_training_step_reads_from_the_device_only_what_its_optimizer_needs(recipe, reads):
    """Beyond the optimizer step: the batch, the task's loss sums, FAMO's test for finite losses (which once ran
    for every aggregator: one read a step); SAMO and F-MTL scale and clip on the device (they read 12–13 numbers a
    step before); SAGE-SAMO reads its agreement S only."""
    found = {}
    for name in reads:
        overrides = {"optimizer.method": name.split("-")[0], **METHODS[name]}
        found[name] = _whole_step_ops(recipe, overrides)["_local_scalar_dense"]
    assert found == reads


@pytest.mark.parametrize("overrides, kernel", [({"optimizer.base": "adam"}, "_fused_adam_"),
                                               ({"optimizer.base": "adamw"}, "_fused_adamw_"),
                                               ({"optimizer.base": "sgd"}, "_fused_sgd_"),
                                               ({"optimizer.method": "muon"}, "_fused_adam_")])
def test_a_runs_base_optimizer_updates_all_its_parameters_in_one_fused_kernel(overrides, kernel):
    """torch's fused Adam, AdamW and SGD: one op for the quickstart's one group of parameters, where torch's
    default on a CPU runs each operation of the update for each parameter (ResNet-50's ERM step: 2,003 ops, 717
    fused);
    Muon's Adam, for the parameters that are not matrices, too."""
    ops = _whole_step_ops("quickstart", {"optimizer.method": "sage", **overrides})
    assert ops[kernel] == 1 and sum(ops[k] for k in ops if k.startswith("_fused_")) == 1


def _whole_step_ops(recipe: str, overrides: dict):
    """The ops of a run's third training step (the first two: SAGE's one-time check of its fast path)."""
    from sage_cli.speed.ops import task_ops
    from sage_cli.train.runner import protocol_for
    from sage_cli.train.runtime import Runtime

    loaded = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides)
    protocol = protocol_for(loaded)
    task = protocol.start(loaded, protocol.load(loaded), Runtime.plain("cpu"))
    try:
        task.step(0), task.step(1)
        return task_ops(task, 2)
    finally:
        getattr(task, "close", lambda: None)()
