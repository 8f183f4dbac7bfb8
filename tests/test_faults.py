"""Fault injection: kills, corrupted and planted artifacts, bad values, checksum mismatches."""

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from augdefense import data
from augdefense.errors import DataError
from augdefense.io import sha256, write_json
from augdefense.jobs.craft import craft_poison
from augdefense.runner import JobSpec
from conftest import job_process, kill_after_checkpoint

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


def train(files, out, checkpoint, poison=None, defense=DEFENSE, seed=3):
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
            "seed": seed,
            "checkpoint": str(checkpoint),
        },
    )
    return job_process("augdefense.jobs.train:train_victim", job)


def finished(proc) -> str:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return err


def without_timing(path) -> dict:
    record = json.loads(path.read_text())
    record.pop("train_seconds")
    return record


@pytest.fixture(scope="module")
def killed_seed3(files, tmp_path_factory):
    """A seed-3 training killed with SIGKILL once it has written a checkpoint: the run's output
    (absent), its checkpoint, and a copy of that real, half-done checkpoint."""
    root = tmp_path_factory.mktemp("killed")
    out, ckpt = root / "run.json", root / "run.ckpt"
    kill_after_checkpoint(train(files, out, ckpt), ckpt)
    shutil.copy(ckpt, root / "seed3.ckpt")
    return out, ckpt, root / "seed3.ckpt"


def test_killed_training_resumes_to_identical_metrics(files, killed_seed3, tmp_path):
    out, ckpt, _ = killed_seed3
    assert not out.exists()  # a killed job leaves no finished-looking output
    finished(train(files, tmp_path / "ref.json", tmp_path / "ref.ckpt"))
    assert not (tmp_path / "ref.ckpt").exists()  # cleared once the metrics are written
    assert "resuming from" in finished(train(files, out, ckpt))
    assert without_timing(tmp_path / "ref.json") == without_timing(out)


def test_checkpoint_of_another_run_is_ignored(files, killed_seed3, tmp_path):
    """The real half-done checkpoint of the seed-3 run, offered to a seed-4 run: ignored, and the
    seed-4 run ends exactly as one that never saw it."""
    _, _, seed3 = killed_seed3
    stale = tmp_path / "stale.ckpt"
    shutil.copy(seed3, stale)
    err = finished(train(files, tmp_path / "o.json", stale, seed=4))
    assert "belongs to another run" in err and "resuming from" not in err
    finished(train(files, tmp_path / "fresh.json", tmp_path / "fresh.ckpt", seed=4))
    assert without_timing(tmp_path / "o.json") == without_timing(tmp_path / "fresh.json")


def first_checkpoint_decision(proc) -> str:
    """Read a training job's log until it resumes or ignores its checkpoint, then stop it."""
    try:
        for line in proc.stderr:
            if "belongs to another run" in line or "resuming from" in line:
                return line
        return ""
    finally:
        proc.kill()
        proc.communicate(timeout=60)


@pytest.mark.parametrize("other", ["poison", "defense"])
def test_checkpoint_of_a_run_on_other_inputs_or_config_is_ignored(other, files, killed_seed3, tmp_path):
    """The seed-3 run's checkpoint, offered to a seed-3 run with another poison or another defense
    (a resumed run would mix two trainings): ignored."""
    _, _, seed3 = killed_seed3
    stale = tmp_path / "stale.ckpt"
    shutil.copy(seed3, stale)
    changed = {"defense": {"defense": {**DEFENSE, "m": 3}}, "poison": {"poison": tmp_path / "other.pt"}}[other]
    if other == "poison":
        attack = {"type": "patch", "recipe": "r", "patch_size": 3, "fraction": 1.0}
        craft_poison(data=files / "data.pt", attack_name="p", attack=attack, seed=0, out=tmp_path / "other.pt")
    decision = first_checkpoint_decision(train(files, tmp_path / "o.json", stale, **changed))
    assert "belongs to another run" in decision
    # The same run resumes from it: what makes it ignored above is the change.
    resumed = tmp_path / "same.ckpt"
    shutil.copy(seed3, resumed)
    assert "resuming from" in first_checkpoint_decision(train(files, tmp_path / "same.json", resumed))


def test_the_fingerprint_covers_every_input_config_entry_and_the_seed(tmp_path):
    """Each field of a training job that changes a number changes the fingerprint, as do the
    filter's record and the training subset; the defense's name and the checkpoint path do not."""
    from augdefense.jobs.train import TrainingJob, TrainingRun

    for name in ("data", "poison", "extractor", "other"):
        (tmp_path / name).write_bytes(name.encode())
    base = TrainingJob(
        data=str(tmp_path / "data"),
        poison=str(tmp_path / "poison"),
        extractor=str(tmp_path / "extractor"),
        model=MODEL,
        recipe=RECIPE,
        runtime=RUNTIME,
        defense=DEFENSE,
        seed=0,
    )
    other = str(tmp_path / "other")
    changes = {
        "data": other,
        "poison": other,
        "extractor": other,
        "model": {**MODEL, "width": 8},
        "recipe": {**RECIPE, "epochs": 9},
        "runtime": {**RUNTIME, "cpu_isa": "native"},
        "defense": {**DEFENSE, "m": 3},
        "seed": 1,
        "threads": 2,
    }
    unchanged = {"defense_name": "renamed", "checkpoint": str(tmp_path / "elsewhere.ckpt")}
    from dataclasses import fields, replace

    def fingerprint(job=base, **kwargs):
        return TrainingRun(job, None, None, None, None, None).fingerprint(**kwargs)  # uses the job alone

    assert set(changes) | set(unchanged) == {f.name for f in fields(TrainingJob)}
    reference = fingerprint()
    for field, value in changes.items():
        assert fingerprint(replace(base, **{field: value})) != reference, field
    for field, value in unchanged.items():
        assert fingerprint(replace(base, **{field: value})) == reference, field
    record = {"removed": [1, 2], "relabeled": []}
    assert fingerprint(sanitized=record) != reference
    assert fingerprint(sanitized=record) != fingerprint(sanitized={**record, "relabeled": [[3, 1]]})
    assert fingerprint(train_indices=torch.arange(5)) != reference


@pytest.fixture(scope="module")
def crafting_model(files, tmp_path_factory):
    from augdefense.jobs.train import TrainingJob, train_crafting_model

    path = tmp_path_factory.mktemp("crafting") / "model.pt"
    job = TrainingJob(
        data=files / "data.pt", model=MODEL, runtime=RUNTIME, seed=0, recipe={**RECIPE, "epochs": 1, "milestones": []}
    )
    train_crafting_model(job, out=path)
    return path


ATTACKS = {
    "patch": {"type": "patch", "patch_size": 4},
    "gradient_matching": {"type": "gradient_matching", "eps": 16, "budget": 0.01, "iterations": 3, "restarts": 2},
    "feature_collision": {"type": "feature_collision", "n_poisons": 5, "iterations": 5},
    "convex_polytope": {"type": "convex_polytope", "n_poisons": 5, "iterations": 5},
    "hidden_trigger": {"type": "hidden_trigger", "n_poisons": 5, "iterations": 5, "patch_size": 4},
    "clean_label_backdoor": {"type": "clean_label_backdoor", "n_poisons": 5, "steps": 3, "patch_size": 4},
}


def test_every_attack_type_is_in_the_byte_identity_test():
    from augdefense import attacks

    assert set(ATTACKS) == set(attacks.REGISTRY)


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_same_seed_gives_byte_identical_poison(kind, files, crafting_model, tmp_path):
    """Two crafting jobs (two processes) of one attack and seed write the same bytes."""
    spec = {**ATTACKS[kind], "recipe": "r"}
    model = None if kind == "patch" else str(crafting_model)
    for name in ("a.pt", "b.pt"):
        job = JobSpec(
            rule="craft_poison",
            inputs={"data": str(files / "data.pt"), "crafting_model": model},
            outputs={"out": str(tmp_path / name)},
            params={
                "attack_name": kind,
                "attack": spec,
                "seed": 7,
                "runtime": RUNTIME,
                "recipe": RECIPE if model else None,
            },
        )
        finished(job_process("augdefense.jobs.craft:craft_poison", job))
    assert sha256(tmp_path / "a.pt") == sha256(tmp_path / "b.pt")


def _has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


CALLING_ISA = {
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def test_the_calling_environments_kernel_isa_does_not_change_a_record(files, tmp_path, monkeypatch):
    """A victim's record from a job run (run_rule, its own process) under two calling environments
    that ask for AVX-512 and AVX2 kernels: identical with runtime.cpu_isa: avx2, which pins them.
    With native the caller's variables are honoured, so on a machine with AVX-512 the two records
    differ: the test can see the kernels change."""
    records = {}
    for setting in ("avx2", "native"):
        for calling, variables in CALLING_ISA.items():
            out = tmp_path / f"{setting}-{calling}.json"
            job = JobSpec(
                rule="train_victim",
                inputs={"data": str(files / "data.pt"), "poison": str(files / "poison.pt")},
                outputs={"out": str(out)},
                params={
                    "attack": "p",
                    "defense_name": "none",
                    "defense": {"type": "none"},
                    "recipe": {**RECIPE, "epochs": 2, "milestones": [1]},
                    "model": MODEL,
                    "runtime": {**RUNTIME, "cpu_isa": setting},
                    "seed": 0,
                    "checkpoint": None,
                },
            )
            for name, value in variables.items():
                monkeypatch.setenv(name, value)  # the job's process inherits them
            finished(job_process("augdefense.jobs.train:train_victim", job))
            records[setting, calling] = without_timing(out)
            kernels = json.loads(Path(f"{out}.prov.json").read_text())["environment"]["kernels"]
            if setting == "avx2" and kernels["machine"] == "x86_64":
                assert kernels["aten_capability"] == "AVX2" and kernels["variables"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert records["avx2", "avx512"] == records["avx2", "avx2"]
    if _has_avx512():
        assert records["native", "avx512"] != records["native", "avx2"]
        assert records["native", "avx2"] == records["avx2", "avx2"]  # the pin is what the variables ask


def test_the_avx2_pin_overrides_the_caller_and_native_keeps_the_callers_variables(monkeypatch):
    from augdefense import kernels

    monkeypatch.setattr(kernels, "pinnable", lambda: True)
    caller = {"ATEN_CPU_CAPABILITY": "avx512", "OPENBLAS_CORETYPE": "SkylakeX", "PATH": "/bin"}
    pinned = dict(caller)
    kernels.pin("avx2", pinned)
    assert pinned == {**caller, **kernels.PINS["avx2"], kernels.SETTING_ENV: "avx2"}
    kept = dict(caller)
    kernels.pin("native", kept)
    assert kept == {**caller, kernels.SETTING_ENV: "native"}
    kernels.pin("native", pinned)  # a process that inherited an avx2 pin and runs a native job
    assert pinned == {"PATH": "/bin", kernels.SETTING_ENV: "native"}
    monkeypatch.setattr(kernels, "pinnable", lambda: False)  # nothing to pin off x86-64
    elsewhere = {}
    kernels.pin("avx2", elsewhere)
    assert elsewhere == {kernels.SETTING_ENV: "avx2"}


TRAINING_STEPS = """
import resource, sys
import torch
from augdefense import kernels, models

if sys.argv[1] == "job":
    kernels.apply("native", 1)
torch.manual_seed(0)
model = models.build({"arch": "convnet", "width": 32}, in_channels=1, num_classes=10, image_size=16)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.rand(128, 1, 16, 16), torch.randint(0, 10, (128,))


def step():  # as training._train_step: every buffer the step makes is freed when it returns
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_a_jobs_process_reuses_the_memory_a_training_step_frees():
    """glibc's default thresholds returned the heap's top to the system after every step of a demo
    victim and faulted it in again at the next (docs/performance.md has the cost); a job's process
    (``kernels.apply``) keeps it."""

    def page_faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", TRAINING_STEPS, mode],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.split()[-1])

    plain = page_faults("plain")
    if plain < 60 * 256:  # under a MiB a step: this allocator keeps freed memory by itself
        pytest.skip(f"this C library's allocator keeps a step's memory without help ({plain} faults in 60 steps)")
    held = page_faults("job")
    assert held * 10 < plain, (held, plain)


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


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_cifar_batches_become_uint8_tensors(source, tmp_path, monkeypatch):
    """The conversion path on a small fake set of CIFAR-10 / CIFAR-100 batch files (the real ones
    need a download; CIFAR-100 pretrains the transfer setting's extractor)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    kind, label_key, classes = (CIFAR10, "labels", 10) if source == "cifar10" else (CIFAR100, "fine_labels", 100)
    folder = tmp_path / "cifar" / kind.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, _ in kind.train_list + kind.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), label_key: [0, 1, 2, classes - 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = {kind.meta["key"]: [f"c{i}" for i in range(classes)]}
    (folder / kind.meta["filename"]).write_bytes(pickle.dumps(names))
    monkeypatch.setattr(kind, "_check_integrity", lambda self: True)  # fake batches, fake md5s
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kw: True)
    ds = data.build({"source": source, "root": str(tmp_path / "cifar")})
    n_train = 4 * len(kind.train_list)
    assert ds.train_images.shape == (n_train, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and len(ds.classes) == classes
    assert ds.train_labels[:4].tolist() == [0, 1, 2, classes - 1]
    first_batch = kind.train_list[0][0]
    first = np.frombuffer(pickle.loads((folder / first_batch).read_bytes())["data"][0].tobytes(), np.uint8)
    assert torch.equal(ds.train_images[0], torch.from_numpy(first.reshape(3, 32, 32).copy()))


def test_workflow_resumes_a_killed_job(tmp_path):
    """Kill a running `snakemake` (and its job) with SIGKILL and rerun it: the job resumes from its
    checkpoint and ends with the record of a run that was never interrupted."""
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
    target = "results/runs/patch100/none/0.json"  # the one job that matters, not the tables after it

    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    for folder in (killed, fresh):
        folder.mkdir()
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        os.path.join(bin_dir, "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "-d",
        str(killed),
        "--cores",
        "1",
        target,
        "--configfile",
        str(config_file),
    ]
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = killed / "scratch" / "checkpoints" / "patch100" / "none" / "0.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), "the job wrote no checkpoint"
    os.killpg(run.pid, signal.SIGKILL)  # snakemake and the job it started
    run.wait(timeout=30)
    assert not (killed / target).exists()

    snakemake("--unlock", "--configfile", str(config_file), cwd=killed)
    snakemake("--cores", "1", "--rerun-incomplete", target, "--configfile", str(config_file), cwd=killed)
    assert "resuming from" in (killed / "logs" / "train_victim" / "patch100" / "none" / "0.log").read_text()
    assert not ckpt.exists()
    snakemake("--cores", "1", target, "--configfile", str(config_file), cwd=fresh)
    assert without_timing(killed / target) == without_timing(fresh / target)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A job that dies while writing (inside the atomic writer) or whose final rename fails leaves
    the previous file untouched and no temporary beside it."""
    from augdefense import io

    target = tmp_path / "record.json"
    write_json(target, {"old": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="died mid-write"):
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"new": ')
            raise RuntimeError("died mid-write")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]

    def refuse(*args):
        raise OSError("disk full at rename")

    monkeypatch.setattr(io.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"new": 2})
    with pytest.raises(OSError, match="disk full"):
        io.save_tensors(tmp_path / "new.pt", {"x": torch.zeros(3)})
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_an_input_no_job_recorded_is_named_unverified_and_a_changed_one_refused(tmp_path):
    """An input with a sidecar must match the sha256 its job recorded; one without (made by hand or
    outside the workflow) is hashed but cannot be checked, so the record names it."""
    from augdefense.errors import ArtifactError
    from augdefense.io import read_json
    from augdefense.runner import execute

    prepared = str(tmp_path / "data.pt")
    craft = JobSpec(
        rule="craft_poison",
        inputs={"data": prepared},
        outputs={"out": str(tmp_path / "poison.pt")},
        params={"attack_name": "p", "attack": {"type": "patch", "recipe": "r", "patch_size": 2}, "seed": 0},
    )
    data.prepare(spec={"source": "digits"}, out=prepared)  # by hand: no sidecar
    execute(craft, craft_poison)
    record = read_json(tmp_path / "poison.pt.prov.json")
    assert record["unverified_inputs"] == [prepared] and prepared in record["inputs"]

    prepare = JobSpec(rule="prepare_data", outputs={"out": prepared}, params={"spec": {"source": "digits"}})
    execute(prepare, data.prepare)  # as the workflow makes it: with its sidecar
    execute(craft, craft_poison)
    assert read_json(tmp_path / "poison.pt.prov.json")["unverified_inputs"] == []

    with open(prepared, "ab") as fh:
        fh.write(b"changed")
    with pytest.raises(ArtifactError, match=r"data\.pt: its sha256 differs from what the job that wrote it recorded"):
        execute(craft, craft_poison)


def test_an_artifact_named_from_another_directory_is_checked_against_its_record(tmp_path, monkeypatch):
    """A job names its outputs from its working directory (Snakemake's relative paths); a later job
    or a replay that names the same file otherwise (absolute, through a link above it) is checked
    against that record, not refused as changed; a sidecar that records another file is named."""
    from augdefense.errors import ArtifactError
    from augdefense.io import read_json
    from augdefense.runner import execute

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    execute(
        JobSpec(rule="prepare_data", outputs={"out": "resources/data.pt"}, params={"spec": {"source": "digits"}}),
        data.prepare,
    )
    (tmp_path / "link").symlink_to(tmp_path / "work")
    for name in (str(tmp_path / "work/resources/data.pt"), str(tmp_path / "link/resources/data.pt")):
        out = tmp_path / f"poison{len(name)}.pt"
        craft = JobSpec(
            rule="craft_poison",
            inputs={"data": name},
            outputs={"out": str(out)},
            params={"attack_name": "p", "attack": {"type": "patch", "recipe": "r", "patch_size": 2}, "seed": 0},
        )
        execute(craft, craft_poison)
        assert read_json(f"{out}.prov.json")["unverified_inputs"] == [], name

    shutil.copy("resources/data.pt", "resources/copy.pt")
    shutil.copy("resources/data.pt.prov.json", "resources/copy.pt.prov.json")
    copied = dataclasses.replace(craft, inputs={"data": "resources/copy.pt"})
    with pytest.raises(ArtifactError, match=r"copy\.pt: its sidecar .* records no output of that name"):
        execute(copied, craft_poison)
    with open("resources/data.pt", "ab") as fh:
        fh.write(b"changed")
    with pytest.raises(ArtifactError, match=r"data\.pt: its sha256 differs from what the job that wrote it recorded"):
        execute(craft, craft_poison)
