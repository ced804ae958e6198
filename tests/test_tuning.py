"""Tuning modes of CLIP ViTs: full fine-tuning, linear probing, VPT (prompt tokens and head, encoder frozen)."""

import pytest
import torch

from sage_cli.catalog import MODELS
from sage_cli.models.clip import PromptedTransformer
from sage_cli.recipe import BackboneConfig, load_recipe
from sage_cli.train.dg import train_dg

QUICKSTART = "recipes/quickstart.yaml"


def _recipe(pacs, tmp_path, method, **backbone):
    values = {"dataset.name": "pacs", "dataset.root": str(pacs), "dataset.image_size": 32, "dataset.test_envs": [3],
              "dataset.workers": 0, "training.steps": 3, "training.checkpoint_freq": 2, "training.batch_size": 4,
              "training.output_dir": str(tmp_path), "optimizer.method": method, "optimizer.lr": 1e-2,
              "backbone.name": "clip", "backbone.model": "ViT-Tiny-16"}
    if method == "erm":
        values.update({"optimizer.rho": None, "optimizer.gamma": None})
    values.update({f"backbone.{k}": v for k, v in backbone.items()})
    return load_recipe(QUICKSTART, values)


def _initial(recipe, data):
    torch.manual_seed(recipe.training.seed)  # as train() seeds before building the model
    return MODELS.get("clip")(data.input_shape, data.n_classes, recipe.backbone, data.classes)


@pytest.mark.parametrize("method", ["erm", "sam", "sage"])
def test_vpt_trains_prompts_and_head_only(pacs, tmp_path, method):
    recipe = _recipe(pacs, tmp_path, method, tuning="vpt", prompt_tokens=3)
    result = train_dg(recipe)
    before = dict(_initial(recipe, result.data).named_parameters())
    after = dict(result.model.named_parameters())
    trained = {n for n, p in after.items() if p.requires_grad}
    assert trained == {"featurizer.visual.transformer.prompt0", "featurizer.visual.transformer.prompt1",
                       "classifier.weight", "classifier.bias"}  # deep: a prompt per block of the 2
    for name, p in after.items():
        if name in trained:
            assert not torch.equal(p, before[name]), f"{name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{name} of the frozen encoder changed"
    if method == "sage":  # the one-backward engine covers the prompt parameters
        assert result.optimizer.per_domain.path == "one-backward", result.optimizer.per_domain.reason


def test_linear_probing_trains_the_head_only(pacs, tmp_path):
    recipe = _recipe(pacs, tmp_path, "sage", tuning="linear")
    result = train_dg(recipe)
    assert {n for n, p in result.model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    before = dict(_initial(recipe, result.data).named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in result.model.named_parameters() if n.startswith("featurizer."))


def test_prompts_are_put_after_the_class_token_and_dropped_before_pooling():
    torch.manual_seed(0)
    shallow = MODELS.get("clip")((3, 32, 32), 3, BackboneConfig(name="clip", model="ViT-Tiny-16", tuning="vpt",
                                                                prompt_tokens=2, prompt_depth="shallow"))
    transformer = shallow.featurizer.visual.transformer
    assert isinstance(transformer, PromptedTransformer) and transformer.depth == 1
    bound = (6 / (3 * 16 * 16 + 64)) ** 0.5  # VPT's uniform initialisation for 16×16 patches, width 64
    assert transformer.prompt0.abs().max() <= bound and transformer.prompt0.shape == (2, 64)
    seen = []
    hook = transformer.inner.resblocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 1 + 4, 64)  # the class token and 4 patches
    out = transformer(x)
    hook.remove()
    assert seen[0].shape == (2, 1 + 2 + 4, 64) and torch.equal(seen[0][:, 1:3], transformer.prompt0.expand(2, -1, -1))
    assert torch.equal(seen[0][:, :1], x[:, :1]) and torch.equal(seen[0][:, 3:], x[:, 1:])
    assert out.shape == x.shape


def test_tuning_is_part_of_the_identity_and_prompt_settings_need_vpt(pacs, tmp_path):
    full = _recipe(pacs, tmp_path, "sage")
    vpt = _recipe(pacs, tmp_path, "sage", tuning="vpt")
    assert full.hash() != vpt.hash() and vpt.identity()["backbone"]["tuning"] == "vpt"
    assert "tuning" not in full.identity()["backbone"]
    assert _recipe(pacs, tmp_path, "sage", tuning="vpt", prompt_tokens=5).hash() != vpt.hash()
    with pytest.raises(Exception, match="prompt_tokens acts only with tuning: vpt"):
        _recipe(pacs, tmp_path, "sage", prompt_tokens=5)
