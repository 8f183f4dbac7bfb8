"""Result tables: ``metrics.csv`` from the run records, one table per experiment (ours beside the
papers' values) and the comparison of every reproduced cell with the papers."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pandas as pd

from augdefense.errors import ArtifactError
from augdefense.io import atomic_path, read_json
from augdefense.metrics import aggregate

KEY_COLUMNS = ["attack", "defense", "seed"]
# poison_success_all_images: the trigger backdoors' share of all patched source-class images, beside
# their scored one target per seed.
METRICS = ["clean_acc", "poison_success", "goal_probability", "goal_margin", "poison_success_all_images"]
# The papers a table's reference numbers come from, in order of preference: a cell takes the first
# paper's value that reports it (paper_numbers.csv holds every paper's values).
REFERENCE_PAPER = {
    "table1": ["dp-instahide"],
    "table2": ["dp-instahide", "strong-augmentation"],
    "table3": ["dp-instahide"],
    "table4": ["dp-instahide"],
    "table5": ["dp-instahide"],
    "table6": ["dp-instahide"],
}


def reference_numbers(table: str) -> pd.DataFrame:
    """The papers' values for a table's cells, one per (attack, defense, metric)."""
    papers = REFERENCE_PAPER.get(table, [])
    paper = paper_numbers()
    paper = paper[(paper.table == table) & paper.paper.isin(papers)].copy()
    paper["_rank"] = [papers.index(p) for p in paper.paper]
    paper = paper.sort_values("_rank", kind="stable").drop_duplicates(["attack", "defense", "metric"])
    return paper.drop(columns="_rank")


def paper_numbers() -> pd.DataFrame:
    with resources.files("augdefense").joinpath("paper_numbers.csv").open() as fh:
        return pd.read_csv(fh)


def collect_metrics(*, runs: list[str | Path], out: str | Path) -> pd.DataFrame:
    """One row per victim run record, key columns and headline metrics first."""
    records = [read_json(f) for f in runs]
    for file, record in zip(runs, records):
        missing = [k for k in KEY_COLUMNS + ["clean_acc"] if k not in record]
        if missing:
            raise ArtifactError(f"{file}: run record lacks {missing}")
    frame = pd.DataFrame.from_records(records)
    first = KEY_COLUMNS + [c for c in METRICS if c in frame]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    frame = frame.sort_values(KEY_COLUMNS, kind="stable")
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def summarize(
    metrics: pd.DataFrame, table: str, attacks: list[str], defenses: list[str], control: str | None = None
) -> pd.DataFrame:
    """One row per (defense, attack) of an experiment: mean, std and count over seeds; 95% intervals
    of clean accuracy and poison success over seeds (``metrics.seed_interval``); the shift of the
    goal class's probability and log-odds margin against the same-seed clean control (when the
    experiment has one); and the reference papers' values where they report that cell."""
    from augdefense.metrics import paired_shift

    present = [c for c in METRICS if c in metrics]
    cells = metrics[metrics.attack.isin(attacks) & metrics.defense.isin(defenses)]
    summary = aggregate(cells, ["defense", "attack"], present)
    for metric, trials in (("clean_acc", "n_clean"), ("poison_success", "n_eval")):
        if metric not in cells:
            continue
        intervals = [
            cell_interval(cells[(cells.defense == d) & (cells.attack == a)], metric, trials)
            for d, a in zip(summary.defense, summary.attack)
        ]
        for i, part in enumerate(("ci_low", "ci_high", "ci_method")):
            summary[f"{metric}_{part}"] = [interval[i] for interval in intervals]
    if control is not None:
        controls = metrics[metrics.attack == control].set_index(["defense", "seed"])
        for metric in ("goal_probability", "goal_margin"):
            if metric not in metrics:
                continue
            rows = []
            for d, a in zip(summary.defense, summary.attack):
                runs = cells[(cells.defense == d) & (cells.attack == a)]
                twins = [controls[metric].get((d, s), math.nan) for s in runs.seed]
                rows.append(
                    (float(pd.Series(twins, dtype=float).mean()), *paired_shift(runs[metric].to_numpy(), twins))
                )
            summary[f"control_{metric}_mean"] = [r[0] for r in rows]
            for i, part in enumerate(("shift", "shift_ci_low", "shift_ci_high", "shift_n")):
                summary[f"{metric}_{part}"] = [r[i + 1] for r in rows]
    _add_dp_ceiling(summary, cells, metrics, control)
    if "defense_type" in cells:
        types = cells.groupby("defense").defense_type.first()
        summary["defense_type"] = [types.get(d) for d in summary.defense]
    paper = reference_numbers(table)
    for metric in ("clean_acc", "poison_success"):
        values = paper[paper.metric == metric].set_index(["defense", "attack"])["value"]
        summary[f"paper_{metric}"] = [values.get((d, a), math.nan) for d, a in zip(summary.defense, summary.attack)]
    order = {(d, a): i for i, (d, a) in enumerate((d, a) for d in defenses for a in attacks)}
    summary["_order"] = [order[(d, a)] for d, a in zip(summary.defense, summary.attack)]
    return summary.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def cell_interval(runs: pd.DataFrame, metric: str, trials: str) -> tuple[float, float, str]:
    """A cell's 95% interval of ``metric`` over its seeds."""
    from augdefense.metrics import seed_interval

    runs = runs.dropna(subset=[metric])
    return seed_interval(runs[metric].to_numpy(), runs[trials].to_numpy() if trials in runs else [0] * len(runs))


def _add_dp_ceiling(summary: pd.DataFrame, cells: pd.DataFrame, metrics: pd.DataFrame, control: str | None) -> None:
    """Ma et al.'s certified ceiling on poison success for cells trained with a DP guarantee
    (opacus's (epsilon, delta), or Theorem 2's epsilon with delta = 0), given the success without
    poisons (the control's, same defense; or 0 where there is no control: a lower ceiling than
    the truth, marked in the table's note)."""
    from augdefense.privacy import poison_success_ceiling

    columns = [c for c in ("dp_epsilon", "theorem2_epsilon") if c in cells]
    if not columns or "n_poisons" not in cells:
        return
    ceilings, epsilons = [], []
    for d, a in zip(summary.defense, summary.attack):
        runs = cells[(cells.defense == d) & (cells.attack == a)]
        eps_col = next((c for c in columns if runs[c].notna().any()), None)
        if eps_col is None:
            ceilings.append(math.nan)
            epsilons.append(math.nan)
            continue
        epsilon = float(runs[eps_col].mean())
        delta = float(runs["dp_delta"].mean()) if eps_col == "dp_epsilon" else 0.0
        base = 0.0
        if control is not None:
            twin = metrics[(metrics.attack == control) & (metrics.defense == d)]
            base = float(twin.poison_success.mean()) if len(twin) else 0.0
        ceilings.append(poison_success_ceiling(epsilon, delta, int(runs.n_poisons.max()), base))
        epsilons.append(epsilon)
    summary["dp_epsilon_used"] = epsilons
    summary["dp_success_ceiling"] = ceilings


def _pct(mean: float, std: float) -> str:
    if mean != mean:  # NaN
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std == std else f"{100 * mean:.1f}"


# The tables' notes: module-level prose (the tests check each appears where it should).
TABLE_NOTE = (
    "Mean ± std over {seeds} seed(s) per cell; poison success also with its 95% interval over seeds "
    "[low–high] (the seed is the unit: one model and one draw each): the Clopper–Pearson (exact) interval of "
    "the successes where each seed has one target, else the t-interval of the per-seed rates, clipped to "
    "[0, 100]; none with one seed, or rates with no spread. Paper values: {papers} (first that reports the cell)."
)
ALL_IMAGES_NOTE = (
    "{all images} = the share of every source-class test image with the trigger at a random location "
    "(mean over seeds), beside the scored success: one source-class target per seed with the trigger "
    "where crafting put it (the benchmark's poison_test.py)."
)
DP_CEILING_NOTE = (
    "{DP ceiling} = the highest poison success Ma et al.'s bound allows against a learner with "
    "the run's differential-privacy guarantee (opacus's accountant, or Theorem 2 with δ = 0) and "
    "that many poisons, given the success without poisons (the control's; 0 without a control). "
    "100 means the guarantee is vacuous at this scale."
)
DPSGD_BATCH_NOTE = (
    "{names}: DP-SGD as the papers ran it (the mini-batch gradient clipped, then noised). It carries "
    "no formal privacy guarantee: without per-sample clipping no sensitivity bound exists, so no ε "
    "and no DP ceiling are reported (`dpsgd_opacus` is DP-SGD with one)."
)
CONTROL_NOTE = (
    "Goal class = the attacker's intended class. Control = attack '{control}': the same seed's "
    "target and classes, the same defense, no poisons. Log-odds shift = mean over seeds of "
    "(log p_goal − log max_other p) in the poisoned victim minus in its control, with a 95% t-interval: "
    "how far the poisons pushed the target, even where they did not flip it."
)
COMPARISON_HEADER = (
    "# Reproduced cells beside the papers' values",
    "",
    "| table | attack | defense | metric | paper | ours | our 95% interval | seeds | paper inside? |",
    "|---|---|---|---|---|---|---|---|---|",
)
COMPARISON_NOTE = (
    "Intervals are over seeds, the unit of replication (the images of one seed share one model and one "
    "draw): the Clopper–Pearson (exact) interval of the successes where each seed scores one target, else "
    "the t-interval of the per-seed values, clipped to [0, 100]. n/a: one seed, or per-seed rates with "
    "no spread, give no interval over seeds. A paper value outside it is one these seeds contradict; "
    "with few seeds the intervals are wide. The paper's own sampling error is not counted: its value is "
    "treated as exact, though it too comes from a few seeds, so 'no' overstates a disagreement. "
    "A CPU preset is not expected to match the papers' CIFAR-10 numbers."
)


def to_markdown(
    summary: pd.DataFrame,
    table: str,
    attacks: list[str],
    defenses: list[str],
    excluded: set[tuple[str, str]] = frozenset(),
    control: str | None = None,
    scale: str | None = None,
) -> str:
    header = ["defense"]
    for attack in attacks:
        header += [f"clean acc % ({attack})", f"poison success % ({attack})"]
        if control is not None:
            header += [f"goal-class probability % ({attack}; control)", f"goal log-odds shift ({attack})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = summary.set_index(["defense", "attack"])
    width = 4 if control is not None else 2
    for defense in defenses:
        row = [defense]
        for attack in attacks:
            if (defense, attack) not in cells.index:
                row += ["not applicable"] * width if (attack, defense) in excluded else ["not run"] * width
                continue
            c = cells.loc[(defense, attack)]
            for metric in ("clean_acc", "poison_success"):
                text = _pct(c.get(f"{metric}_mean", math.nan), c.get(f"{metric}_std", math.nan))
                low = c.get(f"{metric}_ci_low", math.nan)
                if metric == "poison_success" and low == low:
                    text += f" [{100 * low:.0f}–{100 * c[f'{metric}_ci_high']:.0f}]"
                wider = c.get("poison_success_all_images_mean", math.nan)
                if metric == "poison_success" and wider == wider:
                    text += f" {{all images {100 * wider:.1f}}}"
                ceiling = c.get("dp_success_ceiling", math.nan)
                if metric == "poison_success" and ceiling == ceiling:
                    text += f" {{DP ceiling {100 * ceiling:.0f}}}"
                paper = c.get(f"paper_{metric}", math.nan)
                if paper == paper:
                    text += f" (paper {100 * paper:.1f})"
                row.append(text)
            if control is not None:
                prob, twin = c.get("goal_probability_mean", math.nan), c.get("control_goal_probability_mean", math.nan)
                control_text = f"{100 * twin:.1f}" if twin == twin else "–"  # no control run for this cell
                row.append(f"{100 * prob:.1f}; {control_text}" if prob == prob else "–")
                shift, low = c.get("goal_margin_shift", math.nan), c.get("goal_margin_shift_ci_low", math.nan)
                text = "–" if shift != shift else f"{shift:+.2f}"
                if low == low:
                    text += f" [{low:+.2f}, {c['goal_margin_shift_ci_high']:+.2f}]"
                row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    seeds = sorted(set(summary.get("clean_acc_count", pd.Series(dtype=int)).astype(int)))
    papers = REFERENCE_PAPER.get(table, [])
    lines += ["", TABLE_NOTE.format(seeds=", ".join(map(str, seeds)), papers=", ".join(papers) or "none recorded")]
    if "poison_success_all_images_mean" in summary and summary.poison_success_all_images_mean.notna().any():
        lines += ["", ALL_IMAGES_NOTE]
    if "dp_success_ceiling" in summary and summary.dp_success_ceiling.notna().any():
        lines += ["", DP_CEILING_NOTE]
    if "defense_type" in summary and (summary.defense_type == "dpsgd_batch").any():
        names = ", ".join(sorted(set(summary.defense[summary.defense_type == "dpsgd_batch"])))
        lines += ["", DPSGD_BATCH_NOTE.format(names=names)]
    if control is not None:
        lines += ["", CONTROL_NOTE.format(control=control)]
    if scale:
        lines += ["", f"Computed at: {scale}."]
    return "\n".join(lines) + "\n"


def render_table(
    *, metrics: str | Path, table: str, experiment: dict, scale: str, csv: str | Path, md: str | Path
) -> pd.DataFrame:
    """One experiment's table (CSV and markdown), computed at ``scale`` (said in the markdown)."""
    frame = pd.read_csv(metrics)
    attacks, defenses, control = experiment["attacks"], experiment["defenses"], experiment.get("control")
    summary = summarize(frame, table, attacks, defenses, control)
    with atomic_path(csv) as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(md) as tmp:
        excluded = {(p["attack"], p["defense"]) for p in experiment.get("exclude", [])}
        tmp.write_text(f"# {table}\n\n" + to_markdown(summary, table, attacks, defenses, excluded, control, scale))
    return summary


def compare_papers(
    *, metrics: str | Path, experiments: dict, scale: str, csv: str | Path, md: str | Path
) -> pd.DataFrame:
    """Every reproduced cell that a paper reports, beside the paper's value, with our 95% interval
    over seeds (``cell_interval``: Clopper-Pearson where each seed is one trial, else the clipped
    t-interval) and whether the paper's value falls inside it: True, False, or None (n/a) where
    there is no interval (one seed, or rates with no spread)."""
    metrics = pd.read_csv(metrics)
    counts = {"clean_acc": "n_clean", "poison_success": "n_eval"}
    rows = []
    for table, experiment in experiments.items():
        for ref in reference_numbers(table).itertuples():
            cell = metrics[(metrics.attack == ref.attack) & (metrics.defense == ref.defense)]
            if cell.empty or ref.attack not in experiment["attacks"] or ref.defense not in experiment["defenses"]:
                continue
            low, high, method = cell_interval(cell, ref.metric, counts[ref.metric])
            rows.append(
                {
                    "table": table,
                    "attack": ref.attack,
                    "defense": ref.defense,
                    "metric": ref.metric,
                    "paper": ref.paper,
                    "paper_value": ref.value,
                    "ours": float(cell[ref.metric].mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "ci_method": method,
                    "n_seeds": int(cell[ref.metric].notna().sum()),
                    "paper_inside_ci": None if math.isnan(low) else bool(low <= ref.value <= high),
                }
            )
    columns = [
        "table",
        "attack",
        "defense",
        "metric",
        "paper",
        "paper_value",
        "ours",
        "ci_low",
        "ci_high",
        "ci_method",
        "n_seeds",
        "paper_inside_ci",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    lines = list(COMPARISON_HEADER)
    for r in frame.itertuples():
        no_interval = r.paper_inside_ci is None
        interval = "n/a" if no_interval else f"{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}"
        inside = "n/a" if no_interval else "yes" if r.paper_inside_ci else "**no**"
        lines.append(
            f"| {r.table} | {r.attack} | {r.defense} | {r.metric} | {100 * r.paper_value:.1f} | "
            f"{100 * r.ours:.1f} | {interval} | {r.n_seeds} | {inside} |"
        )
    note = COMPARISON_NOTE
    write_report(frame, csv=csv, md=md, lines=lines, note=note, scale=scale)
    return frame


def write_report(frame: pd.DataFrame, *, csv, md, lines: list[str], note: str, scale: str) -> None:
    """A report's CSV (``frame``) and its markdown: ``lines``, then ``note`` and the scale it was
    computed at."""
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join([*lines, "", note, "", f"Computed at: {scale}."]) + "\n")
