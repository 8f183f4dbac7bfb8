"""Figures: each experiment's figure by its plot kind (the papers' Figures 2-5), the augmentation
illustrations (Figures 1 and 3) and DP-InstaHide's Figure 4a. One writer, ``save``, for all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from augdefense.errors import ArtifactError
from augdefense.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, *outs: str | Path, scale: str | None = None) -> None:
    """Write ``fig`` to each path (format from the suffix), noting the run's scale under it."""
    plt = _pyplot()
    if scale:
        fig.text(0.5, 0.002, f"computed at: {scale}", ha="center", va="bottom", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03 if scale else 0, 1, 1))
    for out in outs:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=Path(out).suffix[1:], dpi=150)
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
    kind = experiment.get("plot", "tradeoff")
    fig = PLOTS[kind](summary, attacks, names, defenses)
    save(fig, png, pdf, scale=scale)


def tradeoff_figure(summary: pd.DataFrame, attacks: list[str], defenses: list[str], specs: dict):
    """The papers' Figures 2 and 3: poison success against clean accuracy per defense, one panel per
    attack; hollow markers are the paper's values."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, attack in zip(axes[0], attacks):
        for i, defense in enumerate(defenses):
            row = summary[(summary.attack == attack) & (summary.defense == defense)]
            if row.empty or "poison_success_mean" not in row:
                continue
            r = row.iloc[0]
            color = colors[i % len(colors)]
            ax.errorbar(
                100 * r.clean_acc_mean,
                100 * r.poison_success_mean,
                xerr=100 * _or_zero(r.clean_acc_std),
                yerr=100 * _or_zero(r.poison_success_std),
                fmt="o",
                color=color,
                capsize=3,
                label=defense,
            )
            if r.paper_poison_success == r.paper_poison_success:
                ax.plot(100 * r.paper_clean_acc, 100 * r.paper_poison_success, "o", mfc="none", color=color, ms=9)
        ax.set_title(attack)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("poison success (%)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title="filled: ours (mean ± std)\nhollow: paper", title_fontsize=7)
    return fig


def width_figure(summary: pd.DataFrame, attacks: list[str], defenses: list[str], specs: dict):
    """DP-InstaHide Figure 4b: success against mixture width k, one line per Laplacian noise level."""

    def curves(rows: pd.DataFrame):
        rows = rows.assign(
            k=[specs[d].get("k", 1) if specs[d]["type"] in ("mixup", "none") else math.nan for d in rows.defense]
        )
        for noise, group in rows.groupby("noise"):
            group = group.sort_values("k")
            yield f"s = {noise:g}/255", group.k, group, None

    return _curve_figure(summary, attacks, specs, curves, "mixture width k", "Laplacian noise")


def noise_figure(summary: pd.DataFrame, attacks: list[str], defenses: list[str], specs: dict):
    """DP-InstaHide Figure 5: each augmentation's trade-off curve (success against clean accuracy) as
    its Laplacian noise grows; points are labelled with the noise level."""

    def curves(rows: pd.DataFrame):
        base = [json.dumps({k: v for k, v in specs[d].items() if k != "laplace"}, sort_keys=True) for d in rows.defense]
        for _, group in rows.assign(base=base).groupby("base"):
            group = group.sort_values("noise")
            spec = specs[group.defense.iloc[0]]
            name = spec["type"] + (f" k={spec['k']}" if "k" in spec else "")
            yield name, 100 * group.clean_acc_mean, group, group.noise

    return _curve_figure(summary, attacks, specs, curves, "clean accuracy (%)", "augmentation (labels: s/255)")


def _curve_figure(summary: pd.DataFrame, attacks: list[str], specs: dict, curves, xlabel: str, legend: str):
    """Curves per attack panel; with a control, a second row shows the goal log-odds shift against it
    (the finer measure at small scale). ``curves(rows)`` yields (label, x, rows, point labels)."""
    plt = _pyplot()
    shift = "goal_margin_shift" in summary
    fig, axes = plt.subplots(1 + shift, len(attacks), figsize=(4.6 * len(attacks), 3.6 * (1 + shift)), squeeze=False)
    for col, attack in enumerate(attacks):
        rows = summary[summary.attack == attack]
        rows = rows.assign(noise=[float(specs[d].get("laplace", 0)) for d in rows.defense])
        for name, xs, group, point_labels in curves(rows):
            line = axes[0][col].plot(xs, 100 * group.poison_success_mean, marker="o", label=name)[0]
            if point_labels is not None:
                for xv, yv, s in zip(xs, 100 * group.poison_success_mean, point_labels):
                    axes[0][col].annotate(f"{s:g}", (xv, yv), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if shift:
                axes[1][col].plot(xs, group.goal_margin_shift, marker="o", color=line.get_color(), label=name)
        axes[0][col].set_title(attack)
        axes[0][col].set_ylabel("poison success (%)")
        axes[0][col].set_ylim(-5, 105)
        for ax in axes[:, col]:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        if shift:
            axes[1][col].set_ylabel("goal log-odds shift vs control")
            axes[1][col].axhline(0, color="grey", lw=0.8)
    axes[0][0].legend(fontsize=7, title=legend, title_fontsize=7)
    return fig


# An experiment's `plot` key -> the function drawing its figure.
PLOTS = {"tradeoff": tradeoff_figure, "width": width_figure, "noise": noise_figure}


def _or_zero(value: float) -> float:
    return value if value == value else 0.0


def render_illustrations(*, data: str | Path, poison: str | Path, png: str | Path, pdf: str | Path) -> None:
    """As the papers' Figures 1 and 3: a training image, its backdoored version, and that poison
    after mixup, CutMix and DP-InstaHide (4-way equal mixup, then Laplacian noise), from this
    run's own data and poison, through the project's own defense implementations."""
    import torch

    from augdefense import data as datasets
    from augdefense import defenses, poisons

    plt = _pyplot()
    dataset = datasets.load(data)
    poison = poisons.load(poison, dataset.image_shape, len(dataset.train_labels), dataset.num_classes)
    if len(poison["train_indices"]):
        index = int(poison["train_indices"][0])
        poisoned = poison["train_images"][0]
    else:  # a clean control poisons nothing: show a patched test image instead
        index, poisoned = None, poison["eval_images"][0]
    clean = dataset.train_images[index] if index is not None else dataset.test_images[0]
    label = int(dataset.train_labels[index]) if index is not None else int(poison["eval_labels"][0])
    others = torch.nonzero(dataset.train_labels != label).flatten()[:3]
    batch = torch.cat([poisoned[None], dataset.train_images[others]]).float() / 255
    y = torch.cat([torch.tensor([label]), dataset.train_labels[others]])
    torch.manual_seed(0)
    k = dataset.num_classes
    mixed = {
        "mixup (2-way)": defenses.build({"type": "mixup", "k": 2, "weights": "equal"}, k, seed=1).transform(
            batch, y, 0
        ),
        "CutMix": defenses.build({"type": "cutmix", "alpha": 1.0, "p": 1.0}, k, seed=1).transform(batch, y, 0),
        "DP-InstaHide\n(k=4, s=16/255)": defenses.build(
            {"type": "mixup", "k": 4, "weights": "equal", "laplace": 16}, k, seed=1
        ).transform(batch, y, 0),
    }
    panels = [("clean", clean.float() / 255, None), ("backdoor patch", poisoned.float() / 255, None)]
    panels += [(name, x[0], soft[0]) for name, (x, soft) in mixed.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 3.0))
    for ax, (name, image, soft) in zip(axes, panels):
        picture = image.clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(
            picture.squeeze(-1) if picture.shape[-1] == 1 else picture,
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        if soft is not None:
            top = torch.topk(soft, min(2, len(soft)))
            name += "\n" + ", ".join(f"{dataset.classes[int(c)]}:{w:.2f}" for w, c in zip(top.values, top.indices))
        else:
            name += f"\nlabel {dataset.classes[label]}"
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    save(fig, png, pdf)


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

    plt = _pyplot()
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
