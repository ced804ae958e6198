"""Each MTL aggregator against a from-scratch reference computation on random Jacobians (within 1e-5)."""

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from sage_cli.mtl import aggregators as A


def _jacobian(K, d=7, seed=0, conflict=True):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, d, generator=g, dtype=torch.float64)
    if conflict:
        J[1] = -0.6 * J[0] + 0.4 * J[1]
    return J


def _min_norm_reference(J):
    from scipy.optimize import minimize

    G = (J @ J.T).numpy()
    K = len(G)
    res = minimize(lambda w: w @ G @ w, np.ones(K) / K, jac=lambda w: 2 * G @ w, bounds=[(0, 1)] * K,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},), method="SLSQP",
                   options={"ftol": 1e-16, "maxiter": 1000})
    return torch.as_tensor(res.x) @ J


@pytest.mark.parametrize("K, seed", [(2, 0), (3, 1), (4, 2), (3, 3)])
def test_mgda_is_the_min_norm_point(K, seed):
    J = _jacobian(K, seed=seed)
    ours = A.MGDA(K).combine(J)
    torch.testing.assert_close(ours, _min_norm_reference(J), atol=1e-5, rtol=0)
    if K == 2:  # closed form for two tasks
        g1, g2 = J
        w1 = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
        w1 = min(max(w1, 0.0), 1.0)
        torch.testing.assert_close(ours, w1 * g1 + (1 - w1) * g2, atol=1e-9, rtol=0)
    from torchjd.aggregation import MGDA as TorchJDMGDA  # same problem, approximate Frank–Wolfe

    assert float((TorchJDMGDA(epsilon=1e-6, max_iters=10000)(J) - ours).norm()) < 1e-2


@contextmanager
def aggregator_rng(seed):
    """torch's global RNG as an aggregator built with ``seed`` sets it for TorchJD's draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed))))
        yield


def test_pcgrad_matches_the_papers_algorithm():
    J = _jacobian(3, seed=5)
    agg = A.PCGrad(3, seed=11)
    ours = agg.combine(J)
    # reference: Algorithm 1 of Yu et al., with the same random orders
    with aggregator_rng(11):
        total = torch.zeros_like(J[0])
        for i in range(3):
            order = torch.randperm(3)
            g = J[i].clone()
            for j in order:
                if j == i:
                    continue
                dot = g @ J[j]
                if dot < 0:
                    g = g - dot / (J[j] @ J[j]) * J[j]
            total = total + g
    torch.testing.assert_close(ours, total, atol=1e-5, rtol=0)


def test_imtlg_matches_the_papers_closed_form():
    J = _jacobian(3, seed=7)
    U = J / J.norm(dim=1, keepdim=True)
    D = J[0] - J[1:]
    Ud = U[0] - U[1:]
    alpha_rest = J[0] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
    alpha = torch.cat([1 - alpha_rest.sum(0, keepdim=True), alpha_rest])
    torch.testing.assert_close(A.IMTLG(3).combine(J), alpha @ J, atol=1e-5, rtol=0)


def test_fairgrad_solves_its_fixed_point():
    from scipy.optimize import root

    J = _jacobian(3, seed=9, conflict=False)
    G = (J @ J.T).numpy()
    alpha = 2.0
    w = root(lambda x: G @ x - np.power(np.abs(x), -1 / alpha), np.ones(3) / 3, method="lm", tol=1e-14).x
    assert np.allclose(G @ w, w ** (-1 / alpha), atol=1e-8)
    torch.testing.assert_close(A.FairGrad(3).combine(J), torch.as_tensor(w) @ J, atol=1e-5, rtol=0)


def test_cagrad_matches_reference_for_two_tasks():
    J = _jacobian(2, seed=4)
    c = 0.4
    G = J @ J.T
    g0 = J.mean(0)
    phi = c * float(g0.norm())

    def objective(w1):
        w = torch.tensor([w1, 1 - w1], dtype=torch.float64)
        return float(w @ G @ torch.ones(2, dtype=torch.float64) / 2 + phi * torch.sqrt(w @ G @ w))

    lo, hi = 0.0, 1.0
    for _ in range(200):  # ternary search: the objective is convex in w1
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, m2) if objective(m1) < objective(m2) else (m1, hi)
    w = torch.tensor([lo, 1 - lo], dtype=torch.float64)
    gw = w @ J
    expected = (g0 + phi / gw.norm() * gw) / (1 + c ** 2)
    torch.testing.assert_close(A.CAGrad(2).combine(J), expected, atol=1e-5, rtol=0)


def test_loss_weightings():
    L = torch.tensor([0.5, 2.0, 4.0])
    assert float(A.LS(3).total_loss(L)) == pytest.approx(6.5)
    assert float(A.SI(3).total_loss(L)) == pytest.approx(math.log(0.5) + math.log(2) + math.log(4))
    rlw = A.RLW(3, seed=3)
    rlw.total_loss(L)
    expected = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(3)), -1)
    torch.testing.assert_close(rlw.last_weights, expected)
    uw = A.UW(3)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.0, 1.0, -1.0]))
    s = torch.tensor([0.0, 1.0, -1.0])
    assert float(uw.total_loss(L).detach()) == pytest.approx(float((0.5 * (torch.exp(-s) * L + s)).sum()))


def test_dwa_uses_the_last_two_epochs():
    dwa = A.DWA(2)
    L = torch.tensor([1.0, 1.0])
    dwa.total_loss(L)
    torch.testing.assert_close(dwa.last_weights, torch.ones(2))
    dwa.end_epoch(torch.tensor([2.0, 4.0]))
    dwa.end_epoch(torch.tensor([1.0, 4.0]))
    r = torch.tensor([0.5, 1.0])
    dwa.total_loss(L)
    torch.testing.assert_close(dwa.last_weights, 2 * torch.softmax(r / 2.0, -1))


def test_famo_moves_weight_to_the_task_that_improved_least():
    famo = A.FAMO(2)
    before, after = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.99])  # task 0 improved a lot, task 1 barely
    famo.after_update(before, after)
    z = torch.softmax(famo.logits.detach(), -1)
    assert z[1] > z[0]


def test_task_heads_get_their_own_gradient_and_shared_the_combined_one():
    shared = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    head0, head1 = torch.nn.Parameter(torch.tensor(2.0)), torch.nn.Parameter(torch.tensor(3.0))
    losses = torch.stack([(shared * head0).sum() ** 2, (shared * head1).sum() ** 2 + shared[0]])
    per_task = [torch.autograd.grad(losses[k], [shared, head0, head1], retain_graph=True, allow_unused=True)
                for k in range(2)]
    grads = A.MGDA(2).bind([shared]).gradients(losses, [shared, head0, head1])
    J = torch.stack([per_task[0][0], per_task[1][0]]).double()
    torch.testing.assert_close(grads[0].double(), A.MGDA(2).combine(J), atol=1e-6, rtol=0)
    assert float(grads[1]) == pytest.approx(float(per_task[0][1]))  # head 0: task 0's gradient only
    assert float(grads[2]) == pytest.approx(float(per_task[1][2]))


def test_graddrop_matches_algorithm_1_with_the_same_draws():
    J = _jacobian(3, seed=12)
    agg = A.GradDrop(3, seed=4)
    ours = agg.combine(J)
    with aggregator_rng(4):
        P = 0.5 * (1 + J.sum(0) / J.abs().sum(0))
        U = torch.rand(P.shape, dtype=J.dtype)
    keep_positive = P > U
    expected = sum(torch.where(keep_positive, (g > 0) * g, (g < 0) * g) for g in J)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_nash_mtl_solves_the_bargaining_equations():
    from scipy.optimize import root

    for seed in range(4):
        g = torch.Generator().manual_seed(seed)  # gradients sharing a direction: the bargaining set is non-empty
        J = (torch.randn(1, 10, generator=g, dtype=torch.float64)
             + 0.7 * torch.randn(3, 10, generator=g, dtype=torch.float64)) * 0.1
        ours = A.NashMTL(3).combine(J)
        G = (J @ J.T).numpy()
        alpha = root(lambda a: G @ a - 1 / a, np.ones(3), method="lm", tol=1e-14).x  # α ∘ Gα = 1
        expected = torch.as_tensor(alpha) @ J
        if float(expected.norm()) > 1.0:  # the reference clips the update's norm at max_norm = 1
            expected = expected / expected.norm()
        # the reference's ECOS iterations stop at a tolerance of 1e-3 on the normalised problem
        assert float((ours - expected).norm() / expected.norm()) < 1e-3
