"""Early stopping of a random search's hopeless draws, off by default (DomainBed runs every draw to the end).
A draw is judged at its checkpoints by its training-domain validation accuracy (``search_val_acc``: the mean of
the training envs' ``out`` accuracies, DomainBed's selection), against the draws of the same (row, dataset, test
envs, trial seed) that reached the same step — those already logged, as the jobs run in any order:

- ``median``: the median stopping rule (Golovin et al., "Google Vizier", KDD 2017, §3.2.2): stop when below the
  median of the peers at this step.
- ``asha``: asynchronous successive halving (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
  MLSys 2020, Alg. 2): the rungs are the checkpoints numbered 1, η, η², … (numbered by step / checkpoint_freq);
  at a rung a draw goes on while it is in the top ⌊n/η⌋ (at least 1) of the n draws that reached it, itself
  included.

Neither judges step 0 (nothing trained yet) nor the last step (nothing left to save)."""

from __future__ import annotations

import statistics

VAL_METRIC = "search_val_acc"


def verdict(rule: str, eta: int, mine: float, peers: list[float], rung: int) -> str | None:
    """Why this draw stops here, or None to go on. ``peers``: the other draws' values at this step; ``rung``:
    the checkpoint's number (step / checkpoint_freq)."""
    if not peers or rung < 1:
        return None
    if rule == "median":
        median = statistics.median(peers)
        return f"validation {mine:.4f} below the median {median:.4f} of {len(peers)} other draw(s)" \
            if mine < median else None
    if rule == "asha":
        if not _is_power(rung, eta):
            return None  # not a rung
        values = sorted([*peers, mine], reverse=True)
        keep = max(1, len(values) // eta)
        return None if mine >= values[keep - 1] else \
            f"validation {mine:.4f} not in the top {keep} of {len(values)} draws at rung {rung} (eta {eta})"
    return None


def _is_power(rung: int, eta: int) -> bool:
    """Whether ``rung`` is η^k for some k ≥ 0 (1, η, η², …)."""
    while rung % eta == 0:
        rung //= eta
    return rung == 1


def peer_values(client, experiment_id: str, recipe, run_id: str, step: int) -> list[float]:
    """The ``search_val_acc`` at ``step`` of the other draws of this run's (row, dataset, test envs, trial seed)
    in the store, pruned ones included (they reached the step)."""
    tags = {"sage.label": recipe.label, "sage.dataset": recipe.dataset.name,
            "sage.test_envs": ",".join(map(str, recipe.dataset.test_envs)), "sage.seed": str(recipe.training.seed)}
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    values = []
    for peer in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        if peer.info.run_id == run_id or "sage.draw" not in peer.data.tags:
            continue
        at = [m.value for m in client.get_metric_history(peer.info.run_id, VAL_METRIC) if m.step == step]
        values += at[-1:]
    return values
