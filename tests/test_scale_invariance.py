"""App. D (sage_cli.analysis.scale): sharpness L(θ+ε) − L(θ) under W1→αW1, b1→αb1, W2→W2/α (the same
function) on the paper's 2→64→2 MLP trained on concentric circles. SAM varies by an order of magnitude,
ASAM is flat, SAGE with its default fixed-radius bias rule varies, with the scaled (or no) bias rule it is flat."""

import pytest

from sage_cli.analysis import scale


@pytest.fixture(scope="module")
def result():
    return scale.run(seed=0, n_alphas=9)


def test_the_rescaling_keeps_the_function(result):
    assert result.accuracy > 0.99 and result.max_output_change < 1e-4
    assert all(v > 0 for values in result.sharpness.values() for v in values)


def test_sam_is_scale_dependent(result):
    assert result.spread("SAM (ρ=0.05)") > 5


def test_asam_is_flat(result):
    assert result.spread("ASAM (ρ=0.5)") < 1.15


def test_sage_with_fixed_radius_bias_rule_is_not_invariant(result):
    assert result.spread("SAGE, bias rule sam (default)") > 1.5


@pytest.mark.parametrize("rule", ["scaled", "none"])
def test_sage_with_scaled_or_no_bias_perturbation_is_invariant(result, rule):
    assert result.spread(f"SAGE, bias rule {rule}") < 1.15
