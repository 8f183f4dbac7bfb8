"""The Snakemake workflow: lint, the paper-scale grid, an end-to-end tiny run, partial reruns."""

import re

import pandas as pd
import pytest
import yaml

from augdefense import config as grid
from conftest import REPO, snakemake

pytestmark = pytest.mark.workflow


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def scheduled_outputs(output: str, rule: str) -> list[str]:
    """The first output file of every job of ``rule`` in a dry run's listing."""
    outputs, current = [], None
    for line in output.splitlines():
        if line.startswith("rule "):
            current = line[5:].rstrip(":")
        elif line.strip().startswith("output:") and current == rule:
            outputs.append(line.split(":", 1)[1].split(",")[0].strip())
    return outputs


def test_lint(tmp_path):
    result = snakemake("--lint", cwd=tmp_path)
    assert "Congratulations" in result.stdout + result.stderr


def test_paper_config_schedules_one_victim_per_cell_and_seed(tmp_path):
    result = snakemake("-n", cwd=tmp_path)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    counts = job_counts(result.stdout)
    assert config["seeds"] == 20 and config["data"]["source"] == "cifar10"
    assert counts["train_victim"] == len(grid.cells(config)) * 20
    runs = set(scheduled_outputs(result.stdout, "train_victim"))
    expected = {f"results/runs/{a}/{d}/{s}.json" for a, d, s in grid.victim_runs(config)}
    assert runs == expected
    # Non-adaptive poisons are crafted once per (attack, seed), not per defense; adaptive ones once
    # per (attack, defense, seed).
    slots = {(a, grid.crafting_slot(config, a, d)) for a, d in grid.cells(config)}
    assert counts["craft_poison"] == len(slots) * 20
    adaptive = {(a, d) for a, d in grid.cells(config) if config["attacks"][a].get("adaptive")}
    assert all(config["attacks"][a]["type"] == "gradient_matching" for a, _ in adaptive)
    assert {d for _, d in adaptive} >= {"mixup", "mixup4", "cutmix", "dpsgd_n1e-2", "dpih_k4_s8", "maxup_cutout_s16"}
    # One crafting model per (recipe, defense slot, seed): none, plus each defense an adaptive attack meets.
    assert counts["train_crafting_model"] == (1 + len({d for _, d in adaptive} - {"none"})) * 20


def _shell_commands(output: str, rule: str) -> list[str]:
    """The shell command of every job of ``rule`` in a dry run with --printshellcmds."""
    commands, current = [], None
    for line in output.splitlines():
        if line.startswith("rule "):
            current = line[5:].rstrip(":")
        elif line.startswith("Shell command: python -m augdefense") and current == rule:
            commands.append(line.split(":", 1)[1].strip())
    return commands


def test_adaptive_poisons_are_crafted_on_a_model_trained_under_the_defense(tmp_path):
    """Through the DAG: the adaptive attack's crafting model is another file, trained with the
    defense's own config entry, and the crafting job receives that defense; the non-adaptive one
    crafts on the defense-free model, once for every defense."""
    import shutil

    shutil.copy(REPO / "presets" / "tiny.yaml", tmp_path / "tiny.yaml")
    out = snakemake("-n", "-p", "--configfile", str(tmp_path / "tiny.yaml"), cwd=tmp_path).stdout
    models = _shell_commands(out, "train_crafting_model")
    assert len(models) == 4  # slots none and mixup, 2 seeds
    mixup = [c for c in models if "--defense mixup " in c]
    assert len(mixup) == 2 and all('"type":"mixup"' in c and '"k":2' in c for c in mixup)
    assert all('"type":"none"' in c for c in models if "--defense none " in c)
    crafts = _shell_commands(out, "craft_poison")
    adaptive = [c for c in crafts if "--attack wb_adapt " in c]
    plain = [c for c in crafts if "--attack wb " in c]
    assert len(adaptive) == 2 and len(plain) == 2
    assert all("--crafting-model results/crafting_models/targeted/mixup/" in c and '"type":"mixup"' in c
               for c in adaptive)
    assert all("--crafting-model results/crafting_models/targeted/none/" in c and "--defense none " in c
               for c in plain)
    assert all("--crafting-model" not in c for c in crafts if "--attack patch" in c or "--attack wb_control" in c)


def test_end_to_end_tiny_run(tiny_run):
    workdir, result = tiny_run
    metrics = pd.read_csv(workdir / "results" / "metrics.csv")
    # table1: 2 attacks x 3 defenses + spectral signatures on patch10 only; table2: wb and its control
    # under 2 defenses, wb_adapt under mixup; 2 seeds each.
    # table4: fc, cp under none and ss; table6: htbd, clbd under none.
    assert len(metrics) == 2 * (2 * 3 + 1) + 2 * (2 * 2 + 1) + 2 * (2 * 2 + 2)
    assert set(metrics.defense) == {"none", "mixup", "cutmix", "ss"}
    wb = metrics[metrics.attack.isin(["wb", "wb_adapt"])]
    assert (wb.n_poisons == 14).all() and wb.goal_margin.notna().all() and (wb.n_eval == 1).all()
    assert (metrics[metrics.attack == "wb_control"].n_poisons == 0).all()
    assert set(metrics[metrics.attack == "wb_adapt"].crafting_defense) == {"mixup"}
    table2 = pd.read_csv(workdir / "results" / "tables" / "table2.csv")
    assert len(table2) == 3 and table2.goal_margin_shift_n.eq(2).all()
    md2 = (workdir / "results" / "tables" / "table2.md").read_text()
    assert "| mixup |" in md2 and "(paper 72.7)" in md2 and "log-odds shift" in md2
    assert (workdir / "results" / "figures" / "table2.png").stat().st_size > 1000
    # Transfer setting: one extractor for every seed and for both fine-tuning recipes (last layer, end to
    # end); poisons inside the fine-tuning split.
    extractors = (workdir / "results" / "extractors").rglob("*.pt")
    assert [p.relative_to(workdir / "results" / "extractors").as_posix() for p in extractors] == ["pretrain/share0.5.pt"]
    transfer = metrics[metrics.attack.isin(["fc", "cp", "htbd", "clbd"])]
    assert (transfer.n_poisons == 5).all() and transfer.clean_acc.between(0, 1).all()
    assert (transfer[transfer.attack.isin(["htbd", "clbd"])].n_eval > 1).all()
    for table, papers in (("table4", "(paper 80.0)"), ("table6", "(paper 65.0)")):
        assert papers in (workdir / "results" / "tables" / f"{table}.md").read_text()
    filtered = metrics[metrics.defense == "ss"]
    assert set(filtered.attack) == {"patch10", "fc", "cp"} and (filtered.n_removed > 0).all()
    assert filtered.filter_recall.between(0, 1).all()
    assert metrics.clean_acc.between(0, 1).all() and metrics.poison_success.between(0, 1).all()
    table = pd.read_csv(workdir / "results" / "tables" / "table1.csv")
    assert len(table) == 7 and table.clean_acc_count.eq(2).all()
    md = (workdir / "results" / "tables" / "table1.md").read_text()
    assert "| cutmix |" in md and "(paper 14.1)" in md
    assert "| ss | " in md and "not applicable" in md
    for ext in ("png", "pdf"):
        assert (workdir / "results" / "figures" / f"table1.{ext}").stat().st_size > 1000
    assert "results/tables/table1.md" in result.stdout + result.stderr


def test_nothing_to_do_after_a_complete_run(tiny_run):
    workdir, _ = tiny_run
    result = snakemake("-n", "--configfile", str(workdir / "tiny.yaml"), cwd=workdir)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_defense_reruns_only_its_jobs(tiny_run):
    workdir, _ = tiny_run
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config["defenses"]["mixup"]["alpha"] = 0.5
    changed = workdir / "tiny_mixup_alpha.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(changed), cwd=workdir)
    counts = job_counts(result.stdout)
    # The mixup victims, the adaptive attack's mixup crafting models and poisons, and what aggregates
    # them (the resolved-config record reads the whole config).
    tables = len(config["experiments"])
    assert counts == {"train_victim": 10, "train_crafting_model": 2, "craft_poison": 2, "collect_metrics": 1,
                      "render_tables": tables, "render_figures": tables, "compare_papers": 1, "resolved_config": 1,
                      "provenance_manifest": 1, "all": 1}
    runs = scheduled_outputs(result.stdout, "train_victim")
    attacks = ("patch10", "patch100", "wb", "wb_adapt", "wb_control")
    assert sorted(runs) == sorted(f"results/runs/{a}/mixup/{s}.json" for a in attacks for s in (0, 1))
    assert sorted(scheduled_outputs(result.stdout, "craft_poison")) == [
        f"results/poisons/wb_adapt/mixup/{s}.pt" for s in (0, 1)]


def _set_typo(c):
    c["defenses"]["cutmix"]["propability"] = 0.5


def _add_undefined(c):
    c["experiments"]["table1"]["defenses"].append("mixup8")


def _wrong_type(c):
    c["defenses"]["mixup"]["k"] = "four"


@pytest.mark.parametrize("edit, message", [
    (_set_typo, "'propability' was unexpected"),
    (_add_undefined, "experiments.table1.defenses: 'mixup8' is not defined"),
    (_wrong_type, "'four'"),
])
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, edit, message):
    config = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    edit(config)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "1", "--configfile", str(config_file), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_imagenet_preset_schedules_table3(tmp_path):
    """presets/imagenet.yaml (Table 3): 10 seeds x 3 defenses, each with its clean control, on
    poisons crafted once per seed; only the data folder needs editing."""
    import shutil

    shutil.copy(REPO / "presets" / "imagenet.yaml", tmp_path / "imagenet.yaml")
    result = snakemake("-n", "--configfile", str(tmp_path / "imagenet.yaml"), cwd=tmp_path)
    counts = job_counts(result.stdout)
    assert counts["train_victim"] == 2 * 3 * 10
    assert counts["train_crafting_model"] == 10 and counts["craft_poison"] == 2 * 10
    assert counts["render_tables"] == 1


def test_transfer_and_from_scratch_settings_through_the_dag(tmp_path):
    """The same feature-collision attack in both of the benchmark's settings: on a transfer recipe it
    crafts against the shared pretrained extractor and the victim starts from it; on a plain recipe
    (from scratch) it crafts against a crafting model trained on the whole training set and the
    victim trains from scratch. Two transfer recipes that pretrain alike share one extractor."""
    config = yaml.safe_load((REPO / "presets" / "quick.yaml").read_text())
    config["attacks"]["fc_scratch"] = {**config["attacks"]["fc"], "recipe": "targeted"}
    config["experiments"] = {"table4": {"attacks": ["fc", "fc_scratch", "htbd"], "defenses": ["none"]}}
    config_file = tmp_path / "settings.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "-p", "--configfile", str(config_file), cwd=tmp_path)
    counts = job_counts(result.stdout)
    assert counts["pretrain_extractor"] == 1 and counts["train_crafting_model"] == 3
    crafts = _shell_commands(result.stdout, "craft_poison")
    assert sum("--attack fc " in c and "--crafting-model results/extractors/pretrain/share0.5.pt" in c
               for c in crafts) == 3
    assert sum("--attack fc_scratch " in c and "--crafting-model results/crafting_models/targeted/none/" in c
               for c in crafts) == 3
    victims = _shell_commands(result.stdout, "train_victim")
    assert all("--extractor results/extractors/pretrain/share0.5.pt" in c for c in victims if "--attack fc " in c)
    assert all("--attack htbd " not in c or "--extractor results/extractors/pretrain/share0.5.pt" in c for c in victims)
    assert all("--extractor" not in c for c in victims if "--attack fc_scratch " in c)
