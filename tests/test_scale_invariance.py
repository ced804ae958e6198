"""App. D: sharpness L(θ+ε) − L(θ) under W1→αW1, b1→αb1, W2→W2/α (the same function) on the paper's
2→64→2 MLP trained on concentric circles. Reference-facts §3: SAM varies ~13×, ASAM is flat, SAGE as
written (fixed-radius bias rule) varies, SAGE with the scaled (or no) bias rule is flat."""

import pytest
import torch
from sklearn.datasets import make_circles
from torch import nn

from sage_cli.optim import ASAM, SAGE, SAM

ALPHAS = [0.1, 0.3, 1.0, 3.0, 10.0]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    X, y = make_circles(n_samples=512, noise=0.05, factor=0.5, random_state=0)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    assert (net(X).argmax(1) == y).float().mean() > 0.99
    return X, y, {k: v.clone() for k, v in net.state_dict().items()}


def _rescaled(state, alpha):
    net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))
    s = dict(state)
    s["0.weight"], s["0.bias"], s["2.weight"] = state["0.weight"] * alpha, state["0.bias"] * alpha, state["2.weight"] / alpha
    net.load_state_dict(s)
    return net


def _spread(trained, make):
    X, y, state = trained
    values = []
    for alpha in ALPHAS:
        net = _rescaled(state, alpha)
        torch.testing.assert_close(net(X), _rescaled(state, 1.0)(X), atol=1e-4, rtol=1e-4)  # same function
        values.append(make(net.parameters()).sharpness(lambda net=net: nn.functional.cross_entropy(net(X), y)))
    assert min(values) > 0
    return max(values) / min(values)


def test_sam_is_scale_dependent(trained):
    assert _spread(trained, lambda p: SAM(p, torch.optim.SGD, rho=0.05, lr=0.0)) > 5


def test_asam_is_flat(trained):
    assert _spread(trained, lambda p: ASAM(p, torch.optim.SGD, rho=0.5, lr=0.0)) < 1.15


def test_sage_with_fixed_radius_bias_rule_is_not_invariant(trained):
    assert _spread(trained, lambda p: SAGE(p, torch.optim.SGD, rho=0.05, gamma=0.0, bias_rule="sam", lr=0.0)) > 1.5


@pytest.mark.parametrize("rule", ["scaled", "none"])
def test_sage_with_scaled_or_no_bias_perturbation_is_invariant(trained, rule):
    assert _spread(trained, lambda p: SAGE(p, torch.optim.SGD, rho=0.05, gamma=0.0, bias_rule=rule, lr=0.0)) < 1.15
