"""`make gpu-check` at its tiny size (CI runs it on the CPU so it cannot rot) and `make estimate`."""

import json
import os
import subprocess
import sys

import pytest

from augdefense import config as grid
from augdefense import estimate
from conftest import REPO, snakemake

# Stand-ins that fail on import: the GPU node has neither package.
ABSENT = "raise ImportError('{name} is not on a bare GPU node')\n"


def test_gpucheck_runs_without_snakemake_or_opacus_and_names_every_figure(tmp_path):
    fake = tmp_path / "absent"
    for name in ("snakemake", "opacus"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(ABSENT.format(name=name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO / "src")])}
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, "-m", "augdefense.gpucheck", str(out), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpucheck.json").read_text())
    assert all(step["ok"] for step in result["steps"].values()), result["steps"]
    tests = result["gpu_tests"]
    assert tests["tests"] >= 5 and tests["failures"] == 0 and tests["skipped"] == 0  # run on the CPU
    assert {r["defense"] for r in result["throughput"]} == {"none", "mixup", "cutmix", "maxup_cutout", "dpsgd_batch"}
    assert all(r["images_per_s"] > 0 for r in result["throughput"])
    assert [c["processes"] for c in result["concurrency"]] == [1, 2]
    assert result["crafting"]["seconds_per_iteration"] >= 0 and result["pipeline"]["device"] == "cpu"
    assert set(result["costs"]["training_seconds_per_image"]) == {r["defense"] for r in result["throughput"]}
    assert result["data_path"]["rows"][0]["ms_per_image"] > 0
    summary = (out / "gpucheck.md").read_text()
    for figure in (
        "Tests marked gpu",
        "| none | off |",
        "| maxup_cutout | off |",
        "aggregate images/s",
        "Witches' Brew",
        "One victim, one epoch, through jobs.train.train_victim",
        "Streamed data path (16 generated 500 x 375 JPEGs",
    ):
        assert figure in summary, figure


@pytest.mark.workflow
@pytest.mark.parametrize("preset", ["config.yaml", "presets/quick.yaml"])
def test_estimate_counts_the_jobs_a_dry_run_schedules(preset, tmp_path, paper_dry_run):
    config = grid.load(REPO / preset)
    counts = {rule: len(paths) for rule, paths in grid.compute_jobs(config).items()}
    if preset == "config.yaml":
        out = paper_dry_run
    else:
        out = snakemake("-n", "--configfile", str(REPO / preset), cwd=tmp_path).stdout
    table = out.split("Job stats:", 1)[1]
    scheduled = {
        line.split()[0]: int(line.split()[1])
        for line in table.splitlines()[3:]
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    for rule, n in counts.items():
        assert scheduled.get(rule, 0) == n, rule


def test_estimate_prices_the_paper_grid_and_the_demo():
    text = estimate.report(str(REPO / "config.yaml"), None)
    assert "| train_victim | 2900 |" in text and "GPU-hours" in text and "Geiping et al.'s 9 min" in text
    demo = estimate.report(str(REPO / "presets" / "quick.yaml"), None)
    assert "CPU minutes" in demo and "| train_victim | 84 |" in demo


def test_a_tiny_gpucheck_cannot_price_a_real_grid(tmp_path):
    from augdefense.errors import ConfigError

    (tmp_path / "g.json").write_text(json.dumps({"tiny": True}))
    with pytest.raises(ConfigError, match="--tiny"):
        estimate.load_costs(tmp_path / "g.json", cpu=False)
