import pytest

from sage_cli.errors import UserError
from sage_cli.recipe import load_recipe, parse_overrides

QUICKSTART = "recipes/quickstart.yaml"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_quickstart_loads_with_paper_defaults_filled():
    r = load_recipe(QUICKSTART)
    assert r.dataset.name == "rotated_digits" and r.dataset.test_envs == [5]
    assert r.optimizer.method == "sage" and r.optimizer.polar == "quintic"
    assert isinstance(r.optimizer.lr, float) and r.optimizer.lr == 1e-3  # "1e-3" read as a float


def test_method_default_rho():
    assert load_recipe(QUICKSTART, {"optimizer.method": "sam", "optimizer.rho": None}).optimizer.rho == 0.05


def test_overrides_and_hash_identity(tmp_path):
    base = load_recipe(QUICKSTART)
    changed = load_recipe(QUICKSTART, parse_overrides(["optimizer.rho=1e-5"]))
    assert changed.optimizer.rho == 1e-5
    assert changed.hash() != base.hash()
    # where a run is logged is not part of its identity
    assert load_recipe(QUICKSTART, {"tracking.experiment": "elsewhere"}).hash() == base.hash()
    # formatting and key order do not change the hash
    reordered = write(tmp_path, "training: {seed: 0, steps: 400, batch_size: 32, checkpoint_freq: 100}\n"
                                "optimizer: {method: sage, lr: 0.001, rho: 3e-3, gamma: 0.001}\n"
                                "dataset: {test_envs: [5]}\nname: other\n")
    assert load_recipe(reordered).hash() == base.hash()


@pytest.mark.parametrize("text, expected", [
    ("optimizer:\n  method: sage\n  rhoo: 1e-5\n", "r.yaml:3: optimizer.rhoo: unknown key (did you mean 'rho'?)"),
    ("optimiser:\n  lr: 1\n", "r.yaml:1: optimiser: unknown key (did you mean 'optimizer'?)"),
    ("training:\n  steps: many\n", "r.yaml:2: training.steps:"),
    ("optimizer:\n  rho: -1\n", "r.yaml:2: optimizer.rho: Input should be greater than or equal to 0"),
    ("optimizer:\n  gamma: -1e-6\n", "r.yaml:2: optimizer.gamma: Input should be greater than or equal to 0"),
    ("optimizer:\n  lr: -0.1\n", "r.yaml:2: optimizer.lr: Input should be greater than 0"),
    ("optimizer:\n  method: sagee\n", "r.yaml:2: optimizer.method: unknown optimizer method 'sagee' (did you mean 'sage'?)"),
    ("dataset:\n  name: rotated_digit\n", "r.yaml:2: dataset.name: unknown dataset 'rotated_digit' (did you mean 'rotated_digits'?)"),
    ("dataset:\n  test_envs: [6]\n", "r.yaml:1: dataset: test env 6 is out of range: rotated_digits has envs 0..5"),
    ("optimizer: {lr: 1}\noptimizer: {lr: 2}\n", "r.yaml:2: optimizer: key given twice"),
    ("optimizer: [1, 2]\n", "r.yaml:1: optimizer: Input should be a valid dictionary"),
])
def test_errors_name_file_line_and_key(tmp_path, text, expected):
    with pytest.raises(UserError) as exc:
        load_recipe(write(tmp_path, text))
    assert str(exc.value).startswith(str(tmp_path / expected.split(":")[0]) + expected[len(expected.split(":")[0]):])


@pytest.mark.parametrize("text, expected", [
    ("optimizer: {lr: 1\n", "malformed YAML"),
    ("", "the recipe is empty"),
    ("# only a comment\n", "the recipe is empty"),
    ("- 1\n- 2\n", "a recipe must be a mapping"),
])
def test_file_level_errors(tmp_path, text, expected):
    with pytest.raises(UserError, match=expected):
        load_recipe(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_override_errors_point_at_the_flag():
    with pytest.raises(UserError, match=r"^--set optimizer.rho: Input should be greater than or equal to 0"):
        load_recipe(QUICKSTART, parse_overrides(["optimizer.rho=-1"]))
    with pytest.raises(UserError, match=r"^--set optimizer.rhoo: unknown key \(did you mean 'rho'\?\)"):
        load_recipe(QUICKSTART, parse_overrides(["optimizer.rhoo=1"]))
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_overrides(["optimizer.rho"])
