"""MoCo, F-MTL, SAMO and SAGE-SAMO against from-scratch computations of the references' algorithms.

The per-task rules run on a tiny two-task network in float64 (SGD with lr 1, so the update is −gradient),
and every step is recomputed here by hand: per-task gradients, perturbations, the SPSA estimate with the same
random directions, the gradients at each θ+ε_k, and the combination.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sage_cli.errors import UserError
from sage_cli.mtl import aggregators as A
from sage_cli.optim.noise import NoiseSource
from sage_cli.optim.pertask import FMTL, SAGESAMO, SAMO
from sage_cli.recipe import load_recipe


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


class Tiny(nn.Module):
    """Shared W, b; one linear head per task."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
        self.heads = nn.ModuleList([nn.Linear(4, 2).double(), nn.Linear(4, 2).double()])

    def shared_parameters(self):
        return [self.W, self.b]

    def forward(self, x):
        z = torch.tanh(x @ self.W.T + self.b)
        return [h(z) for h in self.heads]


X = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = [torch.randn(6, 2, generator=torch.Generator().manual_seed(2 + k), dtype=torch.float64) for k in range(2)]


def task_loss(theta, k):
    """L_k as a function of a dict of tensors: W, b, h{k}w, h{k}b."""
    z = torch.tanh(X @ theta["W"].T + theta["b"])
    return ((z @ theta[f"h{k}w"].T + theta[f"h{k}b"] - Y[k]) ** 2).mean()


NAMES = ["W", "b", "h0w", "h0b", "h1w", "h1b"]
SHARED, HEAD = ["W", "b"], {0: ["h0w", "h0b"], 1: ["h1w", "h1b"]}


def setup(opt_cls, aggregator, **kwargs):
    torch.manual_seed(0)
    model = Tiny()
    for h in model.heads:
        h.reset_parameters()
    theta = {n: p.detach().clone() for n, p in zip(NAMES, model.parameters())}
    opt = opt_cls(list(model.parameters()), torch.optim.SGD, lr=1.0, model=model, **kwargs)
    opt.aggregator = aggregator.bind(model.shared_parameters())

    def closure():
        out = model(X)
        return torch.stack([((out[k] - Y[k]) ** 2).mean() for k in range(2)])

    opt.step(closure)
    update = {n: theta[n] - p.detach() for n, p in zip(NAMES, model.parameters())}
    return theta, update


def grad(theta, k, names):
    t = {n: v.clone().requires_grad_(n in names) for n, v in theta.items()}
    gs = torch.autograd.grad(task_loss(t, k), [t[n] for n in names])
    return dict(zip(names, gs))


def norm(d, names, T=None):
    return math.sqrt(sum(float(((T[n] if T else 1) * d[n]).pow(2).sum()) for n in names))


def flat(d):
    return torch.cat([d[n].reshape(-1) for n in SHARED])


def mgda2(g1, g2):
    w = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    w = min(max(w, 0.0), 1.0)
    return w * g1 + (1 - w) * g2


def unflat(v):
    return {"W": v[:12].reshape(4, 3), "b": v[12:]}


def test_fmtl_matches_the_reference_decomposed_update():
    rho = 0.5
    theta, update = setup(FMTL, A.MGDA(2), rho=rho, adaptive=True, decompose=True)
    clean, perturbed = {}, {}
    for k in range(2):
        names = SHARED + HEAD[k]
        g = grad(theta, k, names)
        T = {n: theta[n].abs() for n in names}
        moved = dict(theta)
        for group in (SHARED, HEAD[k]):
            scale = rho / (norm(g, group, T) + 1e-12)
            for n in group:
                moved[n] = theta[n] + T[n] ** 2 * g[n] * scale
        clean[k], perturbed[k] = g, grad(moved, k, names)
    d_g = mgda2(flat(clean[0]), flat(clean[1]))
    d_h = mgda2(flat(perturbed[0]) - flat(clean[0]), flat(perturbed[1]) - flat(clean[1]))
    expected = {**unflat(d_g + d_h), **{n: perturbed[k][n] for k in range(2) for n in HEAD[k]}}
    for n in NAMES:  # MGDA's weights come from a least-squares solve: 1e-6 relative
        torch.testing.assert_close(update[n], expected[n], atol=1e-8, rtol=1e-6)


def test_fmtl_without_decomposition_is_x_of_the_perturbed_gradients():
    rho = 0.05
    theta, update = setup(FMTL, A.MGDA(2), rho=rho, adaptive=False, decompose=False)
    perturbed = {}
    for k in range(2):
        names = SHARED + HEAD[k]
        g = grad(theta, k, names)
        moved = dict(theta)
        for group in (SHARED, HEAD[k]):
            for n in group:
                moved[n] = theta[n] + rho * g[n] / (norm(g, group) + 1e-12)
        perturbed[k] = grad(moved, k, names)
    torch.testing.assert_close(flat(update), mgda2(flat(perturbed[0]), flat(perturbed[1])), atol=1e-8, rtol=1e-6)


def samo_reference(theta, *, rho, beta, mu, seed, layerwise=True, spectral=None, weights=(0.5, 0.5)):
    """SAMO's stage I and II written out: global gradient, SPSA local estimates with the optimizer's z,
    mixed per layer, one ε per task, the gradient of each task at its own θ+ε_k."""
    g_mean = {n: sum(weights[k] * grad(theta, k, SHARED)[n] for k in range(2)) for n in SHARED}
    probe = NoiseSource(seed)
    perturbed = {}
    for k in range(2):
        z = {n: probe.normal_like(theta[n]) for n in SHARED}
        plus = task_loss({**theta, **{n: theta[n] + mu * z[n] for n in SHARED}}, k)
        minus = task_loss({**theta, **{n: theta[n] - mu * z[n] for n in SHARED}}, k)
        local = {n: (plus - minus) / (2 * mu) * z[n] for n in SHARED}
        if layerwise:
            mix = {n: (1 - beta) * g_mean[n] + beta * g_mean[n].norm() * local[n] / local[n].norm() for n in SHARED}
        else:
            mix = {n: (1 - beta) * g_mean[n] + beta * local[n] for n in SHARED}
        head = grad(theta, k, HEAD[k])
        moved = dict(theta)
        if spectral is None:
            for d, group in ((mix, SHARED), (head, HEAD[k])):
                for n in group:
                    moved[n] = theta[n] + rho * d[n] / (norm(d, group) + 1e-12)
        else:
            for n, d in [*mix.items(), *head.items()]:
                moved[n] = theta[n] + spectral(theta[n], d)
        perturbed[k] = grad(moved, k, SHARED + HEAD[k])
    return perturbed


def clipped(v, max_norm):
    n = float(v.norm())
    return v * (max_norm / (n + 1e-6)) if n > max_norm else v


@pytest.mark.parametrize("layerwise", [True, False])
def test_samo_ls_matches_the_reference(layerwise):
    kw = dict(rho=0.05, beta=0.5, zo_eps=0.01, layerwise=layerwise, max_norm=1.0, seed=7)
    theta, update = setup(SAMO, A.LS(2), **kw)
    perturbed = samo_reference(theta, rho=0.05, beta=0.5, mu=0.01, seed=7, layerwise=layerwise)
    shared = clipped(2 * (flat(perturbed[0]) + flat(perturbed[1])), 1.0)  # ×K, then the norm clip
    torch.testing.assert_close(flat(update), shared, atol=1e-8, rtol=1e-6)
    for k in range(2):
        for n in HEAD[k]:
            torch.testing.assert_close(update[n], perturbed[k][n], atol=1e-8, rtol=1e-6)


def test_samo_mgda_without_clip_is_k_times_mgda_of_the_perturbed_gradients():
    theta, update = setup(SAMO, A.MGDA(2), rho=0.05, beta=0.5, zo_eps=0.01, max_norm=0.0, seed=3)
    perturbed = samo_reference(theta, rho=0.05, beta=0.5, mu=0.01, seed=3)
    torch.testing.assert_close(flat(update), 2 * mgda2(flat(perturbed[0]), flat(perturbed[1])), atol=1e-8,
                               rtol=1e-6)


def test_sage_samo_uses_the_spectral_ascent_and_the_agreement_noise():
    rho, gamma, seed = 0.05, 0.3, 11
    theta, update = setup(SAGESAMO, A.LS(2), rho=rho, gamma=gamma, polar="svd", beta=0.5, zo_eps=0.01,
                          max_norm=0.0, seed=seed)

    def spectral(p, d):
        if p.ndim >= 2:
            U, _, Vh = torch.linalg.svd(d, full_matrices=False)
            return rho * p.norm() * (U @ Vh)
        return rho * d / d.norm()

    perturbed = samo_reference(theta, rho=rho, beta=0.5, mu=0.01, seed=seed + 1, spectral=spectral)
    g0, g1 = flat(grad(theta, 0, SHARED)), flat(grad(theta, 1, SHARED))
    beta = gamma * (1 - float(g0 @ g1 / (g0.norm() * g1.norm())))
    noise = NoiseSource(seed)
    xi = {n: noise.normal_like(theta[n]) for n in NAMES}
    expected = {**unflat(2 * (flat(perturbed[0]) + flat(perturbed[1]))),
                **{n: perturbed[k][n] for k in range(2) for n in HEAD[k]}}
    for n in NAMES:  # polar runs in float32: 1e-6
        torch.testing.assert_close(update[n], expected[n] + beta * xi[n], atol=1e-5, rtol=1e-5)
    assert beta > 0


def test_samo_restores_theta_exactly_and_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    opt = SAMO(list(model.parameters()), torch.optim.SGD, lr=0.0, model=model, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def closure():
        out = model(x)
        return torch.stack([out[:, 0].pow(2).mean(), out[:, 1].abs().mean()])

    reference = model[1].running_mean.clone()
    closure()  # what the first forward of a step does to the statistics
    moved = model[1].running_mean.clone()
    model.load_state_dict(before)
    opt.step(closure)
    assert model.training
    torch.testing.assert_close(model[1].running_mean, moved)  # only the first forward moved them
    assert not torch.equal(moved, reference)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name  # lr 0: θ back bit-exactly after 2K + K extra forwards


def moco_reference(Js, losses, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0):
    K, d = Js[0].shape
    y, lam, out = np.zeros((K, d)), np.ones(K) / K, []
    for t, (J, L) in enumerate(zip(Js, losses), start=1):
        G = J / (np.linalg.norm(J, axis=1, keepdims=True) + 1e-8) * L[:, None]
        y = y - beta / t ** beta_sigma * (y - G)
        v = lam - gamma / t ** gamma_sigma * ((y @ y.T + rho * np.eye(K)) @ lam)
        lam = np.exp(v - v.max()) / np.exp(v - v.max()).sum()
        out.append(y.T @ lam)
    return out


def test_moco_matches_the_reference_over_several_steps_and_resumes():
    g = torch.Generator().manual_seed(4)
    Js = [torch.randn(3, 9, generator=g, dtype=torch.float64) for _ in range(5)]
    losses = [torch.rand(3, generator=g, dtype=torch.float64) + 0.1 for _ in range(5)]
    expected = moco_reference([J.numpy() for J in Js], [L.numpy() for L in losses])
    agg = A.MoCo(3)
    params = [torch.zeros(9, dtype=torch.float64, requires_grad=True)]
    for step, (J, L, ref) in enumerate(zip(Js, losses, expected)):
        if step == 3:  # a resumed run continues identically
            state = agg.state_dict()
            agg = A.MoCo(3)
            agg.load_state_dict(state)
        out = agg.gradients(L, params, per_task=[[row] for row in J])[0]
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-8, rtol=1e-6)  # J is flattened in float32
    assert abs(float(agg.last_weights.sum()) - 1) < 1e-6


def test_perturbation_samo_needs_method_sage(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndataset:\n  name: mtl_digits\nbackbone:\n  name: digit_pairs_cnn\n"
                    "optimizer:\n  method: sam\n  perturbation: samo\n")
    with pytest.raises(UserError, match=r"optimizer.perturbation: not a setting of optimizer method 'sam' \(it belongs to 'sage'\)"):
        load_recipe(path)
    assert load_recipe(path, {"optimizer.method": "sage"}).optimizer.label == "sage-samo"
