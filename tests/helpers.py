"""Small models and losses shared by the optimizer tests."""

import torch
from torch import nn


def tiny_net(seed=0, batchnorm=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def env_batches(seed=0, K=3, n=10):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 4, generator=g) + k for k in range(K)]
    ys = [torch.randint(0, 3, (n,), generator=g) for _ in range(K)]
    return xs, ys


def per_env_losses(model, xs, ys):
    logits = model(torch.cat(xs)).split([len(x) for x in xs])
    return torch.stack([nn.functional.cross_entropy(z, y) for z, y in zip(logits, ys)])


def clone_params(model):
    return [p.detach().clone() for p in model.parameters()]
