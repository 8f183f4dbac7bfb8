"""Figures: each experiment's figure by its plot kind (the papers' Figures 2-5), the augmentation
illustrations' writer (``augdefense.illustrations`` draws them) and DP-InstaHide's Figure 4a. One
writer, ``save``, for all.

The table figures show every seed as a point (the seed is the unit of replication) and each cell's
95% interval as the table computes it (``tables.summarize``, i.e. ``metrics.seed_interval``), so a
cell of one 0/1 target per seed reads as so many hits out of so many seeds, not as mean +- std."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from augdefense.errors import ArtifactError
from augdefense.io import atomic_path
from augdefense.titles import experiment_title


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# No creation date in the file, so two runs of one workflow write the same bytes.
UNDATED = {"pdf": {"CreationDate": None}}


def save(fig, *outs: str | Path, scale: str | None = None) -> None:
    """Write ``fig`` to each path (format from the suffix), noting the run's scale under it."""
    plt = pyplot()
    if scale:
        fig.text(0.5, 0.002, f"computed at: {scale}", ha="center", va="bottom", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03 if scale else 0, 1, 1))
    for out in outs:
        kind = Path(out).suffix[1:]
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=kind, dpi=150, metadata=UNDATED.get(kind))
    plt.close(fig)


def render_figure(
    *, metrics: str | Path, table: str, experiment: dict, defenses: dict, scale: str, png: str | Path, pdf: str | Path
) -> None:
    """The experiment's figure, by its ``plot`` kind (``PLOTS``); ``defenses`` holds the config
    entries of its defenses (the noise and width plots read k and the noise from them)."""
    from augdefense.tables import summarize

    frame = pd.read_csv(metrics)
    attacks, names = experiment["attacks"], experiment["defenses"]
    missing = [d for d in names if d not in defenses]
    if missing:
        raise ArtifactError(f"figure {table}: needs the defenses' config entries; missing {missing}")
    summary = summarize(frame, table, attacks, names, experiment.get("control"))
    seeds = SeedValues(frame, experiment.get("control"))
    kind = experiment.get("plot", "tradeoff")
    fig = PLOTS[kind](summary, seeds, attacks, names, defenses)
    fig.suptitle(experiment_title(table), fontsize=10)
    save(fig, png, pdf, scale=scale)


class SeedValues:
    """The per-seed values behind a summary's cells (one row of metrics.csv per seed), and the
    deterministic jitter that keeps equal values (a 0/1 success) from hiding one another."""

    def __init__(self, frame: pd.DataFrame, control: str | None):
        import numpy as np

        self.frame, self.control = frame, control
        self.rng = np.random.default_rng(0)

    def cell(self, attack: str, defense: str) -> pd.DataFrame:
        runs = self.frame[(self.frame.attack == attack) & (self.frame.defense == defense)].sort_values("seed")
        if self.control is not None and "goal_margin" in runs:
            twins = self.frame[(self.frame.attack == self.control) & (self.frame.defense == defense)]
            twin_margin = runs.seed.map(twins.set_index("seed").goal_margin)
            runs = runs.assign(goal_margin_shift=runs.goal_margin - twin_margin)
        return runs

    def jitter(self, values, spread: float):
        """``values`` plus uniform noise of +- ``spread``."""
        import numpy as np

        values = np.asarray(values, dtype=float)
        return values + self.rng.uniform(-spread, spread, len(values))


def _one_trial_per_seed(runs: pd.DataFrame) -> bool:
    return "n_eval" in runs and len(runs) > 0 and bool((runs.n_eval == 1).all())


def _center(row, metric: str) -> float:
    """A cell's mean of ``metric`` (``{metric}_mean``; a shift's column is the mean itself)."""
    return row[f"{metric}_mean"] if f"{metric}_mean" in row.index else row[metric]


def _interval_bar(row, metric: str, scale: float = 100.0):
    """errorbar's [[below], [above]] around the cell's mean, from the table's interval columns
    ``{metric}_ci_low`` and ``{metric}_ci_high``; None where the interval is undefined (one seed)."""
    mean = _center(row, metric)
    low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
    if not (low == low and high == high and mean == mean):
        return None
    return [[scale * max(0.0, mean - low)], [scale * max(0.0, high - mean)]]


def _methods(summary: pd.DataFrame) -> str:
    methods = [m for m in summary.get("poison_success_ci_method", []) if isinstance(m, str)]
    return "; ".join(dict.fromkeys(methods)) or "t over seeds"


SEED_POINT = {"s": 12, "alpha": 0.35, "linewidths": 0, "zorder": 1}
SUCCESS_JITTER = 2.0  # percentage points, for 0/1 successes only


def tradeoff_figure(summary: pd.DataFrame, seeds: SeedValues, attacks: list[str], defenses: list[str], specs: dict):
    """The papers' Figures 2 and 3: poison success against clean accuracy per defense, one panel per
    attack. Small translucent points are the seeds (successes of one target per seed jittered
    vertically), a filled marker with bars the mean and the table's 95% intervals of both, hollow
    markers the paper's values."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks) + 1.8, 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, attack in zip(axes[0], attacks):
        for i, defense in enumerate(defenses):
            row = summary[(summary.attack == attack) & (summary.defense == defense)]
            if row.empty or "poison_success_mean" not in row:
                continue
            r, color = row.iloc[0], colors[i % len(colors)]
            runs = seeds.cell(attack, defense).dropna(subset=["poison_success"])
            success = 100 * runs.poison_success
            if _one_trial_per_seed(runs):
                success = seeds.jitter(success, SUCCESS_JITTER)
            ax.scatter(100 * runs.clean_acc, success, color=color, **SEED_POINT)
            ax.errorbar(
                100 * r.clean_acc_mean,
                100 * r.poison_success_mean,
                xerr=_interval_bar(r, "clean_acc"),
                yerr=_interval_bar(r, "poison_success"),
                fmt="o",
                color=color,
                capsize=3,
                zorder=2,
                label=defense,
            )
            if r.paper_poison_success == r.paper_poison_success:
                ax.plot(100 * r.paper_clean_acc, 100 * r.paper_poison_success, "o", mfc="none", color=color, ms=9)
        ax.set_title(attack)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("poison success (%)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    _legend(axes[0], _legend_title(summary, "hollow: paper"))
    return fig


def _legend(row, title: str) -> None:
    """One legend for a row of panels, right of the last: every label any panel drew, once (a
    defense excluded from one attack still appears)."""
    entries = {}
    for ax in row:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    row[-1].legend(
        list(entries.values()),
        list(entries),
        fontsize=7,
        title=title,
        title_fontsize=6,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )


def _legend_title(summary: pd.DataFrame, extra: str) -> str:
    return f"points: seeds\nfilled: mean, 95% interval\n({_methods(summary)})\n{extra}"


def width_figure(summary: pd.DataFrame, seeds: SeedValues, attacks: list[str], defenses: list[str], specs: dict):
    """DP-InstaHide Figure 4b: success against mixture width k, one line per Laplacian noise level."""

    def curves(rows: pd.DataFrame):
        rows = rows.assign(
            k=[specs[d].get("k", 1) if specs[d]["type"] in ("mixup", "none") else math.nan for d in rows.defense]
        )
        for noise, group in rows.groupby("noise"):
            yield f"s = {noise:g}/255", group.sort_values("k"), "k", None

    return _curve_figure(summary, seeds, attacks, specs, curves, "mixture width k", "Laplacian noise")


def noise_figure(summary: pd.DataFrame, seeds: SeedValues, attacks: list[str], defenses: list[str], specs: dict):
    """DP-InstaHide Figure 5: each augmentation's trade-off curve (success against clean accuracy) as
    its Laplacian noise grows; points are labelled with the noise level."""

    def curves(rows: pd.DataFrame):
        base = [json.dumps({k: v for k, v in specs[d].items() if k != "laplace"}, sort_keys=True) for d in rows.defense]
        for _, group in rows.assign(base=base).groupby("base"):
            group = group.sort_values("noise")
            spec = specs[group.defense.iloc[0]]
            name = spec["type"] + (f" k={spec['k']}" if "k" in spec else "")
            yield name, group, "clean_acc", group.noise

    return _curve_figure(summary, seeds, attacks, specs, curves, "clean accuracy (%)", "augmentation (labels: s/255)")


def _curve_figure(summary: pd.DataFrame, seeds: SeedValues, attacks: list[str], specs: dict, curves, xlabel, legend):
    """Curves per attack panel, through the cells' means, with the table's 95% intervals as bars and
    the seeds as points; with a control, a second row shows the goal log-odds shift against it (the
    finer measure at small scale), per seed and with its paired t-interval. ``curves(rows)`` yields
    (label, rows, x, point labels): x is a column of ``rows`` (k) or ``clean_acc``, whose per-seed
    values and interval are then drawn too."""
    plt = pyplot()
    shift = "goal_margin_shift" in summary
    fig, axes = plt.subplots(
        1 + shift, len(attacks), figsize=(4.6 * len(attacks) + 1.8, 3.8 * (1 + shift)), squeeze=False
    )
    for col, attack in enumerate(attacks):
        rows = summary[summary.attack == attack]
        rows = rows.assign(noise=[float(specs[d].get("laplace", 0)) for d in rows.defense])
        series = list(curves(rows))
        for i, (name, group, x, point_labels) in enumerate(series):
            by_accuracy = x == "clean_acc"
            if by_accuracy:
                xs = 100 * group.clean_acc_mean
            else:  # each series a little aside (log2 axis), so that curves at the same k do not cover each other
                xs = group[x] * 2 ** (DODGE * (i - (len(series) - 1) / 2))
            line = axes[0][col].plot(xs, 100 * group.poison_success_mean, marker="o", label=name, zorder=2)[0]
            color = line.get_color()
            panels = [(axes[0][col], "poison_success", 100.0)] + ([(axes[1][col], "goal_margin_shift", 1.0)] * shift)
            for ax, metric, scale in panels:
                for xv, (_, r) in zip(xs, group.iterrows()):
                    _draw_cell(ax, seeds, r, xv, metric, scale, color, by_accuracy)
            if point_labels is not None:
                for xv, yv, s in zip(xs, 100 * group.poison_success_mean, point_labels):
                    axes[0][col].annotate(f"{s:g}", (xv, yv), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if shift:
                axes[1][col].plot(xs, group.goal_margin_shift, marker="o", color=color, label=name, zorder=2)
        axes[0][col].set_title(attack)
        axes[0][col].set_ylabel("poison success (%)")
        axes[0][col].set_ylim(-5, 105)
        for ax in axes[:, col]:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if series and series[0][2] != "clean_acc":
                ks = sorted({float(k) for _, group, x, _ in series for k in group[x].dropna()})
                ax.set_xscale("log", base=2)
                ax.set_xticks(ks, [f"{k:g}" for k in ks])
                ax.minorticks_off()
        if shift:
            axes[1][col].set_ylabel("goal log-odds shift vs control")
            axes[1][col].axhline(0, color="grey", lw=0.8)
    _legend(axes[0], f"{legend}\n" + _legend_title(summary, ""))
    return fig


DODGE = 0.06  # log2 units between the series of a width plot


def _draw_cell(ax, seeds: SeedValues, row, x: float, metric: str, scale: float, color, by_accuracy: bool):
    """One cell of a curve: its seeds as points and the table's interval as a bar, at ``x``."""
    runs = seeds.cell(row.attack, row.defense)
    if metric not in runs:
        return
    runs = runs.dropna(subset=[metric])
    ys = scale * runs[metric]
    if metric == "poison_success" and _one_trial_per_seed(runs):
        ys = seeds.jitter(ys, SUCCESS_JITTER)
    # Seeds by their own clean accuracy, or spread narrowly around the cell's k (log2 axis).
    xs = 100 * runs.clean_acc if by_accuracy else x * 2 ** seeds.jitter([0.0] * len(runs), DODGE / 3)
    ax.scatter(xs, ys, color=color, **SEED_POINT)
    ax.errorbar(
        x,
        scale * _center(row, metric),
        xerr=_interval_bar(row, "clean_acc") if by_accuracy else None,
        yerr=_interval_bar(row, metric, scale),
        fmt="none",
        ecolor=color,
        capsize=2,
        lw=1,
        zorder=2,
    )


# An experiment's `plot` key -> the function drawing its figure.
PLOTS = {"tradeoff": tradeoff_figure, "width": width_figure, "noise": noise_figure}


FIGURE4A = {
    "noise_levels": [2, 4, 8, 16, 32],
    "widths": list(range(1, 17)),
    "n": 50_000,
    "T": 50_000,
    "image_shape": (3, 32, 32),
}


def render_privacy_figure(*, png: str | Path, pdf: str | Path, csv: str | Path) -> pd.DataFrame:
    """DP-InstaHide Figure 4a: Theorem 2's epsilon against mixture width k for each Laplacian
    noise level s (n = T = 5e4, CIFAR-10's size). Two readings of sigma side by side: s/255 as if
    the data had unit l1-diameter (what the figure's axis suggests), and s/255 divided by
    CIFAR-10's actual l1-diameter 3*32*32 (what the theorem's assumption requires)."""
    from augdefense import privacy

    plt = pyplot()
    p = FIGURE4A
    rows = []
    for s in p["noise_levels"]:
        for k in p["widths"]:
            unit = privacy.mixup_laplace_epsilon(k, s / 255, p["n"], p["T"])
            scaled = privacy.mixup_laplace_epsilon(k, privacy.sigma_from_noise(s, p["image_shape"]), p["n"], p["T"])
            rows.append(
                {
                    "noise_over_255": s,
                    "k": k,
                    "epsilon_unit_diameter": unit,
                    "epsilon_cifar_diameter": scaled,
                    "bound_unit_diameter": privacy.mixup_laplace_epsilon_bound(k, s / 255, p["T"]),
                }
            )
    frame = pd.DataFrame(rows)
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for s, group in frame.groupby("noise_over_255"):
        axes[0].plot(group.k, group.epsilon_unit_diameter, marker="o", ms=3, label=f"s = {s}/255")
        axes[1].plot(group.k, group.epsilon_cifar_diameter, marker="o", ms=3, label=f"s = {s}/255")
    axes[0].set_title("σ = s/255 (unit l1-diameter)", fontsize=9)
    axes[1].set_title("σ = (s/255) / 3072 (CIFAR-10's l1-diameter)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("mixture width k")
        ax.set_ylabel("ε (Theorem 2, n = T = 5·10⁴)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save(fig, png, pdf)
    return frame
