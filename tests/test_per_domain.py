"""Per-domain gradient statistics from one backward (``sage_cli.optim.per_domain``) against the K-call path."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sage_cli.models import Classifier
from sage_cli.models.cnn import small_cnn
from sage_cli.optim import GGA, SAGE
from sage_cli.optim.grads import flatten, mean_cosine
from sage_cli.optim.per_domain import PerDomainGradients, batch_blocks


def _closure(model, xs, ys):
    def closure():
        logits = model(torch.cat(xs)).split([len(x) for x in xs])
        return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])
    return closure


def _batches(shape, sizes, n_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, *shape, generator=g) for n in sizes]
    ys = [torch.randint(0, n_classes, (n,), generator=g) for n in sizes]
    return xs, ys


def _both_paths(model, shape, sizes, weights=None):
    xs, ys = _batches(shape, sizes)
    closure = _closure(model, xs, ys)
    params = [p for p in model.parameters() if p.requires_grad]
    engine = PerDomainGradients(model, verify=False)
    with torch.enable_grad():
        with batch_blocks(sizes):
            fast = engine.measure(closure, weights, params)
        exact = PerDomainGradients._exact(closure(), weights, params)
    return engine, fast, exact


def _assert_same(fast, exact, tol=1e-5):
    (_, g1, G1), (_, g2, G2) = fast, exact
    assert float((flatten(g1) - flatten(g2)).norm() / flatten(g2).norm()) < tol
    assert float((G1 - G2).norm() / G2.norm()) < tol
    assert abs(mean_cosine(G1) - mean_cosine(G2)) < tol


def _clip(arch):
    from sage_cli.models.clip import clip

    size = 32 if arch == "ViT-Tiny-16" else 224
    cfg = SimpleNamespace(model=arch, pretrained=None, head="linear", prompt="")
    return clip((3, size, size), 7, cfg).train(), (3, size, size)


def test_small_cnn_one_backward_equals_k_backwards():
    torch.manual_seed(0)
    model = small_cnn((1, 28, 28), 10).train()
    engine, fast, exact = _both_paths(model, (1, 28, 28), [8] * 5)
    assert engine.path == "one-backward"
    _assert_same(fast, exact)


def test_uneven_and_empty_blocks_and_weights():
    torch.manual_seed(1)
    model = small_cnn((1, 16, 16), 7).train()
    engine, fast, exact = _both_paths(model, (1, 16, 16), [3, 6, 2], weights=[3, 6, 2])
    assert engine.path == "one-backward"
    _assert_same(fast, exact)


def test_resnet50_with_frozen_batchnorm():
    from sage_cli.models.resnet import resnet50

    torch.manual_seed(0)
    model = resnet50((3, 64, 64), 7, SimpleNamespace(pretrained=None, freeze_bn=True)).train()
    engine, fast, exact = _both_paths(model, (3, 64, 64), [2, 2, 2])
    assert engine.path == "one-backward"
    _assert_same(fast, exact)


@pytest.mark.parametrize("arch", ["ViT-Tiny-16", "ViT-B-16"])
def test_open_clip_vits(arch):
    torch.manual_seed(0)
    model, shape = _clip(arch)
    sizes = [2, 2, 2] if arch == "ViT-Tiny-16" else [1, 1, 1]
    engine, fast, exact = _both_paths(model, shape, sizes)
    assert engine.path == "one-backward"
    _assert_same(fast, exact)


def test_train_mode_batchnorm_takes_the_exact_path_and_says_so():
    from sage_cli.models.resnet import resnet50

    torch.manual_seed(0)
    model = resnet50((3, 32, 32), 7, SimpleNamespace(pretrained=None, freeze_bn=False)).train()
    said = []
    xs, ys = _batches((3, 32, 32), [2, 2])
    params = [p for p in model.parameters() if p.requires_grad]
    engine = PerDomainGradients(model, notice=said.append)
    with torch.enable_grad(), batch_blocks([2, 2]):
        engine.measure(_closure(model, xs, ys), None, params)
        engine.measure(_closure(model, xs, ys), None, params)
    assert engine.path == "exact"
    assert len(said) == 1 and "BatchNorm in training mode" in said[0] and "exact path" in said[0]


class _BatchCentering(nn.Module):
    """A parameter-free layer that mixes samples: no structural check can see it."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def test_a_hidden_mixing_layer_is_caught_by_the_first_check():
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), _BatchCentering(), nn.ReLU()), nn.Linear(8, 3), 8)
    said = []
    xs, ys = _batches((16,), [4, 4, 4], n_classes=3)
    params = list(model.parameters())
    engine = PerDomainGradients(model, notice=said.append)
    with torch.enable_grad(), batch_blocks([4, 4, 4]):
        first = engine.measure(_closure(model, xs, ys), None, params)
        second = engine.measure(_closure(model, xs, ys), None, params)
    assert len(said) == 1 and "differ from the exact ones" in said[0]
    assert engine.path == "exact"
    exact = PerDomainGradients._exact(_closure(model, xs, ys)(), None, params)
    _assert_same(first, exact)  # the checked measurement itself is the exact one
    _assert_same(second, exact)
    with torch.enable_grad(), batch_blocks([4, 4, 4]):
        unchecked = PerDomainGradients(model, verify=False).measure(_closure(model, xs, ys), None, params)
    assert float((unchecked[2] - exact[2]).norm() / exact[2].norm()) > 1e-3  # what the check caught


def test_check_replays_dropout_and_leaves_the_rng_where_one_forward_would():
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU()), nn.Linear(8, 3), 8)
    xs, ys = _batches((16,), [4, 4], n_classes=3)
    params = list(model.parameters())
    said = []
    torch.manual_seed(5)
    with torch.enable_grad(), batch_blocks([4, 4]):
        PerDomainGradients(model, notice=said.append).measure(_closure(model, xs, ys), None, params)
    after_checked = torch.rand(3)
    torch.manual_seed(5)
    with torch.enable_grad():
        _closure(model, xs, ys)()
    assert said == [] and torch.equal(after_checked, torch.rand(3))


def _sage_step(model, xs, ys, blocks):
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=1e-2, gamma=1e-2, lr=1e-3, model=model, seed=0)
    closure = _closure(model, xs, ys)
    if blocks:
        with batch_blocks([len(x) for x in xs]):
            opt.step(closure)
    else:
        opt.step(closure)
    return opt


def test_sage_step_is_the_same_on_both_paths():
    xs, ys = _batches((1, 16, 16), [4, 4, 4])
    torch.manual_seed(0)
    a = small_cnn((1, 16, 16), 7).train()
    b = small_cnn((1, 16, 16), 7).train()
    b.load_state_dict(a.state_dict())
    fast, exact = _sage_step(a, xs, ys, True), _sage_step(b, xs, ys, False)
    assert fast.per_domain.path == "one-backward" and exact.per_domain.path == "exact"
    assert abs(fast.stats["agreement"] - exact.stats["agreement"]) < 1e-6
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_gga_measures_through_the_same_engine():
    torch.manual_seed(0)
    model = small_cnn((1, 16, 16), 7).train()
    xs, ys = _batches((1, 16, 16), [4, 4, 4])
    opt = GGA(model.parameters(), torch.optim.Adam, start=0, end=1, candidates=2, lr=1e-3, model=model, seed=0)
    with batch_blocks([4, 4, 4]):
        opt.step(_closure(model, xs, ys))
    assert opt.per_domain.path == "one-backward" and "gga_accepted" in opt.stats


def test_quickstart_training_takes_the_one_backward_path(tmp_path):
    from sage_cli.recipe import load_recipe
    from sage_cli.train.dg import train_dg

    recipe = load_recipe("recipes/quickstart.yaml", {"training.steps": 2, "training.output_dir": str(tmp_path)})
    result = train_dg(recipe)
    assert result.optimizer.per_domain.path == "one-backward"
    irm = train_dg(load_recipe("recipes/quickstart.yaml", {"training.steps": 2, "objective.name": "irm",
                                                           "training.output_dir": str(tmp_path / "irm")}))
    assert irm.optimizer.per_domain.path == "exact"  # IRM's losses are not per-block means only


def test_uniform_sampling_with_one_domain_in_the_batch_is_plain_sam_like_sage():
    torch.manual_seed(0)
    model = small_cnn((1, 16, 16), 7).train()
    xs, ys = _batches((1, 16, 16), [6])
    opt = _sage_step(model, xs, ys, True)  # K = 1 this step: S = 1, no per-domain statistics needed
    assert opt.stats["agreement"] == 1.0 and opt.per_domain.path is None


def test_paper_recipe_sampling_uniform_takes_the_one_backward_path(tmp_path):
    from sage_cli.recipe import load_recipe
    from sage_cli.train.dg import train_dg

    recipe = load_recipe("recipes/quickstart.yaml", {"training.steps": 3, "training.batch_sampling": "uniform",
                                                     "training.batch_size": 12, "training.output_dir": str(tmp_path)})
    result = train_dg(recipe)
    assert result.optimizer.per_domain.path == "one-backward"
