"""The defining formula of each sharpness/alignment baseline, on hand-computed quadratic cases."""

import pytest
import torch

from sage_cli.optim import DISAM, GAM, GGA, GSAM, SAGM, SGLD
from sage_cli.optim.gga import gga_accepts

A = torch.tensor([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.3]])
W0 = torch.tensor([1.0, -2.0, 0.5])
LR = 0.1


class Vec(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(W0.clone())


def quad(m):  # L(w) = ½ wᵀAw, ∇L = A w
    return 0.5 * m.w @ A @ m.w


def grad(w):
    return A @ w


def _stepped(opt_cls, **kw):
    m = Vec()
    opt = opt_cls(m.parameters(), torch.optim.SGD, lr=LR, **kw)
    opt.step(lambda: quad(m))
    return m.w.detach()


def test_gsam_descends_along_perturbed_minus_alpha_orthogonal_part():
    rho, alpha = 0.3, 0.2
    g = grad(W0)
    gh = grad(W0 + rho * g / g.norm())
    g_perp = g - (g @ gh) / (gh @ gh) * gh
    expected = W0 - LR * (gh - alpha * g_perp)
    torch.testing.assert_close(_stepped(GSAM, rho=rho, alpha=alpha), expected)


def test_sagm_perturbs_with_alpha_and_averages_gradients():
    rho, alpha = 0.3, 0.05
    g = grad(W0)
    gh = grad(W0 + (rho / g.norm() - alpha) * g)
    torch.testing.assert_close(_stepped(SAGM, rho=rho, alpha=alpha), W0 - LR * 0.5 * (g + gh))


def test_disam_ascends_on_mean_minus_variance_of_domain_losses():
    rho, lam = 0.3, 0.5
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])

    def losses(w):  # L_k = (c_k·w)²
        return (c @ w) ** 2

    w = W0.clone().requires_grad_(True)
    L = losses(w)
    direction = torch.autograd.grad(L.mean() - lam * ((L - L.mean()) ** 2).mean(), w)[0]
    w_adv = (W0 + rho * direction / direction.norm()).requires_grad_(True)
    descent = torch.autograd.grad(losses(w_adv).mean(), w_adv)[0]

    m = Vec()
    opt = DISAM(m.parameters(), torch.optim.SGD, rho=rho, variance_weight=lam, lr=LR)
    opt.step(lambda: losses(m.w))
    torch.testing.assert_close(m.w.detach(), W0 - LR * descent)
    assert opt.stats["domain_loss_variance"] == pytest.approx(float(((L - L.mean()) ** 2).mean().detach()), rel=1e-5)


def test_gam_four_gradients_and_decomposition():
    rho, norm_rho, gamma = 0.05, 0.2, 0.1
    b1, b2, b3 = 1.0, -1.0, 1.0
    g0 = grad(W0)
    g1 = grad(W0 + rho * g0 / g0.norm())
    d = g1 - g0
    e12 = norm_rho * d / d.norm()
    g2 = grad(W0 + e12)
    g3 = grad(W0 + e12 + rho * g2 / g2.norm())
    m, u = g0 + abs(b2) * g2, b1 * g1 + b3 * g3
    cos = (m @ u) / (m.norm() * u.norm())
    final = u - gamma * (m - cos * m.norm() * u / u.norm())
    got = _stepped(GAM, rho=rho, norm_rho=norm_rho, gamma=gamma, beta1=b1, beta2=b2, beta3=b3)
    torch.testing.assert_close(got, W0 - LR * final)


def test_sgld_adds_constant_seeded_noise():
    sigma = 0.7
    xi = torch.randn(3, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(_stepped(SGLD, sigma=sigma, seed=11), W0 - LR * (grad(W0) + sigma * xi))


@pytest.mark.parametrize("loss, best_loss, sim, best_sim, accept", [
    (1.00, 1.00, 0.5, 0.4, True),    # better agreement, same loss
    (1.09, 1.00, 0.5, 0.4, True),    # loss worse by less than the tolerance
    (1.11, 1.00, 0.5, 0.4, False),   # loss worse by more than the tolerance
    (0.90, 1.00, 0.4, 0.4, False),   # agreement not strictly better
    (0.90, 1.00, 0.3, 0.4, False),
])
def test_gga_acceptance_rule(loss, best_loss, sim, best_sim, accept):
    assert gga_accepts(loss, best_loss, sim, best_sim, tolerance=0.1) is accept


def test_gga_searches_only_inside_its_window_and_keeps_an_accepted_point():
    c = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3]])
    m = Vec()
    opt = GGA(m.parameters(), torch.optim.SGD, start=0, end=1, candidates=20, neighborhood=0.5, seed=3, lr=0.0)

    def losses():
        return (c @ m.w) ** 2 + 0.1 * (m.w ** 2).sum()

    before = m.w.detach().clone()
    opt.step(losses)  # lr 0: only the annealing moves w
    moved = not torch.equal(m.w.detach(), before)
    assert opt.stats["gga_accepted"] > 0 and moved
    opt.step(losses)
    assert "gga_accepted" in opt.stats
    opt.step(losses)  # step 2 is past the window
    assert "gga_accepted" not in opt.stats
