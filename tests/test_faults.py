"""Fault injection: kills, corrupted and planted artifacts, bad values, checksum mismatches."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from augdefense import data
from augdefense.errors import DataError
from augdefense.io import sha256, write_json
from augdefense.jobs.craft import craft_poison
from augdefense.runner import JobSpec
from conftest import job_process

RECIPE = {"epochs": 8, "milestones": [4, 6], "batch_size": 64, "crop_pad": 1, "flip": False}
MODEL = {"arch": "convnet", "width": 16}
RUNTIME = {"device": "cpu", "amp": False, "checkpoint_every": 1}
DEFENSE = {"type": "maxup", "m": 2, "start_epoch": 1, "inner": {"type": "cutmix", "p": 0.5}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data.prepare(spec={"source": "digits", "image_size": 16}, out=root / "data.pt")
    craft_poison(
        data=root / "data.pt",
        attack_name="p",
        attack={"type": "patch", "recipe": "r", "patch_size": 4, "fraction": 1.0},
        seed=0,
        out=root / "poison.pt",
    )
    return root


def train(files, out, checkpoint, poison=None, defense=DEFENSE):
    """A train_victim job in its own process."""
    job = JobSpec(
        rule="train_victim",
        inputs={"data": str(files / "data.pt"), "poison": str(poison or files / "poison.pt")},
        outputs={"out": str(out)},
        params={
            "attack": "p",
            "defense_name": "d",
            "defense": defense,
            "recipe": RECIPE,
            "model": MODEL,
            "runtime": RUNTIME,
            "seed": 3,
            "checkpoint": str(checkpoint),
        },
    )
    return job_process("augdefense.jobs.train:train_victim", job)


def test_killed_training_resumes_to_identical_metrics(files, tmp_path):
    reference = train(files, tmp_path / "ref.json", tmp_path / "ref.ckpt")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    assert not (tmp_path / "ref.ckpt").exists()  # cleared once the metrics are written

    out, ckpt = tmp_path / "run.json", tmp_path / "run.ckpt"
    victim = train(files, out, ckpt)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ckpt.exists(), "no checkpoint was written"
    time.sleep(0.2)  # into the next epoch
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not out.exists()  # a killed job leaves no finished-looking output

    resumed = train(files, out, ckpt)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    a, b = json.loads((tmp_path / "ref.json").read_text()), json.loads(out.read_text())
    for record in (a, b):
        record.pop("train_seconds")
    assert a == b


def test_checkpoint_of_another_run_is_ignored(files, tmp_path):
    ckpt = tmp_path / "stale.ckpt"
    torch.save({"fingerprint": "something else", "epoch": 3, "model": {}}, ckpt)
    proc = train(files, tmp_path / "o.json", ckpt)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "belongs to another run" in err


def test_same_seed_gives_byte_identical_poison(files, tmp_path):
    spec = {"type": "patch", "recipe": "r", "patch_size": 4, "fraction": 0.1}
    for name in ("a.pt", "b.pt"):
        job = JobSpec(
            rule="craft_poison",
            inputs={"data": str(files / "data.pt")},
            outputs={"out": str(tmp_path / name)},
            params={"attack_name": "p", "attack": spec, "seed": 7},
        )
        proc = job_process("augdefense.jobs.craft:craft_poison", job)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert sha256(tmp_path / "a.pt") == sha256(tmp_path / "b.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle", "wrong_shape"])
def test_bad_poison_file_is_named(files, tmp_path, damage):
    poison = tmp_path / "poison.pt"
    blob = (files / "poison.pt").read_bytes()
    if damage == "truncate":
        poison.write_bytes(blob[: len(blob) // 3])
    elif damage == "garbage":
        poison.write_bytes(b"\x00" * 100)
    elif damage == "pickle":
        poison.write_bytes(pickle.dumps({"train_indices": os.system}))
    else:
        obj = torch.load(files / "poison.pt", weights_only=True)
        obj["train_images"] = obj["train_images"][:, :, :8, :8]
        torch.save(obj, poison)
    proc = train(files, tmp_path / "o.json", tmp_path / "o.ckpt", poison=poison)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert str(poison) in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_bad_defense_value_fails_before_training(files, tmp_path):
    proc = train(files, tmp_path / "o.json", tmp_path / "o.ckpt", defense={"type": "mixup", "k": 0})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "defenses.d.k: 0 is invalid" in err
    assert "epoch" not in err


def test_nan_metrics_are_never_written(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"clean_acc": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_corrupted_cifar_archive_is_named(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"half a download")
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: md5 [0-9a-f]{32} does not match"):
        data.build({"source": "cifar10", "root": str(root)})


def test_cifar_batches_become_uint8_tensors(tmp_path, monkeypatch):
    """The conversion path on a small fake set of CIFAR-10 batch files (the real ones need a download)."""
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / CIFAR10.meta["filename"]).write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # fake batches, fake md5s
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kw: True)
    ds = data.build({"source": "cifar10", "root": str(tmp_path / "cifar")})
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.classes[9] == "c9"
    first = np.frombuffer(pickle.loads((folder / "data_batch_1").read_bytes())["data"][0].tobytes(), np.uint8)
    assert torch.equal(ds.train_images[0], torch.from_numpy(first.reshape(3, 32, 32).copy()))


def test_workflow_resumes_a_killed_job(tmp_path):
    """Kill a running `snakemake` (and its job) with SIGKILL, rerun it: the job resumes from its checkpoint."""
    import yaml

    from conftest import REPO, snakemake

    config = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    config["data"]["image_size"] = 16
    config["model"]["width"] = 16
    config["recipes"]["backdoor"].update(epochs=10, milestones=[5])
    config["runtime"]["checkpoint_every"] = 1
    config["attacks"] = {"patch100": {**config["attacks"]["patch100"], "patch_size": 4}}
    config["experiments"] = {"table1": {"attacks": ["patch100"], "defenses": ["none"]}}
    config["seeds"] = 1
    config_file = tmp_path / "resume.yaml"
    config_file.write_text(yaml.safe_dump(config))

    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        os.path.join(bin_dir, "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--cores",
        "1",
        "--configfile",
        str(config_file),
    ]
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = tmp_path / "scratch" / "checkpoints" / "patch100" / "none" / "0.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), "the job wrote no checkpoint"
    os.killpg(run.pid, signal.SIGKILL)  # snakemake and the job it started
    run.wait(timeout=30)
    assert not (tmp_path / "results" / "runs" / "patch100" / "none" / "0.json").exists()

    snakemake("--unlock", "--configfile", str(config_file), cwd=tmp_path)
    snakemake("--cores", "1", "--rerun-incomplete", "--configfile", str(config_file), cwd=tmp_path)
    log = (tmp_path / "logs" / "train_victim" / "patch100" / "none" / "0.log").read_text()
    assert "resuming from" in log
    record = json.loads((tmp_path / "results" / "runs" / "patch100" / "none" / "0.json").read_text())
    assert 0 <= record["poison_success"] <= 1
    assert not ckpt.exists()
