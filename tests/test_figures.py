"""The figures show what they mean: every seed as a point and the table's own interval (not mean ±
std of 0/1 values), and illustrations whose panels mix visibly and are labelled from the run's own
defense entries."""

import math

import pandas as pd
import pytest
import torch

from augdefense import data, figures, illustrations, io, poisons, tables
from augdefense.metrics import seed_interval


def _one_target_per_seed(successes, accuracies) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "attack": "wb",
                "defense": "none",
                "seed": s,
                "clean_acc": acc,
                "n_clean": 1000,
                "poison_success": float(hit),
                "n_eval": 1,
            }
            for s, (hit, acc) in enumerate(zip(successes, accuracies))
        ]
    )


def _flat(pairs):
    return [v for pair in pairs for v in pair]


def _points(ax):
    """The offsets of every scatter drawn on ``ax``, one array per call."""
    from matplotlib.collections import PathCollection

    return [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]


def _bars(ax):
    """(x range, y range) of every error bar drawn on ``ax``."""
    from matplotlib.collections import LineCollection

    out = []
    for collection in ax.collections:
        if isinstance(collection, LineCollection):
            for segment in collection.get_segments():
                (x0, y0), (x1, y1) = segment
                out.append(((min(x0, x1), max(x0, x1)), (min(y0, y1), max(y0, y1))))
    return out


def test_the_tradeoff_figure_draws_each_seed_and_the_tables_interval():
    successes, accuracies = [1, 1, 0, 1, 0], [0.91, 0.92, 0.93, 0.90, 0.94]
    frame = _one_target_per_seed(successes, accuracies)
    summary = tables.summarize(frame, "table2", ["wb"], ["none"])
    fig = figures.tradeoff_figure(summary, figures.SeedValues(frame, None), ["wb"], ["none"], {"none": {}})
    ax = fig.axes[0]
    points = _points(ax)
    assert len(points) == 1 and len(points[0]) == len(successes)  # one point per seed
    xs, ys = points[0][:, 0], points[0][:, 1]
    assert sorted(xs) == pytest.approx(sorted(100 * a for a in accuracies))
    # 0/1 successes, jittered by at most SUCCESS_JITTER points: hits near 100, misses near 0.
    for y, hit in zip(ys[xs.argsort()], [s for _, s in sorted(zip(accuracies, successes))]):
        assert abs(y - 100 * hit) <= figures.SUCCESS_JITTER
    low, high, _ = seed_interval(frame.poison_success, frame.n_eval)
    clean_low, clean_high, _ = seed_interval(frame.clean_acc, frame.n_clean)
    bars = _bars(ax)
    vertical = [y for x, y in bars if x[0] == x[1]]
    horizontal = [x for x, y in bars if y[0] == y[1]]
    assert _flat(vertical) == pytest.approx([100 * low, 100 * high])
    assert _flat(horizontal) == pytest.approx([100 * clean_low, 100 * clean_high])
    # Not mean ± std: the std of (1, 1, 0, 1, 0) would reach past 100%.
    mean, std = frame.poison_success.mean(), frame.poison_success.std()
    assert 100 * (mean + std) > 100 >= vertical[0][1]


def test_the_width_figure_draws_seeds_and_intervals_of_success_and_shift(tmp_path):
    specs = {f"k{k}": {"type": "mixup", "k": k, "weights": "equal", "laplace": 8} for k in (1, 2, 4)}
    rows = []
    for i, defense in enumerate(specs):
        for seed in range(4):
            for attack, margin in (("wb_adapt", 1.0 + seed * (i + 1)), ("wb_control", -1.0)):
                rows.append(
                    {
                        "attack": attack,
                        "defense": defense,
                        "seed": seed,
                        "clean_acc": 0.9,
                        "n_clean": 100,
                        "poison_success": float(attack == "wb_adapt" and seed < 3 - i),
                        "n_eval": 1,
                        "goal_margin": margin,
                    }
                )
    frame = pd.DataFrame(rows)
    summary = tables.summarize(frame, "figure4b", ["wb_adapt"], list(specs), "wb_control")
    fig = figures.width_figure(summary, figures.SeedValues(frame, "wb_control"), ["wb_adapt"], list(specs), specs)
    success_ax, shift_ax = fig.axes[:2]
    for ax in (success_ax, shift_ax):
        assert [len(p) for p in _points(ax)] == [4, 4, 4]  # three cells, four seeds each
    shift_points = sorted(y for points in _points(shift_ax) for _, y in points)
    assert shift_points == pytest.approx(sorted(2.0 + s * (i + 1) for i in range(3) for s in range(4)))
    success_bars = sorted(y for x, y in _bars(success_ax) if x[0] == x[1])
    expected = sorted((100 * r.poison_success_ci_low, 100 * r.poison_success_ci_high) for r in summary.itertuples())
    assert _flat(success_bars) == pytest.approx(_flat(expected))
    shift_bars = sorted(y for x, y in _bars(shift_ax) if x[0] == x[1])
    expected = sorted((r.goal_margin_shift_ci_low, r.goal_margin_shift_ci_high) for r in summary.itertuples())
    assert _flat(shift_bars) == pytest.approx(_flat(expected))


def test_a_one_seed_cell_draws_its_point_and_no_bar():
    frame = _one_target_per_seed([1], [0.9])
    summary = tables.summarize(frame, "table2", ["wb"], ["none"])
    fig = figures.tradeoff_figure(summary, figures.SeedValues(frame, None), ["wb"], ["none"], {"none": {}})
    assert math.isnan(summary.clean_acc_ci_low.iloc[0])
    assert not [x for x, y in _bars(fig.axes[0]) if y[0] == y[1]]  # no clean-accuracy interval from one seed


def test_illustrated_defenses_take_the_first_of_each_kind_the_experiments_run():
    defenses = {
        "none": {"type": "none"},
        "unused_mixup": {"type": "mixup", "k": 8, "laplace": 0},
        "mixup4": {"type": "mixup", "k": 4, "laplace": 0},
        "noise_only": {"type": "mixup", "k": 1, "laplace": 8},
        "dpih": {"type": "mixup", "k": 4, "weights": "equal", "laplace": 8},
        "dpih2": {"type": "mixup", "k": 2, "weights": "equal", "laplace": 16},
        "cutmix": {"type": "cutmix", "alpha": 1.0, "p": 0.5, "laplace": 0},
        "ss": {"type": "spectral_signatures"},
    }
    experiments = {
        "a": {"defenses": ["none", "mixup4", "noise_only", "ss"]},
        "b": {"defenses": ["dpih", "dpih2", "cutmix"]},
    }
    chosen = illustrations.illustrated_defenses(experiments, defenses)
    assert chosen == {n: defenses[n] for n in ("mixup4", "cutmix", "dpih")}
    assert illustrations.illustrated_defenses({"a": {"defenses": ["none", "ss"]}}, defenses) == {}


@pytest.fixture(scope="module")
def illustration_inputs(tmp_path_factory):
    """Prepared digits and a one-image patch poison of class 3 (as a crafted artifact holds it)."""
    root = tmp_path_factory.mktemp("illustrations")
    data.prepare(spec={"source": "digits"}, out=root / "data.pt")
    dataset = data.load(root / "data.pt")
    index = int(torch.nonzero(dataset.train_labels == 3).flatten()[0])
    patched = dataset.train_images[index].clone()
    patched[:, :2, :2] = 255
    poison = poisons.none(dataset.image_shape) | {
        "train_indices": torch.tensor([index]),
        "train_images": patched[None],
        "train_labels": torch.tensor([3]),
        "info": {"attack": "patch10", "type": "patch"},
    }
    io.save_tensors(root / "poison.pt", poison)
    return root, dataset


def _illustrate(root, defenses, name):
    return illustrations.render_illustrations(
        data=root / "data.pt",
        poison=root / "poison.pt",
        defenses=defenses,
        png=root / f"{name}.png",
        pdf=root / f"{name}.pdf",
    )


@pytest.mark.parametrize("k, noise", [(4, 8), (2, 16)])
def test_illustration_labels_follow_the_config(illustration_inputs, k, noise):
    root, dataset = illustration_inputs
    defenses = {
        "mix": {"type": "mixup", "k": 2, "alpha": 1.0, "weights": "dirichlet", "laplace": 0},
        "cm": {"type": "cutmix", "alpha": 1.0, "p": 0.5, "laplace": 0},
        "dpih": {"type": "mixup", "k": k, "alpha": 1.0, "weights": "equal", "laplace": noise},
    }
    titles = [panel.title for panel in _illustrate(root, defenses, f"k{k}")]
    assert (root / f"k{k}.png").stat().st_size > 5000
    assert titles[1].startswith("poisoned (patch10)")
    mixup, cutmix, dpih = titles[2:]
    assert mixup.startswith("mixup 'mix'\n(k=2, Dirichlet α=1)")
    assert cutmix.startswith("CutMix 'cm'\n(α=1, p=0.5)")
    assert dpih.startswith(f"DP-InstaHide 'dpih'\n(k={k}, equal, s={noise}/255)")
    # Every panel lists all the labels in its mix, with weights summing to 1.
    for title, width in ((mixup, 2), (cutmix, 2), (dpih, k)):
        pairs = [p.split(":") for line in title.split("\n")[2:] for p in line.split(", ")]
        assert len(pairs) == width and {c for c, _ in pairs} >= {dataset.classes[3]}
        weights = [float(w) for _, w in pairs]
        assert sum(weights) == pytest.approx(1, abs=0.02)
        if width == 2:  # a visible mix: neither image dominates
            assert all(0.3 <= w <= 0.7 for w in weights), title
        else:
            assert weights == pytest.approx([1 / k] * k, abs=0.01)


def test_the_mixup_panel_mixes_the_poison_visibly(illustration_inputs):
    """The panel's image is half the poison and half another class's training image, as its label says."""
    root, dataset = illustration_inputs
    defenses = {"mix": {"type": "mixup", "k": 2, "alpha": 1.0, "weights": "equal", "laplace": 0}}
    clean, poisoned, mixed = _illustrate(root, defenses, "mix")
    assert mixed.title.endswith(":0.50") and mixed.title.count(":0.50") == 2
    partner = 2 * mixed.image - poisoned.image
    distances = (dataset.train_images.float() / 255 - partner).abs().flatten(1).max(1).values
    match = int(distances.argmin())
    assert distances[match] < 1e-5 and int(dataset.train_labels[match]) != 3
    assert (poisoned.image - clean.image).abs().max() > 0.5  # the patch itself


def test_a_panel_no_defense_fills_is_left_out(illustration_inputs):
    root, _ = illustration_inputs
    panels = _illustrate(root, {"cm": {"type": "cutmix", "alpha": 1.0, "p": 1.0, "laplace": 0}}, "cutmix_only")
    assert len(panels) == 3 and panels[2].title.startswith("CutMix 'cm'")


def test_a_figure_saved_on_another_day_has_the_same_bytes(tmp_path, monkeypatch):
    """Two runs of one workflow write the same figure files: no creation date goes into a PDF
    (matplotlib dates one from SOURCE_DATE_EPOCH, or from the clock without it; PNGs carry none)."""
    written = []
    for day, epoch in enumerate(("0", "86400")):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        fig, ax = figures.pyplot().subplots()
        ax.plot([0, 1], [1, 0])
        out = tmp_path / f"{day}.pdf"
        figures.save(fig, out, scale="digits")
        written.append(out.read_bytes())
    assert written[0] == written[1]
