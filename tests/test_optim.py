import copy

import pytest
import torch
from helpers import clone_params, env_batches, per_env_losses, tiny_net

from sage_cli.optim import ASAM, SAGE, SAM, MuonWithAdam, SinglePassOptimizer, polar


class RecordingSGD(torch.optim.SGD):
    """SGD that remembers the parameters it was handed at each step (to see the restored θ)."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def _step(opt, model, xs, ys, n=1):
    for _ in range(n):
        opt.step(lambda: per_env_losses(model, xs, ys))


# --------------------------------------------------------------------------------- restore and identity
def test_restore_is_bit_exact_not_subtraction():
    model = tiny_net()
    xs, ys = env_batches()
    theta = clone_params(model)
    opt = SAGE(model.parameters(), RecordingSGD, rho=0.37, gamma=0.0, lr=0.1)
    _step(opt, model, xs, ys)
    for before, restored in zip(theta, opt.base_optimizer.seen[0]):
        assert torch.equal(before, restored)
    # the shortcut θ+ε−ε of the authors' precursor code would not have been exact here
    eps = [0.37 * p.norm() * polar(torch.randn_like(p)) if p.ndim >= 2 else 0.37 * torch.ones_like(p)
           for p in theta]
    assert any(not torch.equal((p + e) - e, p) for p, e in zip(theta, eps))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_zero_rho_zero_gamma_equals_plain_base_step(batchnorm):
    xs, ys = env_batches()
    a, b = tiny_net(batchnorm=batchnorm), tiny_net(batchnorm=batchnorm)
    sage = SAGE(a.parameters(), torch.optim.Adam, rho=0.0, gamma=0.0, lr=1e-2, model=a)
    plain = torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(5):
        sage.step(lambda: per_env_losses(a, xs, ys))
        plain.zero_grad()
        per_env_losses(b, xs, ys).mean().backward()
        plain.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.buffers(), b.buffers()):
        assert torch.equal(p, q)


def test_second_forward_leaves_batchnorm_statistics_alone():
    xs, ys = env_batches()
    model = tiny_net(batchnorm=True)
    reference = tiny_net(batchnorm=True)
    opt = SAGE(model.parameters(), torch.optim.SGD, rho=0.1, gamma=0.0, lr=0.0, model=model)
    opt.step(lambda: per_env_losses(model, xs, ys))
    per_env_losses(reference, xs, ys)  # one training-mode forward
    bn, ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1


# -------------------------------------------------------------------------------- agreement and noise
class Linear1(torch.nn.Module):
    def __init__(self, d=5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))


def _agreement_for(directions, gamma=0.3):
    m = Linear1(len(directions[0]))
    opt = SAGE(m.parameters(), torch.optim.SGD, rho=0.0, gamma=gamma, lr=0.0, seed=0)
    c = torch.tensor(directions, dtype=torch.float32)
    opt.first_step(c @ m.w)  # L_k = c_k·w, so g_k = c_k exactly
    return opt.stats


def test_agreement_identical_gradients():
    stats = _agreement_for([[1.0, 2, 3, 0, 1]] * 3)
    assert stats["agreement"] == pytest.approx(1.0, abs=1e-6)
    assert stats["noise_scale"] == pytest.approx(0.0, abs=1e-6)


def test_agreement_opposite_gradients():
    stats = _agreement_for([[1.0, 2, 3, 0, 1], [-1.0, -2, -3, 0, -1]], gamma=0.3)
    assert stats["agreement"] == pytest.approx(-1.0, abs=1e-6)
    assert stats["noise_scale"] == pytest.approx(0.6, abs=1e-6)  # γ(1 − S) = 0.3 · 2


def test_agreement_is_mean_pairwise_cosine():
    dirs = [[1.0, 0, 0, 0, 0], [1.0, 1, 0, 0, 0], [0.0, 0, 1, 0, 0]]
    expected = (2**-0.5 + 0 + 0) / 3
    stats = _agreement_for(dirs, gamma=1.0)
    assert stats["agreement"] == pytest.approx(expected, abs=1e-6)
    assert stats["noise_scale"] == pytest.approx(1 - expected, abs=1e-6)


def test_single_distribution_has_no_noise():
    m = Linear1()
    opt = SAGE(m.parameters(), torch.optim.SGD, rho=0.0, gamma=5.0, lr=1.0, seed=0)
    opt.step(lambda: (m.w ** 2).sum())  # a 0-d loss: K = 1
    assert opt.stats["agreement"] == 1.0 and opt.stats["noise_scale"] == 0.0
    torch.testing.assert_close(m.w.detach(), torch.full((5,), -1.0))  # w − 1·2w exactly, no noise


def test_noise_is_beta_times_seeded_gaussian():
    m = Linear1()
    opt = SAGE(m.parameters(), torch.optim.SGD, rho=0.0, gamma=0.5, lr=1.0, seed=123)
    c = torch.tensor([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]])
    opt.step(lambda: c @ m.w)  # aggregate gradient 0, S = −1, β = 1
    xi = torch.randn(5, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(m.w.detach(), torch.ones(5) - 1.0 * xi)


def test_noise_switch_and_gamma_zero_disable_noise():
    for kwargs in ({"noise": False, "gamma": 0.5}, {"noise": True, "gamma": 0.0}):
        m = Linear1()
        opt = SAGE(m.parameters(), torch.optim.SGD, rho=0.0, lr=1.0, seed=1, **kwargs)
        c = torch.tensor([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]])
        opt.step(lambda: c @ m.w)
        assert opt.stats["noise_scale"] == 0.0
        assert torch.equal(m.w.detach(), torch.ones(5))


def test_state_dict_resumes_noise_stream_and_base_state():
    xs, ys = env_batches()
    a = tiny_net()
    opt_a = SAGE(a.parameters(), torch.optim.Adam, rho=0.05, gamma=0.1, lr=1e-2, seed=7)
    _step(opt_a, a, xs, ys, n=2)
    saved_params = {k: v.clone() for k, v in a.state_dict().items()}
    saved_opt = copy.deepcopy(opt_a.state_dict())  # torch hands out live state tensors
    assert "base" in saved_opt and saved_opt["extra"]["generators"]
    _step(opt_a, a, xs, ys, n=3)

    b = tiny_net(seed=99)
    b.load_state_dict(saved_params)
    opt_b = SAGE(b.parameters(), torch.optim.Adam, rho=0.05, gamma=0.1, lr=1e-2, seed=12345)
    opt_b.load_state_dict(saved_opt)
    _step(opt_b, b, xs, ys, n=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt_b.param_groups is opt_b.base_optimizer.param_groups


def test_param_groups_are_shared_with_base_for_schedulers():
    model = tiny_net()
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=0.01, gamma=0.0, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    xs, ys = env_batches()
    _step(opt, model, xs, ys)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


# ------------------------------------------------------------------------------------- perturbations
def _first_step_eps(**kwargs):
    model = tiny_net()
    xs, ys = env_batches()
    opt = SAGE(model.parameters(), torch.optim.SGD, lr=0.0, seed=0, **kwargs)
    theta = clone_params(model)
    losses = per_env_losses(model, xs, ys)
    grads = torch.autograd.grad(losses.mean(), list(model.parameters()), retain_graph=True)
    opt.first_step(losses)
    eps = [p.detach() - t for p, t in zip(model.parameters(), theta)]
    return theta, grads, eps, opt


@pytest.mark.parametrize("method", ["quintic", "svd", "cubic", "polar_express"])
def test_spectral_perturbation_formula(method):
    rho = 1e-2
    theta, grads, eps, _ = _first_step_eps(rho=rho, gamma=0.0, polar=method, bias_rule="sam")
    for w, g, e in zip(theta, grads, eps):
        if w.ndim >= 2:
            expected = rho * w.norm() * polar(g, method)
        else:
            expected = rho * g / g.norm()
        torch.testing.assert_close(e, expected, atol=1e-6, rtol=1e-4)


def test_ablation_switches():
    rho = 1e-2
    theta, grads, eps, _ = _first_step_eps(rho=rho, gamma=0.0, polar="none")
    w, g, e = theta[0], grads[0], eps[0]
    torch.testing.assert_close(e, rho * w.norm() * g / g.norm(), atol=1e-7, rtol=1e-4)
    theta, grads, eps, _ = _first_step_eps(rho=rho, gamma=0.0, scale_by_weight_norm=False)
    torch.testing.assert_close(eps[0], rho * polar(grads[0]), atol=1e-7, rtol=1e-4)
    theta, grads, eps, _ = _first_step_eps(rho=rho, gamma=0.0, bias_rule="scaled")
    b, gb = theta[1], grads[1]
    torch.testing.assert_close(eps[1], rho * b.norm() * gb / gb.norm(), atol=1e-7, rtol=1e-4)
    theta, grads, eps, _ = _first_step_eps(rho=rho, gamma=0.0, bias_rule="none")
    assert torch.equal(eps[1], torch.zeros_like(eps[1]))


def test_stats_after_step():
    model = tiny_net()
    xs, ys = env_batches()
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=0.01, gamma=0.1, lr=1e-3)
    _step(opt, model, xs, ys)
    for key in ("agreement", "noise_scale", "grad_norm", "perturbation_norm", "loss", "perturbed_loss"):
        assert key in opt.stats
    assert -1.0 <= opt.stats["agreement"] <= 1.0
    assert opt.stats["noise_scale"] == pytest.approx(0.1 * (1 - opt.stats["agreement"]))
    assert opt.stats["perturbation_norm"] > 0


def test_sample_weights_weight_the_aggregate():
    m = Linear1()
    opt = SAGE(m.parameters(), torch.optim.SGD, rho=0.0, gamma=0.0, lr=1.0)
    c = torch.tensor([[1.0, 0, 0, 0, 0], [0.0, 1, 0, 0, 0]])
    opt.step(lambda: c @ m.w, weights=[30, 10])  # n_k: w = 0.75, 0.25
    torch.testing.assert_close(m.w.detach(), torch.tensor([0.25, 0.75, 1, 1, 1]))


def test_bad_hyperparameters_rejected():
    params = list(tiny_net().parameters())
    for kwargs in ({"rho": -1.0}, {"gamma": -1.0}, {"polar": "quartic"}, {"bias_rule": "x"}, {"ns_steps": 0}):
        with pytest.raises(ValueError):
            SAGE(params, torch.optim.SGD, lr=0.1, **kwargs)


# ------------------------------------------------------------------------------------------ baselines
def _two_pass_by_hand(model, xs, ys, lr, eps_fn):
    params = list(model.parameters())
    g = torch.autograd.grad(per_env_losses(model, xs, ys).mean(), params)
    eps = eps_fn(params, g)
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    g2 = torch.autograd.grad(per_env_losses(model, xs, ys).mean(), params)
    with torch.no_grad():
        for p, e, gg in zip(params, eps, g2):
            p.sub_(e)
            p.sub_(lr * gg)


def test_sam_matches_from_scratch_two_pass():
    xs, ys = env_batches()
    a, b = tiny_net(), tiny_net()
    rho, lr = 0.05, 0.1
    opt = SAM(a.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    _step(opt, a, xs, ys)

    def sam_eps(params, g):
        norm = torch.sqrt(sum((x ** 2).sum() for x in g))
        return [rho * x / norm for x in g]

    _two_pass_by_hand(b, xs, ys, lr, sam_eps)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_asam_matches_from_scratch_two_pass():
    xs, ys = env_batches()
    a, b = tiny_net(), tiny_net()
    rho, eta, lr = 0.5, 0.01, 0.1
    opt = ASAM(a.parameters(), torch.optim.SGD, rho=rho, eta=eta, lr=lr)
    _step(opt, a, xs, ys)

    def asam_eps(params, g):
        t = [p.abs() + eta for p in params]
        norm = torch.sqrt(sum(((ti * x) ** 2).sum() for ti, x in zip(t, g)))
        return [rho * ti ** 2 * x / norm for ti, x in zip(t, g)]

    _two_pass_by_hand(b, xs, ys, lr, asam_eps)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_muon_updates_matrices_with_muon_and_the_rest_with_adam():
    model = tiny_net()
    xs, ys = env_batches()
    opt = SinglePassOptimizer(model.parameters(), MuonWithAdam, lr=1e-2)
    kinds = [type(o).__name__ for o in opt.base_optimizer.optimizers]
    assert kinds == ["Muon", "Adam"]
    muon_params = {id(p) for p in opt.base_optimizer.optimizers[0].param_groups[0]["params"]}
    assert muon_params == {id(p) for p in model.parameters() if p.ndim == 2}
    before = clone_params(model)
    _step(opt, model, xs, ys)
    assert all(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert len(opt.param_groups) == 2


# ------------------------------------------------------------------------------- per-group settings
def _two_groups(model, first: dict, second: dict):
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    return [{"params": layers[0].parameters(), **first}, {"params": layers[1].parameters(), **second}]


def test_per_group_rho_for_sam_like_torchs_lr():
    model, xs, ys = tiny_net(), *env_batches()
    theta = clone_params(model)
    opt = SAM(_two_groups(model, {"rho": 0.1}, {}), torch.optim.SGD, rho=0.02, lr=0.0)
    losses = per_env_losses(model, xs, ys)
    grads = torch.autograd.grad(losses.mean(), list(model.parameters()), retain_graph=True)
    opt.first_step(losses)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))  # the global norm, over both groups
    for i, (p, t, g) in enumerate(zip(model.parameters(), theta, grads)):
        rho = 0.1 if i < 2 else 0.02  # the first Linear's weight and bias are the first group
        torch.testing.assert_close(p.detach() - t, rho * g / norm, atol=1e-7, rtol=1e-4)
    assert [g["rho"] for g in opt.param_groups] == [0.1, 0.02]


def test_per_group_rho_and_gamma_for_sage():
    model, xs, ys = tiny_net(), *env_batches()
    theta = clone_params(model)
    opt = SAGE(_two_groups(model, {"rho": 0.0, "gamma": 0.0}, {"rho": 0.05}), torch.optim.SGD,
               rho=0.01, gamma=0.5, lr=1.0, seed=3)
    losses = per_env_losses(model, xs, ys)
    grads = torch.autograd.grad(losses.mean(), list(model.parameters()), retain_graph=True)
    opt.first_step(losses)
    eps = [p.detach() - t for p, t in zip(model.parameters(), theta)]
    assert torch.equal(eps[0], torch.zeros_like(eps[0])) and torch.equal(eps[1], torch.zeros_like(eps[1]))
    torch.testing.assert_close(eps[2], 0.05 * theta[2].norm() * polar(grads[2]), atol=1e-6, rtol=1e-4)
    opt.second_step(per_env_losses(model, xs, ys))
    with_noise = clone_params(model)

    # the same step with γ = 0 everywhere: the first group moves identically, the second by β·ξ less
    quiet = tiny_net()
    opt_q = SAGE(_two_groups(quiet, {"rho": 0.0, "gamma": 0.0}, {"rho": 0.05, "gamma": 0.0}), torch.optim.SGD,
                 rho=0.01, gamma=0.5, lr=1.0, seed=3)
    opt_q.step(lambda: per_env_losses(quiet, xs, ys))
    beta = 0.5 * (1 - opt.stats["agreement"])
    assert beta > 0
    xi = torch.Generator().manual_seed(3)
    noise = [torch.randn(p.shape, generator=xi) for p in with_noise[2:]]  # drawn for the second group only
    for a, b in zip(with_noise[:2], clone_params(quiet)[:2]):
        assert torch.equal(a, b)
    for a, b, n in zip(with_noise[2:], clone_params(quiet)[2:], noise):
        torch.testing.assert_close(b - a, beta * n, atol=1e-6, rtol=1e-4)  # SGD, lr 1: θ − (g + βξ)


def test_a_groups_rho_can_be_scheduled():
    model, xs, ys = tiny_net(), *env_batches()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.04, lr=0.0)
    for group in opt.param_groups:  # what a scheduler does to lr, done to ρ
        group["rho"] = 0.0
    theta = clone_params(model)
    opt.first_step(per_env_losses(model, xs, ys))
    assert all(torch.equal(p.detach(), t) for p, t in zip(model.parameters(), theta))
