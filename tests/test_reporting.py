"""Table and figure rendering on synthetic metrics: intervals over seeds, the control shift, the DP
ceiling, and the Figure 4b / 5 plot kinds."""

import math

import pandas as pd
import pytest

from augdefense import figures, metrics, tables
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
    assert "\n\n" + tables.DPSGD_BATCH_NOTE.format(names="dpsgd_n1e-2") in md
    assert md.startswith("| defense | clean acc % (wb_adapt) |")
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


# -- metrics.csv, one table, and the comparison with the papers ------------------------------------


def test_collect_metrics_puts_the_keys_and_headline_metrics_first_sorted_by_cell(tmp_path):
    import json

    records = [
        {"seed": 1, "defense": "none", "attack": "wb", "n_eval": 1, "poison_success": 1.0, "clean_acc": 0.9},
        {"extra": "x", "seed": 0, "defense": "none", "attack": "wb", "poison_success": 0.0, "clean_acc": 0.8},
        {"seed": 0, "defense": "mixup", "attack": "wb", "clean_acc": 0.85, "goal_margin": -1.0},
    ]
    paths = []
    for i, record in enumerate(records):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(record))
    out = tmp_path / "metrics.csv"
    frame = tables.collect_metrics(runs=paths, out=out)
    assert list(frame.columns[:6]) == ["attack", "defense", "seed", "clean_acc", "poison_success", "goal_margin"]
    assert set(frame.columns[6:]) == {"n_eval", "extra"}
    assert list(zip(frame.defense, frame.seed)) == [("mixup", 0), ("none", 0), ("none", 1)]
    assert pd.read_csv(out).equals(frame.reset_index(drop=True))
    (tmp_path / "bad.json").write_text(json.dumps({"attack": "wb", "defense": "none", "seed": 2}))
    with pytest.raises(ArtifactError, match=r"bad\.json: run record lacks \['clean_acc'\]"):
        tables.collect_metrics(runs=[*paths, tmp_path / "bad.json"], out=out)


def test_render_table_writes_the_cells_it_ran_and_says_why_others_are_missing(tmp_path):
    frame = _backdoor_metrics(100)
    frame.to_csv(tmp_path / "m.csv", index=False)
    experiment = {
        "attacks": ["patch10", "patch100"],
        "defenses": ["none", "ss"],
        "exclude": [{"attack": "patch100", "defense": "ss"}],
    }
    summary = tables.render_table(
        metrics=tmp_path / "m.csv",
        table="table1",
        experiment=experiment,
        scale="quick",
        csv=tmp_path / "t.csv",
        md=tmp_path / "t.md",
    )
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("# table1\n\n| defense | clean acc % (patch10) | poison success % (patch10) |")
    assert "| none | 90.0 ± 0.0 (paper 94.3) | 50.0 ± 20.0 [0–100] (paper 45.6) | not run | not run |" in md
    assert "| ss | not run | not run | not applicable | not applicable |" in md
    assert tables.TABLE_NOTE.format(seeds="3", papers="dp-instahide") in md and md.endswith("Computed at: quick.\n")
    assert tables.CONTROL_NOTE.split("'")[0] not in md
    assert pd.read_csv(tmp_path / "t.csv").poison_success_mean.tolist() == pytest.approx(summary.poison_success_mean)


def test_summary_rows_follow_the_experiments_order_with_the_papers_values(tmp_path):
    frame = pd.read_csv(_metrics(tmp_path, ["mixup", "none"]))
    summary = tables.summarize(frame, "table2", ["wb_adapt"], ["none", "mixup"], "wb_control")
    assert summary.defense.tolist() == ["none", "mixup"] and summary.index.tolist() == [0, 1]
    assert summary.paper_poison_success.tolist() == pytest.approx([0.9, 0.7273])  # DP-InstaHide's first
    assert summary.paper_clean_acc.tolist() == pytest.approx([0.9208, 0.915])
    assert summary.control_goal_probability_mean.tolist() == [0.0, 0.0]
    assert summary.goal_probability_shift.tolist() == pytest.approx([1 / 6, 1 / 3])
    assert summary.clean_acc_ci_method.tolist() == ["t over seeds"] * 2  # 100 images per seed
    md = tables.to_markdown(summary, "table2", ["wb_adapt"], ["none", "mixup"], control="wb_control")
    assert tables.CONTROL_NOTE.format(control="wb_control") in md
    assert (
        "| none | 89.0 ± 0.0 (paper 92.1) | 33.3 ± 57.7 [1–91] {DP ceiling 10} (paper 90.0) | 16.7; 0.0 | +4.00 [" in md
    )


def test_the_dp_ceiling_uses_opacus_delta_and_the_controls_success(tmp_path):
    frame = pd.read_csv(_metrics(tmp_path, ["none"])).drop(columns="theorem2_epsilon")
    frame["dp_epsilon"] = [2.0 if a == "wb_adapt" else math.nan for a in frame.attack]
    frame["dp_delta"] = 1e-5
    frame.loc[(frame.attack == "wb_control") & (frame.seed == 0), "poison_success"] = 1.0
    summary = tables.summarize(frame, "table2", ["wb_adapt"], ["none"], "wb_control")
    row = summary.iloc[0]
    assert row.dp_epsilon_used == 2.0
    assert row.dp_success_ceiling == pytest.approx(poison_success_ceiling(2.0, 1e-5, 5, 1 / 3))
    no_control = tables.summarize(frame, "table2", ["wb_adapt"], ["none"])
    assert no_control.iloc[0].dp_success_ceiling == pytest.approx(poison_success_ceiling(2.0, 1e-5, 5, 0.0))
    md = tables.to_markdown(summary, "table2", ["wb_adapt"], ["none"], control="wb_control")
    assert "\n\n" + tables.DP_CEILING_NOTE + "\n\n" in md
    vacuous = tables.summarize(frame.assign(dp_epsilon=50.0), "table2", ["wb_adapt"], ["none"], "wb_control")
    assert "{DP ceiling 100}" in tables.to_markdown(vacuous, "table2", ["wb_adapt"], ["none"], control="wb_control")
    plain = tables.summarize(frame.assign(dp_epsilon=math.nan), "table2", ["wb_adapt"], ["none"], "wb_control")
    assert math.isnan(plain.iloc[0].dp_success_ceiling) and math.isnan(plain.iloc[0].dp_epsilon_used)


def test_the_all_images_rate_is_shown_beside_the_scored_one():
    frame = _backdoor_metrics(1).assign(poison_success=[1.0, 0.0, 1.0], poison_success_all_images=[0.5, 0.3, 0.4])
    summary = tables.summarize(frame, "table6", ["patch10"], ["none"])
    md = tables.to_markdown(summary, "table6", ["patch10"], ["none"])
    assert "66.7 ± 57.7 [9–99] {all images 40.0}" in md and "\n\n" + tables.ALL_IMAGES_NOTE in md


def _papers(monkeypatch, rows):
    reference = pd.DataFrame(rows, columns=["paper", "table", "attack", "defense", "metric", "value"])
    monkeypatch.setattr(tables, "reference_numbers", lambda table: reference[reference.table == table])


def test_compare_papers_takes_each_reported_cell_the_run_has(tmp_path, monkeypatch):
    frame = _backdoor_metrics(100)
    frame = pd.concat([frame, frame.assign(defense="mixup", poison_success=[0.6, 0.7, 0.8])])
    frame.loc[frame.seed == 2, "clean_acc"] = 0.93
    frame.to_csv(tmp_path / "m.csv", index=False)
    _papers(
        monkeypatch,
        [
            ("p", "table1", "patch10", "cutmix", "poison_success", 0.1),  # not run
            ("p", "table1", "patch10", "none", "clean_acc", 0.95),
            ("p", "table1", "patch100", "none", "poison_success", 0.9),  # not in the experiment
            ("p", "table1", "patch10", "mixup", "poison_success", 0.2),
            ("q", "table9", "patch10", "none", "poison_success", 0.5),  # another table
        ],
    )
    experiments = {
        "table1": {"attacks": ["patch10"], "defenses": ["none", "mixup", "cutmix"]},
        "table9": {"attacks": ["patch10"], "defenses": ["mixup"]},
    }
    out = tables.compare_papers(
        metrics=tmp_path / "m.csv", experiments=experiments, scale="s", csv=tmp_path / "c.csv", md=tmp_path / "c.md"
    )
    assert list(out.columns) == [
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
    assert list(zip(out.table, out.defense, out.metric)) == [
        ("table1", "none", "clean_acc"),
        ("table1", "mixup", "poison_success"),
    ]
    accuracy, success = out.iloc[0], out.iloc[1]
    assert accuracy.ours == pytest.approx(0.91) and accuracy.paper == "p" and accuracy.n_seeds == 3
    assert (accuracy.ci_low, accuracy.ci_high) == pytest.approx(metrics.mean_interval([0.9, 0.9, 0.93])[1:3])
    assert bool(accuracy.paper_inside_ci) is True and bool(success.paper_inside_ci) is False
    md = (tmp_path / "c.md").read_text()
    assert md.startswith("\n".join(tables.COMPARISON_HEADER) + "\n")
    assert "| table1 | patch10 | mixup | poison_success | 20.0 | 70.0 | 45.2–94.8 | 3 | **no** |" in md
    assert "| table1 | patch10 | none | clean_acc | 95.0 | 91.0 |" in md and "| yes |" in md
    assert tables.COMPARISON_NOTE in md and md.endswith("Computed at: s.\n")
    assert pd.read_csv(tmp_path / "c.csv").paper_value.tolist() == [0.95, 0.2]


def test_the_reference_numbers_prefer_the_first_paper_listed():
    table2 = tables.reference_numbers("table2").set_index(["attack", "defense", "metric"])
    assert table2.loc[("wb_adapt", "mixup", "poison_success")].paper == "dp-instahide"
    assert table2.loc[("wb_adapt", "mixup", "poison_success")].value == pytest.approx(0.7273)
    assert table2.loc[("wb", "none", "poison_success")].paper == "strong-augmentation"
    assert not table2.index.duplicated().any()
    assert tables.reference_numbers("figure4b").empty


def test_to_markdown_lays_out_every_kind_of_cell():
    frame = pd.concat(
        [
            _backdoor_metrics(100).assign(attack="wb", goal_probability=0.2, goal_margin=[1.0, 2.0, 3.0]),
            _backdoor_metrics(100).assign(attack="c", poison_success=0.0, goal_probability=0.1, goal_margin=-1.0),
            # mixup's one seed has no control run
            _backdoor_metrics(100).assign(attack="wb", defense="mixup", goal_probability=0.3).iloc[:1],
        ]
    )
    summary = tables.summarize(frame, "t", ["wb"], ["none", "mixup", "cutout"], "c")
    assert "index" not in summary.columns
    md = tables.to_markdown(summary, "t", ["wb"], ["none", "mixup", "cutout"], {("wb", "cutout")}, "c", "x")
    head = md.split("\n\n")[0].splitlines()
    assert head == [
        "| defense | clean acc % (wb) | poison success % (wb) | goal-class probability % (wb; control) "
        "| goal log-odds shift (wb) |",
        "|---|---|---|---|---|",
        "| none | 90.0 ± 0.0 | 50.0 ± 20.0 [0–100] | 20.0; 10.0 | +3.00 [+0.52, +5.48] |",
        "| mixup | 90.0 | 30.0 | 30.0; – | – |",  # one seed, and no control run beside it
        "| cutout | not applicable | not applicable | not applicable | not applicable |",
    ]
    assert "\n\nMean ± std over 1, 3 seed(s) per cell;" in md and "Paper values: none recorded" in md
    assert md.endswith("\n\nComputed at: x.\n") and "\n\n" + tables.CONTROL_NOTE.format(control="c") + "\n\n" in md


def test_a_cell_without_a_trial_count_gets_the_t_interval():
    frame = _backdoor_metrics(1).assign(poison_success=[1.0, 0.0, 1.0]).drop(columns="n_eval")
    frame["dp_epsilon"] = math.nan  # a column other cells fill: its gaps do not drop seeds
    row = tables.summarize(frame, "table1", ["patch10"], ["none"]).iloc[0]
    assert row.poison_success_count == 3
    assert row.poison_success_ci_method == "t over seeds"
    assert (row.poison_success_ci_low, row.poison_success_ci_high) == pytest.approx((0.0, 1.0))


def test_the_dp_ceiling_of_several_cells_and_a_control_missing_for_one(tmp_path):
    frame = pd.read_csv(_metrics(tmp_path, ["none", "mixup"]))
    frame.loc[frame.defense == "none", "theorem2_epsilon"] = math.nan  # the first cell has no guarantee
    frame = frame[~((frame.attack == "wb_control") & (frame.defense == "mixup"))]  # and the second no control
    frame.loc[frame.attack == "wb_control", "poison_success"] = 1.0
    summary = tables.summarize(frame, "table2", ["wb_adapt"], ["none", "mixup"], "wb_control")
    assert math.isnan(summary.dp_success_ceiling[0])
    assert summary.dp_success_ceiling[1] == pytest.approx(poison_success_ceiling(0.02, 0.0, 5, 0.0))


def test_render_table_with_a_control_and_no_exclusions(tmp_path):
    path = _metrics(tmp_path, ["none"])
    experiment = {"attacks": ["wb_adapt"], "defenses": ["none"], "control": "wb_control"}
    tables.render_table(
        metrics=path, table="table2", experiment=experiment, scale="q", csv=tmp_path / "t.csv", md=tmp_path / "t.md"
    )
    assert "goal log-odds shift (wb_adapt)" in (tmp_path / "t.md").read_text()
    written = pd.read_csv(tmp_path / "t.csv")
    assert written.columns[0] == "defense" and "goal_margin_shift" in written


def test_compare_papers_with_nothing_to_compare_writes_an_empty_table(tmp_path, monkeypatch):
    _backdoor_metrics(100).to_csv(tmp_path / "m.csv", index=False)
    _papers(monkeypatch, [("p", "table1", "patch10", "cutmix", "poison_success", 0.1)])
    out = tables.compare_papers(
        metrics=tmp_path / "m.csv",
        experiments={"table1": {"attacks": ["patch10"], "defenses": ["none"]}},
        scale="s",
        csv=tmp_path / "c.csv",
        md=tmp_path / "c.md",
    )
    assert out.empty and "paper_inside_ci" in out.columns
    assert (tmp_path / "c.md").read_text() == "\n".join(
        [*tables.COMPARISON_HEADER, "", tables.COMPARISON_NOTE, "", "Computed at: s."]
    ) + "\n"
