"""Backbones: a tiny open_clip ViT (random init, as tests cannot download weights), ResNet-50."""

import pytest
import torch

from sage_cli.errors import UserError
from sage_cli.models import MODELS
from sage_cli.recipe import BackboneConfig, load_recipe
from sage_cli.train.dg import train_dg

QUICKSTART = "recipes/quickstart.yaml"
CLASSES = ["dog", "giraffe", "house"]


def _run(pacs, tmp_path, **backbone):
    values = {"dataset.name": "pacs", "dataset.root": str(pacs), "dataset.image_size": 32, "dataset.test_envs": [3],
              "training.steps": 3, "training.checkpoint_freq": 2, "training.batch_size": 4,
              "training.output_dir": str(tmp_path), "optimizer.lr": 1e-4}
    values.update({f"backbone.{k}": v for k, v in backbone.items()})
    return train_dg(load_recipe(QUICKSTART, values))


def test_tiny_clip_vit_trains_with_sage(pacs, tmp_path):
    result = _run(pacs, tmp_path, name="clip", model="ViT-Tiny-16")
    assert len(result.history) == 2 and result.optimizer.stats["perturbation_norm"] > 0


def test_zero_shot_head_is_clip_text_classifier(pacs):
    import open_clip

    from sage_cli.models.clip import CONFIG_DIR

    torch.manual_seed(0)
    model = MODELS.get("clip")((3, 32, 32), 3, BackboneConfig(name="clip", model="ViT-Tiny-16", head="zeroshot"), CLASSES)
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-Tiny-16", pretrained=None).eval()
    tokens = open_clip.get_tokenizer("ViT-Tiny-16")([f"a photo of a {c}." for c in CLASSES])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        img = torch.nn.functional.normalize(reference.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
        expected = reference.logit_scale.exp() * img @ txt.T
        got = model.eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_clip_weights_missing_offline_is_a_clear_error():
    with pytest.raises(UserError, match="'openai' is not an open_clip tag for ViT-Tiny-16"):
        MODELS.get("clip")((3, 32, 32), 3, BackboneConfig(name="clip", model="ViT-Tiny-16", pretrained="openai"))
    with pytest.raises(UserError, match="does not exist"):
        MODELS.get("clip")((3, 32, 32), 3, BackboneConfig(name="clip", model="ViT-Tiny-16", pretrained="/nope/w.pt"))
    with pytest.raises(UserError, match="unknown open_clip model"):
        MODELS.get("clip")((3, 32, 32), 3, BackboneConfig(name="clip", model="ViT-Nope"))


def test_resnet50_local_weights_and_frozen_bn(pacs, tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    weights = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), weights)
    cfg = BackboneConfig(name="resnet50", pretrained=str(weights), freeze_bn=True)
    model = MODELS.get("resnet50")((3, 32, 32), 3, cfg)
    reference = torch.load(weights, weights_only=True)
    assert torch.equal(model.featurizer.net.conv1.weight, reference["conv1.weight"])
    bn = model.featurizer.net.bn1
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert not bn.training and torch.equal(bn.running_mean, before)

    result = _run(pacs, tmp_path, name="resnet50", pretrained=str(weights), freeze_bn=True)
    assert len(result.history) == 2


def test_resnet50_bad_weights_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        MODELS.get("resnet50")((3, 32, 32), 3, BackboneConfig(name="resnet50", pretrained=str(tmp_path / "x.pth")))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="does not fit resnet50"):
        MODELS.get("resnet50")((3, 32, 32), 3, BackboneConfig(name="resnet50", pretrained=str(bad)))
