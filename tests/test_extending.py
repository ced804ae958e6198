"""CONTRIBUTING.md's promise: an optimizer, an objective, an MTL aggregator, a dataset and a report table are
each one class (or function) plus its registration. Each is registered here, from this file alone, and used."""

from typing import ClassVar, Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from sage_cli.catalog import AGGREGATORS, DATASETS, METHODS, OBJECTIVES
from sage_cli.data.splits import TensorEnv
from sage_cli.mtl.aggregators.base import LossWeighting
from sage_cli.objectives.base import Objective, concat_forward
from sage_cli.optim.base import SinglePassOptimizer
from sage_cli.recipe import load_recipe
from sage_cli.registry import Entry
from sage_cli.settings.aggregators import Aggregator
from sage_cli.settings.methods import Method
from sage_cli.settings.objectives import Hparams
from sage_cli.settings.objectives import Objective as ObjectiveSettings

QUICKSTART = "recipes/quickstart.yaml"
FAST = {"training.steps": 3, "training.checkpoint_freq": 2, "training.batch_size": 8}


# --- an optimizer method: its implementation, then its settings ------------------------------------------
class ScaledGradients(SinglePassOptimizer):
    """The base step on ``scale`` × the gradient (read from each parameter's group)."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, scale: float = 1.0, model=None, **base_kwargs):
        super().__init__(params, base_optimizer, model=model, defaults={"scale": scale}, **base_kwargs)
        self.steps = 0

    @torch.no_grad()
    def adjust_gradients(self, params):
        for p, scale in zip(params, self.per_param("scale")):
            p.grad.mul_(scale)
        self.steps += 1


class ScaledSettings(Method):
    method: Literal["toy_scaled"] = "toy_scaled"
    scale: float = Field(1.0, gt=0)
    implementation: ClassVar[str] = f"{__name__}:ScaledGradients"


# --- an objective ----------------------------------------------------------------------------------------
class TemperedERM(Objective):
    name = "toy_tempered"

    def losses(self, model, xs, ys, weights=None):
        _, logits = concat_forward(model, xs)
        return torch.stack([F.cross_entropy(z / self.hp("temperature"), y) for z, y in zip(logits, ys)])


class TemperedHparams(Hparams):
    temperature: float = Field(1.0, gt=0)


class TemperedSettings(ObjectiveSettings):
    name: Literal["toy_tempered"] = "toy_tempered"
    hparams: TemperedHparams = Field(default_factory=TemperedHparams)
    implementation: ClassVar[str] = f"{__name__}:TemperedERM"


# --- an MTL loss weighting -------------------------------------------------------------------------------
class FirstTaskFirst(LossWeighting):
    def total_loss(self, losses):
        return self.cfg.first_weight * losses[0] + losses[1:].sum()


class FirstTaskFirstSettings(Aggregator):
    name: Literal["toy_first"] = "toy_first"
    first_weight: float = Field(2.0, ge=0)
    implementation: ClassVar[str] = f"{__name__}:FirstTaskFirst"


# --- a DG dataset: three envs of separable blobs ----------------------------------------------------------
class ToyBlobs:
    ENVIRONMENTS = ["a", "b", "c"]
    N_CLASSES = 2
    INPUT_SHAPE = (1, 8, 8)

    def __init__(self, root=None, **_):
        g = torch.Generator().manual_seed(0)
        self.datasets = []
        for shift in range(3):
            y = torch.randint(0, 2, (40,), generator=g)
            x = torch.randn(40, 1, 8, 8, generator=g) * 0.1 + (2 * y - 1).float().reshape(-1, 1, 1, 1) + shift
            self.datasets.append(TensorEnv(x, y))


@pytest.fixture
def registered():
    added = [(METHODS, METHODS.register(ScaledSettings)), (OBJECTIVES, OBJECTIVES.register(TemperedSettings)),
             (AGGREGATORS, AGGREGATORS.register(FirstTaskFirstSettings))]
    DATASETS.register(Entry(f"{__name__}:ToyBlobs", "dg", ("small_cnn",), tuple(ToyBlobs.ENVIRONMENTS)),
                      name="toy_blobs")
    yield
    for registry, settings in added:
        registry.unregister(settings().choice)
    DATASETS.unregister("toy_blobs")


def test_a_method_registered_from_outside_trains(registered, tmp_path):
    from sage_cli.train.dg import train_dg

    recipe = load_recipe(QUICKSTART, {**FAST, "optimizer.method": "toy_scaled", "optimizer.scale": 0.5,
                                      "training.output_dir": str(tmp_path)})
    assert recipe.optimizer.identity() == {"method": "toy_scaled", "scale": 0.5}
    result = train_dg(recipe)
    assert isinstance(result.optimizer, ScaledGradients) and result.optimizer.steps == 3
    assert result.optimizer.param_groups[0]["scale"] == 0.5
    with pytest.raises(Exception, match="not a setting of optimizer method 'toy_scaled'"):
        load_recipe(QUICKSTART, {"optimizer.method": "toy_scaled", "optimizer.gamma": 1.0})


def test_an_objective_registered_from_outside_trains(registered, tmp_path):
    from sage_cli.train.dg import train_dg

    recipe = load_recipe(QUICKSTART, {**FAST, "objective.name": "toy_tempered",
                                      "objective.hparams.temperature": 2.0, "training.output_dir": str(tmp_path)})
    result = train_dg(recipe)
    assert result.history[-1].step == 2 and torch.isfinite(torch.tensor(result.history[-1].metrics["loss"]))
    with pytest.raises(Exception, match=r"temperatur: unknown key \(did you mean 'temperature'\?\)"):
        load_recipe(QUICKSTART, {"objective.name": "toy_tempered", "objective.hparams.temperatur": 2.0})


def test_an_aggregator_registered_from_outside_trains(registered, tmp_path):
    from sage_cli.mtl.data import DigitPairs
    from sage_cli.mtl.train import load_mtl_data, train_mtl

    recipe = load_recipe("recipes/mtl_quickstart.yaml", {"aggregator.name": "toy_first", "aggregator.first_weight": 3.0,
                                                        "training.epochs": 1, "training.report_epochs": 1})
    data = load_mtl_data(recipe)
    data.train, data.test = DigitPairs("train", n_pairs=128), DigitPairs("test", n_pairs=64)
    result = train_mtl(recipe, data=data)
    assert "mean_acc" in result.history[-1].metrics
    with pytest.raises(Exception, match="aggregator 'toy_first' does not act on rotated_digits"):
        load_recipe(QUICKSTART, {"aggregator.name": "toy_first"})


def test_a_dataset_registered_from_outside_trains(registered, tmp_path):
    from sage_cli.train.dg import train_dg

    recipe = load_recipe(QUICKSTART, {**FAST, "dataset.name": "toy_blobs", "dataset.test_envs": [2],
                                      "training.output_dir": str(tmp_path)})
    result = train_dg(recipe)
    assert result.data.env_names == ["a", "b", "c"] and "env2_in_acc" in result.history[-1].metrics
    with pytest.raises(Exception, match="test env 3 is out of range: toy_blobs has envs 0..2"):
        load_recipe(QUICKSTART, {"dataset.name": "toy_blobs", "dataset.test_envs": [3]})


def test_a_domainbed_layout_dataset_is_added_from_its_card_alone(tmp_path):
    """A folder dataset needs nothing but its card: loading, splits, `sage datasets`, the evaluation cache, the
    official split files and the reports' order all read it."""
    from fixtures import make_tree
    from typer.testing import CliRunner

    from sage_cli.cards import folder_card
    from sage_cli.cli import app
    from sage_cli.report.dg import dataset_order
    from sage_cli.train.dg import train_dg

    card = folder_card("toy_folder", "ToyFolder", "", ("north", "south", "west"), 3, order=2,
                       split_files="lists/{env}_{part}.txt", split_parts=("train", "val"))
    DATASETS.register(card, name="toy_folder")
    try:
        base = make_tree(tmp_path / "data", "toy_folder", per_class=4)
        (base / "lists").mkdir()
        for env in card.envs:  # the official split: per class, image 3 for validation
            lines = {part: [f"{env}/{c}/{f.name} {k + 1}" for k, c in enumerate(("dog", "giraffe", "house"))
                            for i, f in enumerate(sorted((base / env / c).iterdir())) if (i == 3) == (part == "val")]
                     for part in ("train", "val")}
            for part, listed in lines.items():
                (base / "lists" / f"{env}_{part}.txt").write_text("\n".join(listed))
        recipe = load_recipe(QUICKSTART, {**FAST, "dataset.name": "toy_folder", "dataset.root": str(tmp_path / "data"),
                                          "dataset.image_size": 16, "dataset.test_envs": [1], "dataset.split": "official",
                                          "training.output_dir": str(tmp_path / "runs")})
        result = train_dg(recipe)
        assert result.data.env_names == ["north", "south", "west"] and result.data.classes == ["dog", "giraffe", "house"]
        assert [(len(s["in"]), len(s["out"])) for s in result.data.splits] == [(9, 3)] * 3
        assert "env1_in_acc" in result.history[-1].metrics
        listing = CliRunner().invoke(app, ["datasets", "--root", str(tmp_path / "data")])
        assert "toy_folder: north 12 · south 12 · west 12" in listing.output
        assert dataset_order(["toy_folder", "vlcs", "pacs"]) == ["pacs", "toy_folder", "vlcs"]
    finally:
        DATASETS.unregister("toy_folder")


def test_a_report_table_registered_from_outside_is_in_every_format(tmp_path):
    from report_fixtures import synthetic_store

    from sage_cli.report.build import TABLES, build
    from sage_cli.report.formats import to_latex, to_markdown
    from sage_cli.report.runs import from_store
    from sage_cli.report.tables import Cell, Table

    def finished_count(runs, selection):
        table = Table(f"count-{selection}", "finished runs per row", ["runs"])
        for label in dict.fromkeys(r.label for r in runs):
            table.rows.append((label, [Cell(sum(r.label == label and r.status == "FINISHED" for r in runs))]))
        return [table]

    TABLES.register(finished_count, name="toy_count")
    try:
        report = build(from_store(synthetic_store(tmp_path / "mlflow.db")), ["training"], with_figures=False)
    finally:
        TABLES.unregister("toy_count")
    table = next(t for t in report.tables if t.key == "count-training")
    assert dict(table.rows)["B"][0].mean == 4  # two of B's six runs did not finish
    assert "finished runs per row" in to_markdown(report) and "finished runs per row" in to_latex(report)
