"""Declared protocols: ``protocol: disam`` on a generated PACS folder with generated kfold split files uses exactly
the documented splits, transforms, batch composition, length and selection; the default keeps DomainBed's."""

import pytest
import torch
from fixtures import make_tree
from PIL import Image
from torchvision import transforms as T

from sage_cli.catalog import card
from sage_cli.errors import UserError
from sage_cli.protocols import PRESETS, describe
from sage_cli.recipe import load_recipe
from sage_cli.train.checkpoint import Record
from sage_cli.train.dg import Batcher, load_dg_data, select, steps_per_epoch, train_dg

QUICKSTART = "recipes/quickstart.yaml"
CLASSES = ("dog", "giraffe", "house")


def write_kfold(base, val_per_class=1):
    """PACS's official split files as its authors ship them (``<env>_<part>_kfold.txt``, lines
    ``<env>/<class>/<file> <1-based label>``): per class, the last ``val_per_class`` files are crossval."""
    folder = base / "splits"
    folder.mkdir(exist_ok=True)
    membership = {}
    for env in card("pacs").envs:
        parts = {"train": [], "crossval": []}
        for label, cls in enumerate(CLASSES, 1):
            files = sorted((base / env / cls).iterdir())
            for i, f in enumerate(files):
                part = "crossval" if i >= len(files) - val_per_class else "train"
                parts[part].append(f"{env}/{cls}/{f.name} {label}")
        for part, lines in parts.items():
            (folder / f"{env}_{part}_kfold.txt").write_text("\n".join(lines) + "\n")
        membership[env] = {part: sorted(line.split()[0] for line in lines) for part, lines in parts.items()}
    return membership


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    base = make_tree(root, "pacs", classes=CLASSES, per_class=4)
    return root, base, write_kfold(base)


BASE = "name: protocols\nbackbone: {name: small_cnn}\noptimizer: {method: sage, rho: 0.003, gamma: 0.001}\n"


def _recipe(root, **extra):
    """A recipe that leaves every protocol setting to its preset (the quickstart gives its holdout fraction)."""
    path = root / "protocols.yaml"
    if not path.exists():
        path.write_text(BASE)
    values = {"protocol": "disam", "dataset.name": "pacs", "dataset.root": str(root), "dataset.image_size": 32,
              "dataset.test_envs": [0], "training.batch_size": 4, "training.epochs": 2, "dataset.workers": 0}
    values.update(extra)
    return load_recipe(path, values)


def _rel(split, base):
    return sorted(split.env.samples[int(i)][0].relative_to(base).as_posix() for i in split.indices)


def test_disam_uses_the_official_split_files(pacs):
    root, base, membership = pacs
    data = load_dg_data(_recipe(root))
    for i, env in enumerate(card("pacs").envs):
        assert _rel(data.splits[i]["in"], base) == membership[env]["train"]  # 3 per class
        assert _rel(data.splits[i]["out"], base) == membership[env]["crossval"]  # 1 per class
        assert (len(data.splits[i]["in"]), len(data.splits[i]["out"])) == (9, 3)


def test_official_split_errors_are_one_line(pacs, tmp_path):
    root, base, _ = pacs
    other = tmp_path / "copy"
    make_tree(other, "pacs", classes=CLASSES, per_class=4)
    with pytest.raises(UserError, match=r"needs the split file .*art_painting_train_kfold.txt"):
        load_dg_data(_recipe(other))
    write_kfold(other / "PACS")
    bad = other / "PACS" / "splits" / "cartoon_crossval_kfold.txt"
    bad.write_text(bad.read_text().replace(" 3\n", " 1\n", 1))
    with pytest.raises(UserError, match=r"cartoon_crossval_kfold.txt:\d+: cartoon/house/\S+ has label 1, its folder says 3"):
        load_dg_data(_recipe(other))


def test_datasets_without_split_files_take_the_presets_seeded_holdout(tmp_path):
    root = tmp_path
    make_tree(root, "vlcs", classes=CLASSES, per_class=10)
    recipe = _recipe(root, **{"dataset.name": "vlcs"})
    data = load_dg_data(recipe)
    assert recipe.dataset.holdout_fraction == 0.1  # DISAM's split_list(…, 0.9)
    assert all((len(s["in"]), len(s["out"])) == (27, 3) for s in data.splits)
    assert any("vlcs has no official split files: a seeded holdout" in line for line in describe(recipe))


def test_disam_transforms_are_the_documented_ones(pacs):
    root, base, _ = pacs
    data = load_dg_data(_recipe(root))
    env = data.splits[0]["in"].env
    crop, flip, jitter, gray, _ = env.train_transform.transforms
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (32, 32) and crop.scale == (0.7, 1.0)
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(flip, T.RandomHorizontalFlip) and isinstance(gray, T.RandomGrayscale)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4),
                                                                                  (-0.4, 0.4))
    # evaluation: DISAM's default_transform_test, bicubic Resize(S) of the short side then CenterCrop(S)
    path = env.samples[0][0]
    x, _ = env.load(0, train=False)
    with Image.open(path) as im:
        expected = T.PILToTensor()(T.CenterCrop(32)(T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)(
            im.convert("RGB"))))
    assert torch.equal(x, expected)
    assert data.splits[0]["in"].env.normalize.mean == (0.485, 0.456, 0.406)  # small_cnn: ImageNet statistics
    clip = load_dg_data(_recipe(root, **{"backbone.name": "clip", "backbone.model": "ViT-Tiny-16"}))
    assert clip.splits[0]["in"].env.normalize.mean == (0.48145466, 0.4578275, 0.40821073)
    # the default protocol keeps DomainBed's transforms
    domainbed = load_dg_data(_recipe(root, protocol="domainbed", **{"training.steps": 2}))
    dcrop, _, djitter, _, _ = domainbed.splits[0]["in"].env.train_transform.transforms
    assert dcrop.interpolation == T.InterpolationMode.BILINEAR and djitter.hue == (-0.3, 0.3)
    assert isinstance(domainbed.splits[0]["in"].env.eval_transform.transforms[0], T.Resize)
    assert domainbed.splits[0]["in"].env.eval_transform.transforms[0].size == (32, 32)


def test_concat_batches_walk_one_shuffled_concatenation_an_epoch_at_a_time(pacs):
    root, _, _ = pacs
    recipe = _recipe(root)
    data = load_dg_data(recipe)
    batcher = Batcher(data, recipe)
    total = sum(len(data.splits[i]["in"]) for i in data.train_envs)  # 3 envs × 9
    per_epoch = steps_per_epoch(recipe, data)
    assert per_epoch == total // 4 == 6  # the last partial batch (3 images) dropped
    seen, states = [], []
    for _ in range(per_epoch):
        states.append(batcher.state_dict())
        plan = batcher.plan()
        assert sum(len(item.indices) for item in plan.items) == 4
        assert plan.weights.tolist() == [float(len(item.indices)) for item in plan.items]
        seen += [(item.env, int(i)) for item in plan.items for i in item.indices]
    assert len(seen) == len(set(seen)) == 24  # without replacement within the epoch
    assert {env for env, _ in seen} <= set(data.train_envs)
    assert all(i in data.splits[env]["in"].indices.tolist() for env, i in seen)
    next_epoch = batcher.plan()  # the next epoch: a permutation of its own
    again = Batcher(data, recipe)
    again.load_state_dict(states[3])  # resumed mid-epoch: the same batches follow
    replay = [again.plan() for _ in range(4)]
    assert [(it.env, list(it.indices), list(it.seeds)) for it in replay[-1].items] == \
           [(it.env, list(it.indices), list(it.seeds)) for it in next_epoch.items]


def test_a_disam_run_evaluates_per_epoch_and_selects_on_merged_source_validation(pacs, tmp_path):
    root, _, _ = pacs
    recipe = _recipe(root, **{"training.epochs": 3, "training.output_dir": str(tmp_path)})
    result = train_dg(recipe)
    per_epoch = steps_per_epoch(recipe, result.data)
    assert [r.step for r in result.history] == [per_epoch - 1, 2 * per_epoch - 1, 3 * per_epoch - 1]
    assert [r.row["epoch"] for r in result.history] == [1.0, 2.0, 3.0]
    last = result.history[-1].metrics
    sizes = {i: (len(result.data.splits[i]["in"]), len(result.data.splits[i]["out"])) for i in range(4)}
    merged = sum(last[f"env{i}_out_acc"] * sizes[i][1] for i in (1, 2, 3)) / sum(sizes[i][1] for i in (1, 2, 3))
    assert last["merged_out_acc"] == pytest.approx(merged)
    whole = (last["env0_in_acc"] * sizes[0][0] + last["env0_out_acc"] * sizes[0][1]) / sum(sizes[0])
    assert last["env0_all_acc"] == pytest.approx(whole)  # the test domain's whole list


def test_selection_takes_the_first_best_checkpoint_of_its_own_data(pacs):
    root, _, _ = pacs
    recipe = _recipe(root)
    data = load_dg_data(recipe)

    def record(step, merged, test, train_out):
        metrics = {"merged_out_acc": merged, "env0_all_acc": test, "env0_in_acc": 0.0,
                   **{f"env{i}_out_acc": train_out for i in (1, 2, 3)}}
        return Record(step, metrics, {})

    history = [record(5, .5, .9, .8), record(11, .7, .4, .1), record(17, .7, .6, .2), record(23, .6, .95, .3)]
    assert select(history, recipe, data).step == 11  # merged source validation; ties: the earlier epoch
    assert select(history, _recipe(root, **{"training.selection": "oracle"}), data).step == 23
    assert select(history, _recipe(root, **{"training.selection": "training_domain"}), data).step == 5


def test_every_preset_setting_is_overridable_and_the_default_is_domainbed():
    recipe = load_recipe(QUICKSTART, {"protocol": "disam", "training.batch_sampling": "per_env"})
    assert recipe.training.batch_sampling == "per_env" and recipe.training.unit == "epochs"
    assert "protocol" in recipe.identity() and "batch_sampling" not in recipe.identity()["training"]  # per_env: default
    plain = load_recipe(QUICKSTART)
    assert "protocol" not in plain.identity()
    for key, setting in PRESETS["domainbed"].items():  # the default protocol is every field's default
        section, name = key.split(".")
        assert getattr(getattr(plain, section), name) == setting.value or key == "dataset.holdout_fraction"
    # a planner starts again from what was given, so switching the protocol back leaves no preset value behind
    again = load_recipe(QUICKSTART, {"protocol": "disam"}).given()
    assert "batch_sampling" not in again["training"] and again["protocol"] == "disam"
    with pytest.raises(UserError, match="protocol 'disam' is a DG protocol"):
        load_recipe("recipes/mtl_quickstart.yaml", {"protocol": "disam"})


def test_a_disam_run_stopped_mid_epoch_with_workers_resumes_bit_identically(pacs, tmp_path):
    from sage_cli.errors import Preempted

    root, _, _ = pacs
    recipe = _recipe(root, **{"training.epochs": 3, "dataset.workers": 2, "training.output_dir": str(tmp_path)})
    whole = train_dg(recipe)
    steps = []
    with pytest.raises(Preempted) as stopped:  # mid-way through the second epoch (6 steps an epoch)
        train_dg(recipe, checkpoint_path=tmp_path / "ckpt.pt", progress=steps.append, should_stop=lambda: len(steps) >= 9)
    assert stopped.value.step == 8
    resumed = train_dg(recipe, checkpoint_path=tmp_path / "ckpt.pt")
    assert resumed.resumed_from == 9
    def metrics(history):  # the step time is the clock's
        return [{k: v for k, v in r.metrics.items() if k != "step_time"} for r in history]

    assert metrics(resumed.history) == metrics(whole.history)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()))
