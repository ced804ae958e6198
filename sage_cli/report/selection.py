"""DomainBed's model selection (Gulrajani & Lopez-Paz, ICLR 2021; facebookresearch/DomainBed,
``domainbed/model_selection.py`` and ``scripts/collect_results.py``), on plain records.

A record is one checkpoint of one run: ``{"args": {dataset, algorithm, test_envs, trial_seed, hparams_seed},
"step", "env{i}_in_acc", "env{i}_out_acc", …}``. Records are grouped by (trial seed, dataset, algorithm, test
env) — a record of a run with two test envs belongs to both groups. Within a group, each hyper-parameter
setting (``hparams_seed``) gives a candidate (val_acc, test_acc); the candidate of highest val_acc wins (ties:
the one DomainBed's reversed stable sort puts first, the last in ``hparams_seed`` order).

- ``training``: per run, the checkpoint with the best mean ``out`` accuracy over the training envs (the first
  such checkpoint); its test-env ``in`` accuracy.
- ``oracle``: per run, the last checkpoint; val = the test env's ``out`` accuracy, test = its ``in`` accuracy.
- ``loo``: per checkpoint step, val = the mean over j ≠ t of env j's ``in`` accuracy in the run holding out
  {t, j} (same hyper-parameters and step); the best step; test = the single-test-env run's accuracy there.
"""

from __future__ import annotations

import math
from collections import defaultdict

SELECTIONS = {"training": "training-domain validation", "oracle": "test-domain validation (oracle)",
              "loo": "leave-one-domain-out cross-validation", "merged": "merged source validation (DISAM)"}


def test_acc(record: dict, env: int) -> float:
    """The test env's accuracy a run is judged by: every image of it where its protocol asked for that
    (``env{t}_all_acc``, ``training.test_split: all``), else its in split (DomainBed)."""
    return record.get(f"env{env}_all_acc", record[f"env{env}_in_acc"])


def n_envs(record: dict) -> int:
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return n


def _singles(records):
    return [r for r in records if len(r["args"]["test_envs"]) == 1]


def _training_step(record):
    test = record["args"]["test_envs"][0]
    val = [record[f"env{i}_out_acc"] for i in range(n_envs(record)) if i != test]
    return {"val_acc": sum(val) / len(val), "test_acc": test_acc(record, test), "step": record["step"]}


def training_run_acc(run_records):
    singles = sorted(_singles(run_records), key=lambda r: r["step"])
    if not singles:
        return None
    return max((_training_step(r) for r in singles), key=lambda a: a["val_acc"])  # max keeps the first best


def oracle_run_acc(run_records):
    singles = _singles(run_records)
    if not singles:
        return None
    last = max(singles, key=lambda r: r["step"])
    test = last["args"]["test_envs"][0]
    return {"val_acc": last[f"env{test}_out_acc"], "test_acc": test_acc(last, test), "step": last["step"]}


def _loo_step(step_records):
    singles = _singles(step_records)
    if len(singles) != 1:
        return None
    test = singles[0]["args"]["test_envs"][0]
    k = n_envs(step_records[0])
    val = [-1.0] * k
    for r in step_records:
        if len(r["args"]["test_envs"]) == 2:
            other = (set(r["args"]["test_envs"]) - {test}).pop()
            val[other] = r[f"env{other}_in_acc"]
    val = val[:test] + val[test + 1:]
    if any(v == -1 for v in val):
        return None
    return {"val_acc": sum(val) / (k - 1), "test_acc": test_acc(singles[0], test), "step": singles[0]["step"]}


def loo_run_acc(run_records):
    by_step: dict[int, list] = defaultdict(list)
    for r in run_records:
        by_step[r["step"]].append(r)
    accs = [a for a in (_loo_step(rs) for _, rs in sorted(by_step.items())) if a is not None]
    return max(accs, key=lambda a: a["val_acc"]) if accs else None


def merged_run_acc(run_records):
    """Per run, the checkpoint with the best accuracy over all training envs' out images together (DISAM's
    merged source validation; logged as ``merged_out_acc`` by runs whose ``training.selection`` asks for it), the
    first such; None for runs that did not log it."""
    singles = sorted((r for r in _singles(run_records) if "merged_out_acc" in r), key=lambda r: r["step"])
    if not singles:
        return None
    best = max(singles, key=lambda r: r["merged_out_acc"])
    test = best["args"]["test_envs"][0]
    return {"val_acc": best["merged_out_acc"], "test_acc": test_acc(best, test), "step": best["step"]}


RUN_ACC = {"training": training_run_acc, "oracle": oracle_run_acc, "loo": loo_run_acc, "merged": merged_run_acc}


def sweep_acc(records, selection: str):
    """The chosen candidate of one (trial seed, dataset, algorithm, test env) group: its run_acc and
    ``hparams_seed``, or None when no candidate has a value."""
    by_hparams: dict = {}
    for r in records:
        by_hparams.setdefault(r["args"]["hparams_seed"], []).append(r)
    candidates = []
    for seed in sorted(by_hparams):
        acc = RUN_ACC[selection](by_hparams[seed])
        if acc is not None:
            candidates.append({**acc, "hparams_seed": seed})
    if not candidates:
        return None
    return sorted(candidates, key=lambda a: a["val_acc"])[::-1][0]


def grouped(records) -> dict[tuple, list]:
    """(trial_seed, dataset, algorithm, test_env) → its records; a two-test-env record is in two groups."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        a = r["args"]
        for env in a["test_envs"]:
            groups[(a["trial_seed"], a["dataset"], a["algorithm"], env)].append(r)
    return groups


def mean_sem(values, scale: float = 100.0) -> tuple[float | None, float | None, int]:
    """Mean and standard error over ``values`` as DomainBed computes them — the population standard deviation
    over √n —, times ``scale`` (accuracies to percent); (None, None, 0) when empty."""
    values = list(values)
    if not values:
        return None, None, 0
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return scale * mean, scale * std / math.sqrt(n), n
