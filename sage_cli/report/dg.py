"""Table 1's shape: per dataset a detail table (one column per test env, Avg), and a summary table
(datasets × rows, Avg), as DomainBed's ``collect_results`` prints them; plus their JSON records."""

from __future__ import annotations

from .comparable import base_dataset
from .runs import Run
from .selection import SELECTIONS, grouped, mean_sem, n_envs, sweep_acc
from .tables import Cell, Table

LEGEND = "mean ± standard error over trial seeds (population standard deviation / √n, as DomainBed); X: no value"


def known_envs(dataset: str) -> list[str]:
    from ..catalog import DATASETS

    dataset = base_dataset(dataset)
    return list(DATASETS.entry(dataset).envs) if dataset in DATASETS else []


def env_names(dataset: str, n: int) -> list[str]:
    known = known_envs(dataset)
    if base_dataset(dataset) == "rotated_digits" and len(known) == n:  # its environments are rotation angles
        return [f"{angle}°" for angle in known]
    return known if len(known) == n else [f"env{i}" for i in range(n)]


def dataset_order(names) -> list[str]:
    from ..catalog import DATASETS, card

    def rank(d):
        base = base_dataset(d)
        return (card(base).report_order if base in DATASETS else 1000), base, d

    return sorted(set(names), key=rank)


def hparams_seeds(runs: list[Run]) -> dict[str, int]:
    """Each run's ``hparams_seed``: its hyper-parameter setting numbered within its (dataset, row)."""
    out = {}
    for key in {(r.dataset, r.label) for r in runs}:
        settings = sorted({r.hparams for r in runs if (r.dataset, r.label) == key})
        for r in runs:
            if (r.dataset, r.label) == key:
                out[r.run_id] = settings.index(r.hparams)
    return out


def complete(row: dict, test_envs) -> bool:
    """Whether a checkpoint has every accuracy model selection reads, each a fraction in [0, 1]: every env's
    ``out`` accuracy and the held-out envs' ``in`` accuracy. A NaN, an infinity or a missing held-out value
    leaves the checkpoint out (``left_out`` counts them) rather than breaking or skewing a table."""
    n = n_envs(row)
    keys = [f"env{i}_out_acc" for i in range(n)] + [f"env{t}_in_acc" for t in test_envs]
    return (n > 0 and bool(test_envs) and all(0 <= t < n for t in test_envs)
            and all(isinstance(row.get(k), (int, float)) and 0 <= row[k] <= 1 for k in keys))  # NaN fails too


def _finished_dg(runs: list[Run]):
    """The DG runs model selection chooses among: FINISHED, and not stopped early by a search (a pruned draw
    never wins)."""
    return [r for r in runs if r.status == "FINISHED" and r.kind == "dg" and r.pruned_at is None]


def records(runs: list[Run]) -> list[dict]:
    """DomainBed's records of the finished DG runs: one per complete checkpoint. Their ``hparams_seed`` numbers
    the settings of the finished runs, as ``candidate_settings`` and ``candidate_runs`` do."""
    finished = _finished_dg(runs)
    seeds = hparams_seeds(finished)
    out = []
    for run in finished:
        args = {"dataset": run.dataset, "algorithm": run.label, "test_envs": list(run.test_envs),
                "trial_seed": run.trial_seed, "hparams_seed": seeds[run.run_id]}
        out += [{"args": args, **row} for row in run.rows if "env0_out_acc" in row and complete(row, run.test_envs)]
    return out


def left_out(runs: list[Run]) -> str:
    """One line counting the checkpoints ``records`` leaves out, or ''."""
    bad = {r.run_id: sum(1 for row in r.rows if not complete(row, r.test_envs)) for r in _finished_dg(runs)}
    bad = {k: v for k, v in bad.items() if v}
    if not bad:
        return ""
    return (f"{sum(bad.values())} checkpoint(s) of {len(bad)} finished run(s) left out of model selection: an "
            f"accuracy is missing or not a fraction in [0, 1] (NaN, inf); run {next(iter(bad))[:8]} is one")


def labels_in_order(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(r.label for r in runs))


def chosen_accs(recs: list[dict], selection: str) -> dict[tuple, dict]:
    """(trial_seed, dataset, algorithm, test_env) → the selected candidate, where there is one."""
    chosen = {key: sweep_acc(group, selection) for key, group in grouped(recs).items()}
    return {k: v for k, v in chosen.items() if v is not None}


def trial_summary(chosen: dict, dataset: str, label: str) -> tuple:
    """DomainBed's averages cell: per trial seed the mean over its test envs; mean ± sem over trial seeds."""
    trials: dict[int, list] = {}
    for (t, d, a, _env), v in chosen.items():
        if (d, a) == (dataset, label):
            trials.setdefault(t, []).append(v["test_acc"])
    return mean_sem(sum(v) / len(v) for _, v in sorted(trials.items()))


def candidate_settings(runs: list[Run]) -> dict[tuple, dict[str, str]]:
    """(dataset, row, hparams_seed) → the settings that tell the row's candidates apart (ρ, γ, a draw's values):
    the params whose values differ between them; {} for a row with one candidate."""
    seeds, out = hparams_seeds(runs), {}
    for key in {(r.dataset, r.label) for r in runs}:
        mine = [r for r in runs if (r.dataset, r.label) == key]
        by_seed = {seeds[r.run_id]: r.params for r in mine}
        keys = sorted({k for p in by_seed.values() for k in p}) if len(by_seed) > 1 else []
        differ = [k for k in keys if len({p.get(k) for p in by_seed.values()}) > 1
                  and k not in ("training.seed", "dataset.test_envs") and not k.startswith("tracking.")]
        for seed, params in by_seed.items():
            out[(*key, seed)] = {k: short(params.get(k, "")) for k in differ}
    return out


def short(value: str) -> str:
    """A drawn number as people read it (4 significant digits); anything else as it is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number == int(number) and "e" not in value.lower() else f"{number:.4g}"


def candidate_runs(runs: list[Run]) -> dict[tuple, Run]:
    """(dataset, row, trial seed, hparams_seed) → the finished run of that candidate (numbered as ``records``)."""
    finished = _finished_dg(runs)
    seeds = hparams_seeds(finished)
    return {(r.dataset, r.label, r.trial_seed, seeds[r.run_id]): r for r in finished}


def settings_text(values: dict) -> str:
    """Settings as a report names them: ``lr=0.001, rho=0.05`` (the last part of each dotted key)."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())


def drawn(run: Run | None) -> dict:
    """A random search's candidate as reports name it: its draw and the values drawn ({} outside a search)."""
    if run is None or run.draw is None:
        return {}
    return {"draw": run.draw, "values": {k: short(run.params.get(k, "?")) for k in run.searched}}


def choice_note(label: str, picks: list[dict]) -> str:
    """One line: which candidate and step model selection chose for a row, over its seeds and test envs."""
    from collections import Counter

    shown = Counter(" ".join([*([f"draw {p['draw']}:"] if "draw" in p else []),
                              settings_text(p.get("values", p["settings"]))])
                    for p in picks)
    steps = sorted({p["step"] for p in picks})
    which = "; ".join(f"{s} ×{n}" for s, n in shown.most_common()) if any(shown) else "its one candidate"
    return f"{label}: chose {which} at step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}"


def provenance(runs: list[Run], selection: str) -> str:
    """How a table's numbers were measured: the protocol, the tuning mode, the part of the test env judged and
    the model selection (``comparable.split`` gave runs that differ tables of their own)."""
    def values(key: str, default: str) -> str:
        return "/".join(sorted({r.params.get(key, default) for r in runs})) or default

    test = {"in": "its in split", "all": "all its images"}
    parts = [f"protocol {values('protocol', 'domainbed')}", f"tuning {values('backbone.tuning', 'full')}",
             "test env: " + "/".join(test.get(v, v) for v in values("training.test_split", "in").split("/")),
             f"model selection: {SELECTIONS[selection]}"]
    return " · ".join(parts)


def dg_tables(runs: list[Run], selection: str) -> tuple[list[Table], list[dict]]:
    recs = records(runs)
    chosen = chosen_accs(recs, selection)
    settings = candidate_settings(_finished_dg(runs))
    candidates = candidate_runs(runs)
    labels = labels_in_order([r for r in runs if r.kind == "dg"])
    datasets = dataset_order(r.dataset for r in runs if r.kind == "dg")
    name = SELECTIONS[selection]
    tables, json_rows, summary = [], [], {}
    for dataset in datasets:
        sample = next((r for r in recs if r["args"]["dataset"] == dataset), None)
        envs = n_envs(sample) if sample else len(known_envs(dataset))
        columns = [*env_names(dataset, envs), "Avg"]
        table = Table(f"dg-{selection}-{dataset}", f"{dataset} · model selection: {name}", columns,
                      higher_is_better=[True] * len(columns),
                      notes=[LEGEND, provenance([r for r in runs if r.dataset == dataset], selection)])
        for label in labels:
            cells, row_picks = [], []
            for env in range(envs):
                mine = [(t, v) for (t, d, a, e), v in sorted(chosen.items(), key=lambda kv: kv[0][0])
                        if (d, a, e) == (dataset, label, env)]
                mean, sem, n = mean_sem(v["test_acc"] for _, v in mine)
                cells.append(Cell(mean, sem, n))
                picks = [{"trial_seed": t, "step": v["step"], "candidate": v["hparams_seed"],
                          "settings": settings.get((dataset, label, v["hparams_seed"]), {}),
                          **drawn(candidates.get((dataset, label, t, v["hparams_seed"])))} for t, v in mine]
                row_picks += picks
                json_rows.append({"selection": selection, "dataset": dataset, "method": label, "test_env": env,
                                  "mean": mean, "sem": sem, "n": n, "chosen": picks})
            if row_picks:
                table.notes.append(choice_note(label, row_picks))
            means = [c.mean for c in cells]
            avg = None if None in means or not means else sum(means) / len(means)
            cells.append(Cell(avg))
            json_rows.append({"selection": selection, "dataset": dataset, "method": label, "test_env": "avg",
                              "mean": avg, "sem": None, "n": min((c.n for c in cells[:-1]), default=0)})
            table.rows.append((label, cells))
            summary[(label, dataset)] = trial_summary(chosen, dataset, label)
        tables.append(table)
    datasets = [d for d in datasets if d == base_dataset(d)]  # a split-off group stands alone: not averaged in
    if datasets:
        table = Table(f"dg-{selection}-summary", f"Averages · model selection: {name}", [*datasets, "Avg"],
                      higher_is_better=[True] * (len(datasets) + 1),
                      notes=[LEGEND, provenance([r for r in runs if r.dataset in datasets], selection)])
        for label in labels:
            cells = [Cell(*summary[(label, d)]) for d in datasets]
            means = [c.mean for c in cells]
            cells.append(Cell(None if None in means else sum(means) / len(means)))
            table.rows.append((label, cells))
        tables.append(table)
    return tables, json_rows
