"""The MTL benchmarks' metrics, their directions and single-task (STL) references, and Δm.

Δm = 100 · mean_i (−1)^{s_i} (M_i − B_i) / B_i, with s_i = 1 when higher is better, over every metric
(Maninis et al. 2019; the references of Table 2, arXiv 2605.07914). Torch-free: reports use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    metrics: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    stl: tuple[float, ...]  # the single-task references the paper's Δm is measured against


NYUV2 = Benchmark(
    ("miou", "pixacc", "abs", "rel", "mean", "median", "within_11.25", "within_22.5", "within_30"),
    (True, True, False, False, False, False, True, True, True),
    (38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15),
)
CITYSCAPES = Benchmark(("miou", "pixacc", "abs", "rel"), (True, True, False, False), (74.01, 93.16, 0.0125, 27.77))


def delta_m(values, reference, higher_is_better) -> float:
    """Δm in percent (lower is better): the mean relative drop of every metric against ``reference``."""
    values, reference, higher = list(values), list(reference), list(higher_is_better)
    if not (len(values) == len(reference) == len(higher)) or not values:
        raise ValueError("delta_m needs values, reference and higher_is_better of one (non-zero) length")
    terms = [(-1 if up else 1) * (m - b) / b for m, b, up in zip(values, reference, higher)]
    return 100.0 * sum(terms) / len(terms)


BENCHMARKS = {"nyuv2": NYUV2, "cityscapes": CITYSCAPES}
