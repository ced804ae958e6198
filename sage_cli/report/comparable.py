"""Which runs may share a table: those that agree on everything but the row (method, objective and their
settings, the grid's keys), the trial seed and the held-out envs. Runs of one dataset that differ in how they
were trained or evaluated — training length, batch, checkpoint schedule, split, image size, backbone — are
not candidates of one row nor cells of one grid: each such group becomes tables of its own, named by the keys
that differ, with a one-line note. (A 400-step `sage run` beside 40-step ablation runs, or a Table-1 sweep
beside an ablation, were mixed without a word.)"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from .runs import Run

PROTOCOL = ("protocol", "training.", "dataset.", "backbone.")
# where a run ran, and the keys a table is laid out by: never a reason to split
NOT_PROTOCOL = {"training.seed", "training.output_dir", "training.device", "training.deterministic",
                "dataset.name", "dataset.test_envs", "dataset.root", "dataset.cache_dir", "dataset.workers",
                "dataset.eval_cache"}


def _defaults() -> dict[str, str]:
    """The default protocol's settings as params: a run logged before they existed ran them."""
    from ..protocols import DEFAULT, PRESETS

    return {"protocol": DEFAULT, **{k: str(s.value) for k, s in PRESETS[DEFAULT].items()}}


def signature(run: Run) -> tuple:
    params = {**_defaults(), **run.params} if run.kind == "dg" else run.params
    return tuple(sorted((k, v) for k, v in params.items() if k.startswith(PROTOCOL) and k not in NOT_PROTOCOL))


def _differing_name(differ: list[str], sig: tuple) -> str:
    """``protocol=disam`` when the protocols differ (the settings it presets follow from it), else every key."""
    values = dict(sig)
    if "protocol" in differ:
        from ..protocols import KEYS

        differ = ["protocol", *(k for k in differ if k != "protocol" and k not in KEYS)]
    return ", ".join(f"{k}={values.get(k, chr(8212))}" for k in differ)


def base_dataset(name: str) -> str:
    """The dataset of a table name that ``split`` may have given a suffix (``pacs [training.steps=40]``)."""
    return name.split(" [", 1)[0]


def split(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """``runs`` with the DG runs of each minority protocol renamed ``<dataset> [<key>=<value>, …]`` (the largest
    group keeps the plain name, so Table 1 and the paper's rows line up with it); one note per split dataset."""
    groups: dict[str, dict[tuple, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.kind == "dg":
            groups[run.dataset][signature(run)].append(run)
    renamed, notes = {}, []
    for dataset, by_sig in groups.items():
        if len(by_sig) < 2:
            continue
        ordered = sorted(by_sig.items(), key=lambda kv: (-len(kv[1]), min(r.start_time for r in kv[1])))
        keys = sorted({k for sig in by_sig for k, _ in sig})
        differ = [k for k in keys if len({dict(sig).get(k) for sig in by_sig}) > 1]
        for sig, members in ordered[1:]:
            name = f"{dataset} [{_differing_name(differ, sig)}]"
            renamed.update({r.run_id: name for r in members})
        notes.append(f"{dataset}: runs differ in {', '.join(differ)}; reported in {len(by_sig)} groups of tables, "
                     f"not mixed (the largest keeps the name {dataset})")
    return [replace(r, dataset=renamed[r.run_id]) if r.run_id in renamed else r for r in runs], notes


def label_clashes(runs: list[Run]) -> list[str]:
    """Rows of one dataset whose labels differ only in case ("SAGE" from a sweep's methods, "sage" from a plain
    run): they stay two rows, since either may be meant, and a note says how to make them one."""
    notes = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        labels = sorted({r.label for r in runs if r.dataset == dataset})
        folded: dict[str, list[str]] = defaultdict(list)
        for label in labels:
            folded[label.casefold()].append(label)
        for same in (v for v in folded.values() if len(v) > 1):
            notes.append(f"{dataset}: rows {' and '.join(repr(s) for s in same)} differ only in case and are kept "
                         "apart; give the runs one tracking.label (or one methods: key) to make them one row")
    return notes
