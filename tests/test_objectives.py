"""Each DG objective's defining formula on a hand-computed case."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sage_cli.models import Classifier
from sage_cli.objectives import OBJECTIVES
from sage_cli.objectives.adversarial import reverse_gradient
from sage_cli.objectives.penalties import coral_distance, gaussian_kernel_mmd, irm_penalty
from sage_cli.objectives.rsc import rsc_feature_mask


def test_irm_penalty_is_product_of_half_batch_scale_gradients():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
    y = torch.tensor([0, 1, 1, 0])

    def dscale(z, t):  # d/ds CE(s z, t) at s = 1 = mean_i(Σ_c softmax(z_i)_c z_ic − z_i,t_i)
        p = F.softmax(z, 1)
        return float(((p * z).sum(1) - z[torch.arange(len(t)), t]).mean())

    expected = dscale(logits[0::2], y[0::2]) * dscale(logits[1::2], y[1::2])
    assert float(irm_penalty(logits, y).detach()) == pytest.approx(expected, rel=1e-6)


def test_vrex_adds_variance_of_env_risks_after_annealing():
    obj = OBJECTIVES.get("vrex")(hparams={"lambda": 3.0, "anneal_iters": 1}).build(_model(), 2, None)
    model = _model()
    xs, ys = [torch.randn(4, 2), torch.randn(4, 2)], [torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 0])]
    risks = torch.stack([F.cross_entropy(model(x), y) for x, y in zip(xs, ys)])
    variance = ((risks - risks.mean()) ** 2).mean()
    torch.testing.assert_close(obj.losses(model, xs, ys), risks + 1.0 * variance)  # weight 1 while annealing
    obj.after_step(0)
    torch.testing.assert_close(obj.losses(model, xs, ys), risks + 3.0 * variance)
    assert obj.state_dict() == {"update_count": 1}


def test_coral_distance_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    # means (2/3, 2/3) and (1, 0); covariances [[1/3, −1/6], [−1/6, 1/3]] and [[2, 0], [0, 0]]
    mean_gap = ((2 / 3 - 1) ** 2 + (2 / 3) ** 2) / 2
    cov_gap = ((1 / 3 - 2) ** 2 + 2 * (1 / 6) ** 2 + (1 / 3) ** 2) / 4
    assert float(coral_distance(x, y)) == pytest.approx(mean_gap + cov_gap, rel=1e-6)


def test_mmd_by_explicit_sums():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.5], [3.0]])
    gammas = (0.1, 1.0)

    def k(a, b):
        return sum(math.exp(-g * (a - b) ** 2) for g in gammas)

    xs, ys = [0.0, 1.0], [0.5, 3.0]
    kxx = sum(k(a, b) for a in xs for b in xs) / 4
    kyy = sum(k(a, b) for a in ys for b in ys) / 4
    kxy = sum(k(a, b) for a in xs for b in ys) / 4
    assert float(gaussian_kernel_mmd(x, y, gammas)) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-5)
    assert float(gaussian_kernel_mmd(x, x, gammas)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_reversal_flips_and_scales():
    f = torch.tensor([1.0, -2.0], requires_grad=True)
    (reverse_gradient(f, 0.5) * torch.tensor([3.0, 4.0])).sum().backward()
    torch.testing.assert_close(f.grad, torch.tensor([-1.5, -2.0]))


def test_dann_trains_discriminator_against_featurizer():
    model = _model()
    obj = OBJECTIVES.get("dann")().build(model, 2, 2)
    xs, ys = [torch.randn(4, 2), torch.randn(4, 2) + 1], [torch.tensor([0, 1, 0, 1])] * 2
    losses = obj.losses(model, xs, ys)
    disc_w = obj.discriminator[-1].weight
    g_disc, g_feat = torch.autograd.grad(losses.mean(), [disc_w, model.featurizer.weight])
    # the same loss without reversal: the discriminator's gradient is the same, the featurizer's differs
    feats = [model.featurizer(x) for x in xs]
    plain = torch.stack([F.cross_entropy(model.classifier(f), y) +
                         F.cross_entropy(obj.discriminator(f), torch.full((4,), k)) for k, (f, y) in enumerate(zip(feats, ys))])
    g_disc2, g_feat2 = torch.autograd.grad(plain.mean(), [disc_w, model.featurizer.weight])
    torch.testing.assert_close(g_disc, g_disc2)
    assert not torch.allclose(g_feat, g_feat2)
    assert len(obj.parameters()) == 6


def test_cdann_discriminator_sees_the_class():
    model = _model()
    obj = OBJECTIVES.get("cdann")().build(model, 2, 2)
    assert len(obj.parameters()) == 7  # the discriminator plus the class embeddings
    xs = [torch.randn(4, 2), torch.randn(4, 2) + 1]
    a = obj.losses(model, xs, [torch.tensor([0, 0, 0, 0])] * 2)
    b = obj.losses(model, xs, [torch.tensor([1, 1, 1, 1])] * 2)
    feats = [model.featurizer(x) for x in xs]
    disc_a = torch.stack([F.cross_entropy(obj.discriminator(f + obj.class_embeddings(torch.zeros(4, dtype=torch.long))),
                                          torch.full((4,), k)) for k, f in enumerate(feats)])
    cls_a = torch.stack([F.cross_entropy(model.classifier(f), torch.zeros(4, dtype=torch.long)) for f in feats])
    torch.testing.assert_close(a, cls_a + disc_a)
    assert not torch.allclose(a - cls_a, b - torch.stack([F.cross_entropy(model.classifier(f), torch.ones(4, dtype=torch.long))
                                                         for f in feats]))


def test_rsc_mask_drops_the_top_third_of_each_sample():
    grads = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(rsc_feature_mask(grads, 1 / 3), torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))


def test_fish_meta_update_by_hand():
    from sage_cli.optim import SinglePassOptimizer

    torch.manual_seed(0)
    model = Classifier(nn.Linear(2, 2, bias=False), nn.Identity(), 2)
    w0 = model.featurizer.weight.detach().clone()
    xs = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])]
    ys = [torch.tensor([0]), torch.tensor([1])]
    obj = OBJECTIVES.get("fish")(hparams={"meta_lr": 0.5}).build(model, 2, None)
    lr = 0.1
    obj.update(model, xs, ys, None, lambda m: SinglePassOptimizer(m.parameters(), torch.optim.SGD, lr=lr))
    w = w0.clone()
    for x, y in zip(xs, ys):  # one SGD step per env, in turn, on a clone
        wr = w.clone().requires_grad_(True)
        w = w - lr * torch.autograd.grad(F.cross_entropy(x @ wr.T, y), wr)[0]
    torch.testing.assert_close(model.featurizer.weight.detach(), w0 + 0.5 * (w - w0))


def test_iib_replaces_head_and_adds_its_terms():
    model = _model(features=4)
    obj = OBJECTIVES.get("iib")(hparams={"lambda_beta": 0.5, "lambda_inv_risks": 3.0}).build(model, 2, 2)
    head = model.classifier
    assert type(head).__name__ == "IIBHead"
    xs, ys = [torch.randn(5, 2), torch.randn(5, 2)], [torch.tensor([0, 1, 0, 1, 1]), torch.tensor([1, 1, 0, 0, 1])]
    torch.manual_seed(7)
    losses = obj.losses(model, xs, ys)
    # by hand, with the same reparameterisation draw
    torch.manual_seed(7)
    h = head.encoder(model.featurizer(torch.cat(xs)))
    mu, logvar = head.mu(h), head.logvar(h)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    y = torch.cat(ys)
    env = torch.tensor([[0.0]] * 5 + [[1.0]] * 5)
    inv = F.cross_entropy(head.classifier(z), y, reduction="none")
    env_risk = F.cross_entropy(obj.env_classifier(torch.cat([z, env], 1)), y, reduction="none")
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    per = inv + env_risk + 0.5 * kl
    expected = torch.stack([per[:5].mean(), per[5:].mean()]) + 3.0 * (inv.mean() - env_risk.mean()) ** 2
    torch.testing.assert_close(losses, expected)
    model.eval()  # prediction goes through the bottleneck's mean
    torch.testing.assert_close(model(xs[0]), head.classifier(head.mu(head.encoder(model.featurizer(xs[0])))))


def _model(features=2):
    torch.manual_seed(0)
    return Classifier(nn.Linear(2, features), nn.Linear(features, 2), features)
