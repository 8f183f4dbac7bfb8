"""The evidence presets: presets/evidence.yaml declares a claim for every headline result and
schedules its cells; presets/cifar10-small.yaml runs offline on the JPEG copy of CIFAR-10 (the test
skips where the copy is absent: a user's clone has no ../shared)."""

import re
import tarfile

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, snakemake

JPEG_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# The papers' results the evidence run gives a verdict on, by the experiment that holds the claim.
HEADLINE_EXPERIMENTS = ("table1", "table2", "table5", "figure4b", "figure5", "table4", "table6")


def job_counts(dry_run: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", dry_run, re.M)}


def claims(config: dict) -> dict[str, list[dict]]:
    return {name: exp.get("claims", []) for name, exp in config["experiments"].items()}


@pytest.mark.parametrize("preset", ["evidence.yaml", "cifar10-small.yaml"])
def test_an_evidence_preset_declares_a_claim_for_every_headline_result(preset):
    config = yaml.safe_load((REPO / "presets" / preset).read_text())
    declared = claims(config)
    assert [name for name in HEADLINE_EXPERIMENTS if not declared.get(name)] == []
    # Table 1's three, the demo's three of Table 2, Table 6's two: the demo's eight claims.
    assert len(declared["table1"]) == 3 and len(declared["table2"]) == 3 and len(declared["table6"]) == 2
    # Table 5's claim sets 4-way mixup against each of the three filters.
    assert sorted(declared["table5"][0]["baseline"]) == ["ac", "dknn", "ss"]


def test_the_cifar10_preset_runs_the_evidence_cells():
    evidence = yaml.safe_load((REPO / "presets" / "evidence.yaml").read_text())
    cifar = yaml.safe_load((REPO / "presets" / "cifar10-small.yaml").read_text())
    assert claims(cifar) == claims(evidence)
    assert {k: v["attacks"] for k, v in cifar["experiments"].items()} == {
        k: v["attacks"] for k, v in evidence["experiments"].items()
    }


def test_the_evidence_preset_schedules_its_cells(tmp_path):
    config = yaml.safe_load((REPO / "presets" / "evidence.yaml").read_text())
    counts = job_counts(snakemake("-n", "--configfile", str(REPO / "presets" / "evidence.yaml"), cwd=tmp_path).stdout)
    assert config["seeds"] >= 12
    # Per seed: Table 1's 6 and the patch control; Table 2's 5 poisoned and 4 controls; Table 5's 3
    # filters and their controls; Figure 4b's adaptive cell; Figure 5's 3 and their controls; Table
    # 4's 4 and 2 controls; Table 6's 4.
    assert counts["train_victim"] == config["seeds"] * (7 + 9 + 6 + 1 + 6 + 6 + 4)
    assert counts["sanitize"] == config["seeds"] * 6


@pytest.mark.skipif(not JPEG_TARBALL.exists(), reason="the JPEG copy of CIFAR-10 (../shared/data) is not here")
def test_the_cifar10_preset_runs_offline_on_the_jpeg_copy(tmp_path):
    """The preset with presets/overlays/cifar10-jpeg.yaml on top reads the JPEG copy as an imagefolder tree:
    the first images of each class, their pixels as the files hold them (no resize), and the dry run
    schedules the preset's cells."""
    from PIL import Image

    from augdefense import data

    config = yaml.safe_load((REPO / "presets" / "cifar10-small.yaml").read_text())
    train_n, test_n = config["data"]["train_per_class"], config["data"]["test_per_class"]

    def wanted(member: tarfile.TarInfo) -> bool:
        parts = member.name.split("/")  # cifar10-jpeg/<split>/<class>/NNNN.jpg
        return len(parts) == 4 and int(parts[3][:4]) < (train_n if parts[1] == "train" else test_n)

    with tarfile.open(JPEG_TARBALL) as tar:
        tar.extractall(tmp_path / "resources", members=[m for m in tar if m.isfile() and wanted(m)], filter="data")
    counts = job_counts(
        snakemake(
            "-n",
            "--configfile",
            str(REPO / "presets" / "cifar10-small.yaml"),
            str(REPO / "presets" / "overlays" / "cifar10-jpeg.yaml"),
            cwd=tmp_path,
        ).stdout
    )
    assert counts["train_victim"] == config["seeds"] * 39 and counts["prepare_data"] == 1

    overlay = yaml.safe_load((REPO / "presets" / "overlays" / "cifar10-jpeg.yaml").read_text())["data"]
    spec = {**config["data"], **overlay, "path": str(tmp_path / overlay["path"])}
    dataset = data.build(spec)
    assert torch.bincount(dataset.train_labels).tolist() == [train_n] * 10
    assert torch.bincount(dataset.test_labels).tolist() == [test_n] * 10
    assert dataset.classes[0] == "airplane" and dataset.image_shape == (3, 32, 32)
    with Image.open(tmp_path / "resources" / "cifar10-jpeg" / "train" / "airplane" / "0000.jpg") as img:
        first = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(dataset.train_images[0], first)
