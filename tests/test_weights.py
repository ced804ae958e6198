"""Pretrained weights: tags resolve from the libraries' caches, are fetched before any run exists, are
recorded on the run, and fail offline in one line with exit 2 and no MLflow run."""

from pathlib import Path

import pytest
import torch
from download_fixtures import Mirror
from fixtures import make_tree
from typer.testing import CliRunner

from sage_cli.cli import app
from sage_cli.errors import UserError
from sage_cli.models.weights import prepare, resnet_weights
from sage_cli.recipe import BackboneConfig

RECIPES = Path(__file__).parents[1] / "recipes"
R50_FILE = "resnet50-0676ba61.pth"  # torchvision's IMAGENET1K_V1 file name


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch.hub caches, and a working directory for mlflow.db."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SAGE_DOWNLOAD_MIRROR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path / "data", "officehome", classes=("dog", "house"), per_class=2, size=16)
    return tmp_path


def _run(*sets):
    args = ["run", str(RECIPES / "officehome.yaml"), "--set", "dataset.root=data", "--set", "dataset.image_size=32",
            "--set", "training.steps=2", "--set", "training.checkpoint_freq=1"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def test_an_open_clip_tag_offline_fails_in_one_line_before_any_run(caches):
    result = _run()  # the paper's recipe: ViT-B-16, pretrained: openai
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    line = lines[0]
    assert "CLIP weights 'openai' for ViT-B-16 are not in the cache" in line and str(caches / "hf" / "hub") in line
    assert "huggingface.co cannot be reached" in line
    assert "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/" in line
    assert not (caches / "mlflow.db").exists() and not (caches / "runs").exists()


def test_hf_offline_switch_and_unknown_tags(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _run()
    assert result.exit_code == 2 and "downloads are off (HF_HUB_OFFLINE)" in result.output
    result = _run("backbone.pretrained=laion9b_nope")
    assert result.exit_code == 2 and "'laion9b_nope' is not an open_clip tag for ViT-B-16 (known: openai," in result.output
    result = _run("backbone.name=resnet50", "backbone.model=null", "backbone.pretrained=IMAGENET9K")
    assert result.exit_code == 2 and "not a torchvision tag for resnet50 (known: IMAGENET1K_V1" in result.output
    assert not (caches / "mlflow.db").exists()


def test_resnet_tag_offline_names_the_file_and_the_cache(caches):
    result = _run("backbone.name=resnet50", "backbone.model=null", "backbone.pretrained=imagenet")
    assert result.exit_code == 2
    assert (f"ResNet-50 weights 'imagenet' are not in the cache {caches / 'torch' / 'hub' / 'checkpoints'} and "
            "download.pytorch.org cannot be reached: download https://download.pytorch.org/models/" + R50_FILE) \
        in result.output
    assert not (caches / "mlflow.db").exists()


def test_resnet_weights_from_the_cache_are_used_and_recorded(caches):
    from mlflow.tracking import MlflowClient
    from torchvision.models import resnet50

    cached = caches / "torch" / "hub" / "checkpoints" / R50_FILE
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(resnet50(weights=None).state_dict(), cached)
    result = _run("backbone.name=resnet50", "backbone.model=null", "backbone.pretrained=imagenet", "backbone.freeze_bn=true",
                  "optimizer.method=erm")
    assert result.exit_code == 0, result.output
    assert f"weights: imagenet from the cache {cached}" in result.output
    run_id = result.output.split("mlflow run ")[1].split()[0]
    uri = result.output.split(" FINISHED in ")[1].split()[0]
    tags = MlflowClient(uri).get_run(run_id).data.tags
    weights = prepare(BackboneConfig(name="resnet50", pretrained="imagenet"))
    assert tags["sage.weights"] == "imagenet" and tags["sage.weights_file"] == str(cached)
    assert tags["sage.weights_downloaded"] == "false" and tags["sage.weights_sha256"] == weights.sha256()


def test_a_download_failing_torchvisions_checksum_keeps_nothing(caches, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / R50_FILE).write_bytes(b"not the weights" * 1000)
    with Mirror(served) as mirror:
        import os

        os.environ["SAGE_DOWNLOAD_MIRROR"] = mirror.url
        try:
            with pytest.raises(UserError, match="failed torchvision's checksum"):
                resnet_weights("IMAGENET1K_V1", download=True)
        finally:
            del os.environ["SAGE_DOWNLOAD_MIRROR"]
        assert ("GET", R50_FILE, None) in mirror.requests
    assert not list((caches / "torch" / "hub" / "checkpoints").glob("*"))


def test_weights_from_a_stalled_mirror_time_out_in_one_line(caches, tmp_path, monkeypatch):
    """torch.hub's download has no timeout of its own: a mirror that stops sending mid-file hung `sage run`."""
    served = tmp_path / "served"
    served.mkdir()
    (served / R50_FILE).write_bytes(b"w" * 200_000)
    with Mirror(served) as mirror:
        mirror.behaviour[R50_FILE] = ("stall",)
        monkeypatch.setenv("SAGE_DOWNLOAD_MIRROR", mirror.url)
        monkeypatch.setenv("SAGE_DOWNLOAD_TIMEOUT", "2")
        with pytest.raises(UserError, match="cannot download ResNet-50 weights 'IMAGENET1K_V1'.*timed out"):
            resnet_weights("IMAGENET1K_V1", download=True)
    assert not list((caches / "torch" / "hub" / "checkpoints").glob("*"))  # nothing half-written kept
