"""MTL networks. MTAN (Liu et al. 2019) on SegNet, as in the FAMO / Nash-MTL references: a shared
encoder–decoder, per task an attention module at every level, and per task a head (3×3 conv + 1×1 conv;
segmentation log-softmax, depth linear, normals L2-normalised). "Shared parameters" are all but the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TASK_CHANNELS = {"segmentation": None, "depth": 1, "normal": 3}


def conv_layer(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def att_layer(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_mid, 1), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
                         nn.Conv2d(c_mid, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid())


def head(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.Conv2d(c_in, c_out, 1))


class MTAN(nn.Module):
    def __init__(self, tasks: tuple[str, ...], n_classes: int, filters=(64, 128, 256, 512, 512)):
        super().__init__()
        f = list(filters)
        self.tasks = tuple(tasks)
        self.encoder_block = nn.ModuleList([conv_layer(3, f[0])] + [conv_layer(f[i], f[i + 1]) for i in range(4)])
        self.decoder_block = nn.ModuleList([conv_layer(f[0], f[0])] + [conv_layer(f[i + 1], f[i]) for i in range(4)])
        self.conv_block_enc = nn.ModuleList([conv_layer(f[0], f[0]), conv_layer(f[1], f[1])] + [
            nn.Sequential(conv_layer(f[i + 1], f[i + 1]), conv_layer(f[i + 1], f[i + 1])) for i in range(1, 4)])
        self.conv_block_dec = nn.ModuleList([conv_layer(f[0], f[0]), conv_layer(f[0], f[0])] + [
            nn.Sequential(conv_layer(f[i], f[i]), conv_layer(f[i], f[i])) for i in range(1, 4)])
        self.encoder_att = nn.ModuleList([
            nn.ModuleList([att_layer(f[0], f[0], f[0])] + [att_layer(2 * f[i + 1], f[i + 1], f[i + 1]) for i in range(4)])
            for _ in self.tasks])
        self.decoder_att = nn.ModuleList([
            nn.ModuleList([att_layer(2 * f[0], f[0], f[0])] + [att_layer(f[i + 1] + f[i], f[i], f[i]) for i in range(4)])
            for _ in self.tasks])
        self.encoder_block_att = nn.ModuleList([conv_layer(f[0], f[1])] + [
            conv_layer(f[i + 1], f[i + 2]) if i < 3 else conv_layer(f[i + 1], f[i + 1]) for i in range(4)])
        self.decoder_block_att = nn.ModuleList([conv_layer(f[0], f[0])] + [
            conv_layer(f[i + 1], f[i]) if i < 3 else conv_layer(f[i + 1], f[i + 1]) for i in range(4)])
        self.heads = nn.ModuleList([
            head(f[0], n_classes if t == "segmentation" else TASK_CHANNELS[t]) for t in self.tasks])

    def shared_parameters(self):
        heads = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def forward(self, x):
        enc0, enc1, pooled, indices = [], [], [], []
        h = x
        for i in range(5):
            e0 = self.encoder_block[i](h)
            e1 = self.conv_block_enc[i](e0)
            h, idx = F.max_pool2d(e1, 2, 2, return_indices=True)
            enc0.append(e0), enc1.append(e1), pooled.append(h), indices.append(idx)
        ups, dec = [], []
        for i in range(5):
            up = F.max_unpool2d(h if i == 0 else dec[-1], indices[-i - 1], 2, 2)
            d = self.conv_block_dec[-i - 1](self.decoder_block[-i - 1](up))
            ups.append(up), dec.append(d)
        outputs = {}
        for t, task in enumerate(self.tasks):
            a = None
            for j in range(5):
                inp = enc0[j] if j == 0 else torch.cat((enc0[j], a), dim=1)
                a = F.max_pool2d(self.encoder_block_att[j](self.encoder_att[t][j](inp) * enc1[j]), 2, 2)
            for j in range(5):
                a = F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=True)
                a = self.decoder_block_att[-j - 1](a)
                a = self.decoder_att[t][-j - 1](torch.cat((ups[j], a), dim=1)) * dec[j]
            out = self.heads[t](a)
            if task == "segmentation":
                out = F.log_softmax(out, dim=1)
            elif task == "normal":
                out = out / out.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
            outputs[task] = out
        return outputs


class DigitPairsNet(nn.Module):
    """A small shared CNN with one linear head per task, for the embedded two-digit benchmark."""

    def __init__(self, tasks=("left", "right"), n_classes: int = 10):
        super().__init__()
        self.tasks = tuple(tasks)
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d((2, 4)), nn.Flatten(), nn.Linear(256, 64), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(64, n_classes) for _ in self.tasks])

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def forward(self, x):
        z = self.trunk(x)
        return {t: h(z) for t, h in zip(self.tasks, self.heads)}


# registry entries (catalog.MODELS): ``(tasks, n_classes, backbone settings) -> nn.Module``
def mtan(tasks, n_classes: int, cfg=None) -> MTAN:
    return MTAN(tasks, n_classes)


def mtan_narrow(tasks, n_classes: int, cfg=None) -> MTAN:
    """MTAN with filters ÷ 8, for tests and quick looks."""
    return MTAN(tasks, n_classes, filters=(8, 16, 32, 64, 64))


def digit_pairs_cnn(tasks, n_classes: int, cfg=None) -> DigitPairsNet:
    return DigitPairsNet(tasks, n_classes)
