"""Provenance sidecars, the output manifest, the HTML report, the paper comparison and the archive."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from augdefense import provenance, tables
from augdefense.io import sha256
from conftest import REPO, snakemake

pytestmark = pytest.mark.workflow


def test_sidecars_hash_their_inputs_and_outputs(tiny_run):
    workdir, _ = tiny_run
    sidecars = sorted((workdir / "results").rglob("*.prov.json"))
    rules = {json.loads(p.read_text())["rule"] for p in sidecars}
    assert {
        "craft_poison",
        "train_victim",
        "train_feature_model",
        "sanitize",
        "collect_metrics",
        "render_tables",
        "render_figures",
        "render_illustrations",
        "compare_papers",
    } <= rules
    record = json.loads((workdir / "results/runs/patch10/ss/1.json.prov.json").read_text())
    assert record["wildcards"] == {"attack": "patch10", "defense": "ss", "seed": "1"} and record["seed"] == 1
    data = {"resources/prepared/digits.pt", "results/poisons/patch10/none/1.pt", "results/sanitize/patch10/ss/1.json"}
    code = {p for p in record["inputs"] if p.startswith(str(REPO / "src"))}
    assert set(record["inputs"]) == data | code
    assert {Path(p).name for p in code} >= {"train.py", "training.py", "mixing.py", "config.py", "privacy.py"}
    for path, digest in {**record["inputs"], **record["outputs"]}.items():
        assert sha256(workdir / path) == digest
    # The params hold the complete config entry, defaults filled in by the schema.
    assert record["params"]["defense"] == {
        "type": "spectral_signatures",
        "multiplier": 1.5,
        "laplace": 0,
        "laplace_clip": False,
    }
    assert record["job"]["inputs"]["sanitized"] == "results/sanitize/patch10/ss/1.json"
    assert record["function"] == "augdefense.jobs.train:train_victim"
    assert record["environment"]["torch"] and record["environment"]["devices_used"] == ["cpu"]
    assert len(record["code"]["git_commit"]) == 40 and record["started"] <= record["finished"]


def test_manifest_check_names_an_edited_output(tiny_run, tmp_path):
    workdir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    manifest = copy / "results/provenance/manifest.tsv"
    listed = manifest.read_text()
    for name in (
        "results/metrics.csv",
        "results/tables/table1.md",
        "results/figures/illustrations.png",
        "results/runs/patch10/none/0.json.prov.json",
        "resources/prepared/digits.pt",
    ):
        assert f"{name}\t" in listed
    assert provenance.check_manifest(manifest, copy) == []
    with open(copy / "results/tables/table1.md", "a") as fh:
        fh.write("edited\n")
    (copy / "results/runs/patch10/none/0.json").unlink()
    check = subprocess.run(
        [sys.executable, "-m", "augdefense", "check-manifest"], cwd=copy, capture_output=True, text=True
    )
    assert check.returncode == 1
    assert "results/tables/table1.md: sha256 differs" in check.stderr
    assert "results/runs/patch10/none/0.json: missing" in check.stderr
    assert "metrics.csv" not in check.stderr


def test_report_contains_every_table_and_figure(tiny_run, tmp_path):
    workdir, _ = tiny_run
    report = tmp_path / "report.html"
    snakemake("--configfile", str(workdir / "tiny.yaml"), "--report", str(report), cwd=workdir)
    html = report.read_text(errors="replace")
    for name in ("table1.csv", "table1.png", "illustrations.png", "paper_comparison.csv", "metrics.csv"):
        assert name in html, name


def test_comparison_flags_values_outside_our_interval(tmp_path):
    rows = [
        {
            "attack": "patch10",
            "defense": "none",
            "seed": s,
            "clean_acc": 0.943 + 0.001 * (s - 1),
            "n_clean": 10000,
            "poison_success": 0.10 + 0.005 * (s - 1),
            "n_eval": 1000,
        }
        for s in range(3)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    experiments = {"table1": {"attacks": ["patch10"], "defenses": ["none"]}}
    frame = tables.compare_papers(
        metrics=tmp_path / "metrics.csv",
        experiments=experiments,
        scale="test",
        csv=tmp_path / "c.csv",
        md=tmp_path / "c.md",
    )
    by_metric = frame.set_index("metric")
    assert bool(by_metric.loc["clean_acc", "paper_inside_ci"]) is True  # 94.3 vs ours 94.3
    assert bool(by_metric.loc["poison_success", "paper_inside_ci"]) is False  # 45.6 vs ours 10.0
    assert by_metric.loc["poison_success", "ci_high"] < 0.12
    assert "| table1 | patch10 | none | poison_success | 45.6 | 10.0 |" in (tmp_path / "c.md").read_text()
    assert "**no**" in (tmp_path / "c.md").read_text()


def test_archive_bundles_what_a_reviewer_needs(tiny_run, tmp_path):
    workdir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    out = subprocess.run(
        [sys.executable, "-m", "augdefense", "archive", "--out", "results/archive-test.tar.gz"],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    with tarfile.open(copy / "results/archive-test.tar.gz") as tar:
        names = set(tar.getnames())
    for member in (
        "results/provenance/manifest.tsv",
        "results/provenance/config.json",
        "results/metrics.csv",
        "environment/pip-freeze.txt",
        "environment/source.json",
        "logs/collect_metrics.log",
        "resources/prepared/digits.pt",  # small prepared data is shipped
        "resources/prepared/digits.pt.prov.json",
        "source/src/augdefense/jobs/train.py",
        "source/Snakefile",
    ):
        assert member in names, member
    assert any(n.startswith(".snakemake/metadata/") for n in names)
    assert not any(n.endswith(".tar.gz") for n in names)
    # An edited output is refused rather than archived.
    (copy / "results/metrics.csv").write_text("tampered\n")
    refused = subprocess.run([sys.executable, "-m", "augdefense", "archive"], cwd=copy, capture_output=True, text=True)
    assert refused.returncode == 2 and "results/metrics.csv" in refused.stderr


def test_an_archive_unpacked_in_an_empty_folder_checks_clean_rebuilds_and_replays(tiny_run, tmp_path):
    """As a reviewer would: unpack the archive in an empty folder and, with only what it holds (its
    source/ on the path, not this checkout's), check the manifest, rebuild the prepared data it left
    out, check again, and replay a victim's training."""
    workdir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    made = subprocess.run(
        [sys.executable, "-m", "augdefense", "archive", "--out", "results/a.tar.gz", "--ship-data-up-to", "0"],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert "not archived" in made.stdout and "resources/prepared/digits.pt" in made.stdout
    reviewer = tmp_path / "reviewer"
    reviewer.mkdir()
    subprocess.run(["tar", "-xzf", str(copy / "results/a.tar.gz"), "-C", str(reviewer)], check=True)
    assert not (reviewer / "resources/prepared/digits.pt").exists()
    assert (reviewer / "resources/prepared/digits.pt.prov.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(reviewer / "source" / "src")}

    def augdefense(*args):
        return subprocess.run(
            [sys.executable, "-m", "augdefense", *args], cwd=reviewer, env=env, capture_output=True, text=True
        )

    check = augdefense("check-manifest", "results/provenance/manifest.tsv")
    assert check.returncode == 0, check.stderr
    assert "resources/prepared/digits.pt (" in check.stdout and "not archived: rebuild with" in check.stdout
    rebuilt = augdefense("rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "resources/prepared/digits.pt: rebuilt" in rebuilt.stdout
    check = augdefense("check-manifest")
    assert check.returncode == 0 and "left out" not in check.stdout, check.stdout + check.stderr
    sidecar = "results/runs/patch10/none/0.json.prov.json"
    replayed = augdefense("replay", sidecar, "--out-dir", "again")
    assert replayed.returncode == 0, replayed.stderr
    # The same record; only the training's wall time differs.
    assert "keys that differ: train_seconds" in replayed.stdout, replayed.stdout
    record = json.loads((reviewer / "again" / sidecar).read_text())
    assert record["code"]["source"] == str(reviewer / "source")  # the archive's code ran
    # A rebuilt file that is not the recorded one is named, not put in place.
    (reviewer / "resources/prepared/digits.pt").write_bytes(b"other")
    check = augdefense("check-manifest")
    assert check.returncode == 1 and "resources/prepared/digits.pt: sha256 differs" in check.stderr


def test_packed_evidence_is_the_runs_files_with_where_they_came_from(tiny_run, tmp_path):
    workdir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    packed = subprocess.run(
        [sys.executable, "-m", "augdefense", "pack-evidence", str(copy), str(tmp_path / "ev"), "--preset", "tiny"],
        capture_output=True,
        text=True,
    )
    assert packed.returncode == 0, packed.stderr
    for name in ("claims.md", "claims.csv", "paper_comparison.md", "metrics.csv", "config.json", "tables/table1.md"):
        source = copy / "results" / ("provenance" if name == "config.json" else "") / name
        assert (tmp_path / "ev" / name).read_bytes() == source.read_bytes(), name
    record = json.loads((tmp_path / "ev" / "run.json").read_text())
    sidecar = json.loads((copy / "results/runs/patch10/none/0.json.prov.json").read_text())
    assert record["commit"] == [sidecar["code"]["git_commit"]]
    assert record["cpu_isa"] == [sidecar["environment"]["kernels"]["aten_capability"]]
    variables = sidecar["environment"]["kernels"]["variables"]
    assert record["kernel_variables"] == [{k: v for k, v in variables.items() if v is not None}]
    assert record["seeds"] == pd.read_csv(copy / "results/metrics.csv").seed.nunique()
    assert record["victim_runs"] == len(pd.read_csv(copy / "results/metrics.csv"))
    # An output changed after the run is not packed.
    with open(copy / "results/claims.md", "a") as fh:
        fh.write("edited\n")
    refused = subprocess.run(
        [sys.executable, "-m", "augdefense", "pack-evidence", str(copy), str(tmp_path / "ev2"), "--preset", "tiny"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "results/claims.md" in refused.stderr
    assert not (tmp_path / "ev2" / "run.json").exists()
