"""The Snakemake workflow: lint, the paper-scale grid, an end-to-end tiny run, partial reruns."""

import json
import os
import re
import shutil
import subprocess
import sys

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


def test_paper_config_schedules_one_victim_per_cell_and_seed(paper_dry_run):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    counts = job_counts(paper_dry_run)
    assert counts["render_claims"] == 1  # results/claims.md, every claim of config.yaml
    assert config["seeds"] == 20 and config["data"]["source"] == "cifar10"
    assert counts["train_victim"] == len(grid.cells(config)) * 20
    runs = set(scheduled_outputs(paper_dry_run, "train_victim"))
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


def scheduled_jobs(output: str, rule: str) -> list[dict[str, str]]:
    """Every job of ``rule`` in a dry run's listing: its 'input', 'output' and 'wildcards' lines."""
    jobs, current = [], None
    for line in output.splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            current = line.split()[1].rstrip(":")
            if current == rule:
                jobs.append({})
        elif current == rule and ":" in line and line.startswith("    "):
            key, value = line.strip().split(":", 1)
            jobs[-1][key] = value.strip()
    return jobs


def sidecars(workdir, rule: str) -> list[dict]:
    return [
        r for r in (json.loads(p.read_text()) for p in (workdir / "results").rglob("*.prov.json")) if r["rule"] == rule
    ]


def test_adaptive_poisons_are_crafted_on_a_model_trained_under_the_defense(tiny_run):
    """From the tiny run's own job records: the adaptive attack's crafting model is another file,
    trained with the defense's own config entry, and its crafting job received that defense; the
    non-adaptive one crafted on the defense-free model, once for every defense."""
    workdir, _ = tiny_run
    models = {
        (r["wildcards"]["recipe"], r["wildcards"]["slot"], r["wildcards"]["seed"]): r["params"]
        for r in sidecars(workdir, "train_crafting_model")
    }
    assert sorted(models) == [("targeted", slot, seed) for slot in ("mixup", "none") for seed in ("0", "1")]
    assert all(p["defense"]["type"] == "mixup" and p["defense"]["k"] == 2 for k, p in models.items() if k[1] == "mixup")
    assert all(p["defense"]["type"] == "none" for k, p in models.items() if k[1] == "none")
    crafts = {
        (r["wildcards"]["attack"], r["wildcards"]["slot"], r["wildcards"]["seed"]): r
        for r in sidecars(workdir, "craft_poison")
    }
    for seed in ("0", "1"):
        adaptive, plain = crafts["wb_adapt", "mixup", seed], crafts["wb", "none", seed]
        assert adaptive["job"]["inputs"]["crafting_model"] == f"results/crafting_models/targeted/mixup/{seed}.pt"
        assert adaptive["params"]["defense"]["type"] == "mixup"
        assert plain["job"]["inputs"]["crafting_model"] == f"results/crafting_models/targeted/none/{seed}.pt"
        assert plain["params"]["defense_name"] == "none"
    assert all(
        r["job"]["inputs"]["crafting_model"] is None
        for (a, _, _), r in crafts.items()
        if a.startswith("patch") or a == "wb_control"
    )
    assert not [k for k in crafts if k[0] == "wb" and k[1] != "none"]  # crafted once, whatever the defense


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
    assert [p.relative_to(workdir / "results" / "extractors").as_posix() for p in extractors] == [
        "pretrain/share0.5.pt"
    ]
    transfer = metrics[metrics.attack.isin(["fc", "cp", "htbd", "clbd"])]
    assert (transfer.n_poisons == 5).all() and transfer.clean_acc.between(0, 1).all()
    backdoors = transfer[transfer.attack.isin(["htbd", "clbd"])]
    # scored on one patched target per seed (the benchmark's poison_test.py), all images beside it
    assert (backdoors.n_eval == 1).all() and (backdoors.n_eval_all_images > 1).all()
    assert backdoors.poison_success.isin([0.0, 1.0]).all() and backdoors.poison_success_all_images.between(0, 1).all()
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
    # each job records where its time went (make bench sums these)
    sidecar = json.loads((workdir / "results" / "runs" / "patch10" / "none" / "0.json.prov.json").read_text())
    assert sidecar["timings"]["train"] > 0 and sidecar["timings"]["imports"] > 0 and "startup" in sidecar["timings"]
    claims = pd.read_csv(workdir / "results" / "claims.csv")
    assert len(claims) == 3 and set(claims.verdict) <= {"holds", "contradicted", "inconclusive"}
    assert (
        claims.n_seeds.eq(2).all() and "| mixup does not lower it |" in (workdir / "results" / "claims.md").read_text()
    )


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
    # The mixup victims, the adaptive attack's mixup crafting models and poisons, what aggregates
    # them (the resolved-config record reads the whole config), and the illustrations, whose mixup
    # panel draws this defense's entry.
    tables = len(config["experiments"])
    assert counts == {
        "train_victim": 10,
        "train_crafting_model": 2,
        "craft_poison": 2,
        "collect_metrics": 1,
        "render_tables": tables,
        "render_figures": tables,
        "compare_papers": 1,
        "render_claims": 1,
        "render_illustrations": 1,
        "resolved_config": 1,
        "provenance_manifest": 1,
        "all": 1,
    }
    runs = scheduled_outputs(result.stdout, "train_victim")
    attacks = ("patch10", "patch100", "wb", "wb_adapt", "wb_control")
    assert sorted(runs) == sorted(f"results/runs/{a}/mixup/{s}.json" for a in attacks for s in (0, 1))
    assert sorted(scheduled_outputs(result.stdout, "craft_poison")) == [
        f"results/poisons/wb_adapt/mixup/{s}.pt" for s in (0, 1)
    ]


def _set_typo(c):
    c["defenses"]["cutmix"]["propability"] = 0.5


def _add_undefined(c):
    c["experiments"]["table1"]["defenses"].append("mixup8")


def _wrong_type(c):
    c["defenses"]["mixup"]["k"] = "four"


def _zero_width(c):
    c["defenses"]["mixup"]["k"] = 0


def _probability_above_one(c):
    c["defenses"]["cutmix"]["p"] = 1.5


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_typo, "'propability' was unexpected"),
        (_add_undefined, "experiments.table1.defenses: 'mixup8' is not defined"),
        (_wrong_type, "'four' is not of type 'integer'"),
        (_zero_width, "0 is less than the minimum of 1"),
        (_zero_width, "On instance['defenses']['mixup']['k']"),
        (_probability_above_one, "1.5 is greater than the maximum of 1"),
        (_probability_above_one, "On instance['defenses']['cutmix']['p']"),
    ],
)
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
    poisons crafted once per seed. As shipped, its data folder does not exist: the dry run stops
    naming it. Pointed at an ImageFolder tree (a tiny one here, so the budget is raised to keep one
    poison), it schedules the table."""
    from PIL import Image

    shutil.copy(REPO / "presets" / "imagenet.yaml", tmp_path / "imagenet.yaml")
    refused = snakemake("-n", "--configfile", str(tmp_path / "imagenet.yaml"), cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "/path/to/imagenet/train: missing" in refused.stdout + refused.stderr
    for split, n in (("train", 12), ("test", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "tree" / split / c / f"{i}.png")
    config = yaml.safe_load((tmp_path / "imagenet.yaml").read_text())
    config["data"]["path"] = str(tmp_path / "tree")
    for name in ("wb", "wb_control"):
        config["attacks"][name]["budget"] = 0.05
    (tmp_path / "tree.yaml").write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake("-n", "--configfile", str(tmp_path / "tree.yaml"), cwd=tmp_path).stdout)
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
    result = snakemake("-n", "--configfile", str(config_file), cwd=tmp_path)
    counts = job_counts(result.stdout)
    assert counts["pretrain_extractor"] == 1 and counts["train_crafting_model"] == 3
    extractor = "results/extractors/pretrain/share0.5.pt"
    crafts = {j["wildcards"]: j["input"] for j in scheduled_jobs(result.stdout, "craft_poison")}
    assert sum(w.startswith("attack=fc,") and extractor in i for w, i in crafts.items()) == 3
    assert (
        sum(
            w.startswith("attack=fc_scratch,") and "results/crafting_models/targeted/none/" in i
            for w, i in crafts.items()
        )
        == 3
    )
    victims = {j["wildcards"]: j["input"] for j in scheduled_jobs(result.stdout, "train_victim")}
    assert all(extractor in i for w, i in victims.items() if w.startswith(("attack=fc,", "attack=htbd,")))
    assert all("extractors" not in i for w, i in victims.items() if w.startswith("attack=fc_scratch,"))


def test_a_corrupted_input_is_refused_naming_it(tiny_run, tmp_path):
    """Seven bytes changed inside the prepared data (torch.load would still read it: it does not check
    the archive's CRCs) and the file's time kept: a job that reads it stops, naming the file, because
    its sha256 no longer matches what prepare_data recorded."""
    workdir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    prepared = copy / "resources" / "prepared" / "digits.pt"
    stat = prepared.stat()
    blob = bytearray(prepared.read_bytes())
    middle = len(blob) * 3 // 5
    blob[middle : middle + 7] = bytes(255 - b for b in blob[middle : middle + 7])
    prepared.write_bytes(bytes(blob))
    os.utime(prepared, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = snakemake(
        "-f", "results/runs/patch10/none/0.json", "--configfile", str(copy / "tiny.yaml"), cwd=copy, check=False
    )
    log = (copy / "logs" / "train_victim" / "patch10" / "none" / "0.log").read_text()
    assert result.returncode != 0
    assert "resources/prepared/digits.pt: its sha256 differs from what the job that wrote it recorded" in log
    assert "epoch" not in log  # refused before training


def test_an_impossible_budget_is_refused_at_dry_run(tmp_path):
    config = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    config["attacks"]["wb"]["budget"] = 0.9
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "attacks.wb.budget: 0.9 x 1437 = 1293 poisons of one class, but the smallest class" in (
        result.stdout + result.stderr
    )
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_the_venv_snakemake_runs_jobs_with_its_own_python(tmp_path):
    """`.venv/bin/snakemake` with the venv not on PATH (as a new user types it): every job runs under
    the interpreter Snakemake runs under, not the system's `python`."""
    shutil.copy(REPO / "presets" / "tiny.yaml", tmp_path / "tiny.yaml")
    bin_dir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "PATH": os.pathsep.join(
            p for p in os.environ["PATH"].split(os.pathsep) if os.path.realpath(p) != os.path.realpath(bin_dir)
        ),
    }
    result = subprocess.run(
        [
            os.path.join(bin_dir, "snakemake"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "--cores",
            "1",
            "resources/prepared/digits.pt",
            "--configfile",
            str(tmp_path / "tiny.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "resources" / "prepared" / "digits.pt.prov.json").read_text())
    assert record["environment"]["executable"] == sys.executable
