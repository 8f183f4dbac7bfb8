"""Table and figure rendering on synthetic metrics: intervals over seeds, the control shift, the DP
ceiling, and the Figure 4b / 5 plot kinds."""

import pandas as pd
import pytest

from augdefense import figures, tables
from augdefense.errors import ArtifactError
from augdefense.privacy import poison_success_ceiling

SPECS = {
    f"dpih_k{k}_s{s}": {"type": "mixup", "k": k, "weights": "equal", "laplace": s} for k in (1, 2, 4) for s in (4, 16)
}


def _metrics(tmp_path, defenses, attack="wb_adapt", seeds=3):
    rows = []
    for i, defense in enumerate(defenses):
        for seed in range(seeds):
            for name, success, margin in ((attack, float(seed < 2 - i % 2), 1.0 + seed), ("wb_control", 0.0, -2.0)):
                rows.append(
                    {
                        "attack": name,
                        "defense": defense,
                        "seed": seed,
                        "clean_acc": 0.9 - 0.01 * i,
                        "poison_success": success,
                        "goal_probability": 0.5 * success,
                        "goal_margin": margin,
                        "n_eval": 1,
                        "n_clean": 100,
                        "n_poisons": 5 if name == attack else 0,
                        "theorem2_epsilon": 0.01 * (i + 1),
                    }
                )
    path = tmp_path / "metrics.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_summary_pairs_each_run_with_its_control_and_bounds_dp_runs(tmp_path):
    defenses = list(SPECS)[:2]
    path = _metrics(tmp_path, defenses)
    summary = tables.summarize(pd.read_csv(path), "figure4b", ["wb_adapt"], defenses, "wb_control")
    first = summary.iloc[0]
    # margins 1, 2, 3 against control -2: shift 4 with an interval around it from 3 pairs.
    assert first.goal_margin_shift == pytest.approx(4.0) and first.goal_margin_shift_n == 3
    assert first.goal_margin_shift_ci_low < 4.0 < first.goal_margin_shift_ci_high
    # One target per seed: the Clopper-Pearson interval of 2 successes in 3 seeds.
    assert first.poison_success_mean == pytest.approx(2 / 3) and first.poison_success_count == 3
    assert (first.poison_success_ci_low, first.poison_success_ci_high) == pytest.approx((0.0943, 0.9916), abs=1e-4)
    assert first.poison_success_ci_method == "clopper-pearson over seeds"
    assert first.dp_success_ceiling == pytest.approx(poison_success_ceiling(0.01, 0.0, 5, 0.0))
    md = tables.to_markdown(summary, "figure4b", ["wb_adapt"], defenses, control="wb_control")
    assert "DP ceiling" in md and "+4.00" in md
    assert "66.7 ± 57.7 [9–99]" in md and "Clopper–Pearson (exact) interval" in md


@pytest.mark.parametrize("kind", ["width", "noise"])
def test_noise_figures_render_from_the_defense_entries(tmp_path, kind):
    path = _metrics(tmp_path, list(SPECS))
    experiment = {"attacks": ["wb_adapt"], "defenses": list(SPECS), "control": "wb_control", "plot": kind}
    png, pdf = tmp_path / "f.png", tmp_path / "f.pdf"
    figures.render_figure(
        metrics=path, table="figure4b", experiment=experiment, defenses=SPECS, scale="test", png=png, pdf=pdf
    )
    assert png.stat().st_size > 5000 and pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(ArtifactError, match="dpih_k1_s4"):
        figures.render_figure(
            metrics=path, table="figure4b", experiment=experiment, defenses={}, scale="test", png=png, pdf=pdf
        )


def test_a_cell_without_dp_has_no_ceiling(tmp_path):
    path = _metrics(tmp_path, ["none"])
    frame = pd.read_csv(path).drop(columns="theorem2_epsilon")
    summary = tables.summarize(frame, "table2", ["wb_adapt"], ["none"], "wb_control")
    assert "dp_success_ceiling" not in summary
    assert summary.iloc[0].paper_poison_success == pytest.approx(0.90)  # the short paper reports this cell


def test_the_papers_dp_sgd_is_flagged_as_carrying_no_guarantee(tmp_path):
    frame = pd.read_csv(_metrics(tmp_path, ["none", "dpsgd_n1e-2"])).drop(columns="theorem2_epsilon")
    frame["defense_type"] = frame.defense.map({"none": "none", "dpsgd_n1e-2": "dpsgd_batch"})
    summary = tables.summarize(frame, "table2", ["wb_adapt"], ["none", "dpsgd_n1e-2"], "wb_control")
    md = tables.to_markdown(summary, "table2", ["wb_adapt"], ["none", "dpsgd_n1e-2"], control="wb_control")
    assert "dpsgd_n1e-2: DP-SGD as the papers ran it" in md and "no formal privacy guarantee" in md
    frame = frame[frame.defense == "none"]
    summary = tables.summarize(frame, "table2", ["wb_adapt"], ["none"], "wb_control")
    assert "no formal privacy guarantee" not in tables.to_markdown(
        summary, "table2", ["wb_adapt"], ["none"], control="wb_control"
    )


def _backdoor_metrics(images_per_seed: int) -> pd.DataFrame:
    """Three seeds of a backdoor cell whose per-seed success rates are 30%, 50% and 70%, each scored
    on ``images_per_seed`` patched test images."""
    return pd.DataFrame(
        [
            {
                "attack": "patch10",
                "defense": "none",
                "seed": s,
                "clean_acc": 0.9,
                "n_clean": 300,
                "poison_success": rate,
                "n_eval": images_per_seed,
            }
            for s, rate in enumerate((0.3, 0.5, 0.7))
        ]
    )


def test_more_test_images_per_seed_do_not_shrink_the_interval():
    """The seed is the unit: quadrupling the images each seed is scored on leaves the interval (set by
    the seed-to-seed spread) as wide as it was, where pooling images would have halved it."""
    small = tables.summarize(_backdoor_metrics(100), "table1", ["patch10"], ["none"]).iloc[0]
    large = tables.summarize(_backdoor_metrics(400), "table1", ["patch10"], ["none"]).iloc[0]
    width = small.poison_success_ci_high - small.poison_success_ci_low
    assert large.poison_success_ci_high - large.poison_success_ci_low == pytest.approx(width)
    assert width > 0.9  # t(2) x 0.2 / sqrt(3) each side: a 3-seed interval is wide
    assert small.poison_success_ci_method == "t over seeds"


def test_a_rate_interval_past_one_is_clipped_in_the_table():
    """Per-seed rates 50%, 90%, 100%: the t-interval reaches 145.7%; the table shows [14–100]."""
    frame = _backdoor_metrics(100)
    frame["poison_success"] = [0.5, 0.9, 1.0]
    summary = tables.summarize(frame, "table1", ["patch10"], ["none"])
    assert summary.iloc[0].poison_success_ci_high == 1.0
    md = tables.to_markdown(summary, "table1", ["patch10"], ["none"])
    assert "80.0 ± 26.5 [14–100]" in md and "clipped to [0, 100]" in md


def test_a_cell_whose_seeds_agree_shows_no_interval():
    frame = _backdoor_metrics(100)
    frame["poison_success"] = 1.0
    summary = tables.summarize(frame, "table1", ["patch10"], ["none"])
    assert summary.iloc[0].poison_success_ci_low != summary.iloc[0].poison_success_ci_low  # NaN
    assert "| 100.0 ± 0.0 (paper 45.6) |" in tables.to_markdown(summary, "table1", ["patch10"], ["none"])
