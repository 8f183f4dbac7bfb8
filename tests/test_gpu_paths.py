"""The CUDA paths: bf16 autocast, channels-last, the GPU locks on real devices, a killed and resumed
training, crafting and Laplacian noise on the device. Marked ``gpu``: skipped without a GPU, except under ``make
gpu-check --tiny`` (AUGDEFENSE_GPU_TESTS_ON_CPU=1), which runs them on the CPU so they cannot rot."""

import json
import os
import subprocess
import sys

import pytest
import torch

from augdefense import attacks, defenses, gpu, models
from augdefense.attacks.base import CraftingContext
from augdefense.training import Normalizer, Recipe, train

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda:0")
    if os.environ.get("AUGDEFENSE_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("no CUDA device (make gpu-check --tiny runs these on the CPU)")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build({"arch": "resnet18_cifar", "width": 16}, 3, 10, 32)


def test_bf16_training_matches_fp32(device):
    """On the same batch, with bf16 autocast and without: the first step's loss and gradient agree
    within bf16's precision, and ten SGD steps lower the loss alike."""
    x = torch.rand(32, 3, 32, 32, device=device)
    y = torch.arange(32, device=device) % 10
    results = []
    for amp in (False, True):
        model = _model().to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        losses, gradient = [], None
        for _ in range(10):
            optimizer.zero_grad()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            loss.backward()
            if gradient is None:
                gradient = torch.cat([p.grad.flatten().float() for p in model.parameters()])
            optimizer.step()
            losses.append(loss.item())
        results.append((losses, gradient))
    (loss32, g32), (loss16, g16) = results
    assert loss16[0] == pytest.approx(loss32[0], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.9
    assert not torch.equal(g16, g32)  # bf16 did run
    assert loss16[-1] < 0.8 * loss16[0] and loss32[-1] < 0.8 * loss32[0]
    assert loss16[-1] == pytest.approx(loss32[-1], rel=0.15)


def test_channels_last_gives_the_same_logits(device):
    model = _model().to(device).eval()
    x = torch.rand(16, 3, 32, 32, device=device)
    with torch.no_grad():
        plain = model(x)
        model.to(memory_format=torch.channels_last)
        last = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, last, rtol=1e-4, atol=1e-4)


HOLD = """
import sys, time, torch
from augdefense import gpu
slot = gpu.acquire(poll_seconds=0.05, lock_dir=sys.argv[1], jobs_per_device=int(sys.argv[2]))
x = torch.ones(1, device=slot.device) if slot.device != "cpu" else torch.ones(1)
print(slot.device, str(x.device), flush=True)
time.sleep(float(sys.argv[3]))
"""


def _hold(lock_dir, per_device: int, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for var in gpu.SCHEDULER_VARS:
        env.pop(var, None)
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_dir), str(per_device), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_the_lock_gives_concurrent_jobs_distinct_real_devices(device, tmp_path):
    """As many jobs as devices (x jobs_per_gpu) each get their own slot on a real device and
    allocate there; one more waits."""
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if count == 0:
        assert gpu.acquire(lock_dir=tmp_path).device == "cpu"
        return
    for per_device in (1, 2):
        procs = [_hold(tmp_path / str(per_device), per_device, 4) for _ in range(count * per_device)]
        seen = [p.stdout.readline().split() for p in procs]
        assert sorted(s[0] for s in seen) == sorted(f"cuda:{i}" for i in range(count) for _ in range(per_device))
        assert all(slot == allocated for slot, allocated in seen)
        with pytest.raises(TimeoutError):
            gpu.acquire(
                lock_dir=tmp_path / str(per_device), poll_seconds=0.05, timeout_seconds=0.5, jobs_per_device=per_device
            )
        for p in procs:
            p.wait(timeout=60)


def _train_job(tmp_path, device, out, checkpoint):
    """A train_victim job in its own process, deterministic, on ``device``."""
    from augdefense.runner import JobSpec
    from conftest import job_process

    job = JobSpec(
        rule="train_victim",
        inputs={"data": str(tmp_path / "data.pt"), "poison": str(tmp_path / "p.pt")},
        outputs={"out": str(out)},
        params={
            "attack": "p",
            "defense_name": "mixup",
            "defense": {"type": "mixup"},
            "recipe": {"epochs": 6, "milestones": [3], "batch_size": 64, "crop_pad": 2},
            "model": {"arch": "resnet18_cifar", "width": 8},
            "runtime": {
                "device": device.type,
                "amp": device.type == "cuda",
                "deterministic": True,
                "checkpoint_every": 1,
            },
            "seed": 1,
            "checkpoint": str(checkpoint),
        },
    )
    return job_process("augdefense.jobs.train:train_victim", job)


def test_killed_and_resumed_training_ends_like_an_uninterrupted_one(device, tmp_path):
    from augdefense.gpucheck import synthetic
    from augdefense.io import save_tensors
    from augdefense.jobs.craft import craft_poison
    from conftest import kill_after_checkpoint

    save_tensors(tmp_path / "data.pt", synthetic((3, 32, 32), 640).to_dict())
    craft_poison(
        data=str(tmp_path / "data.pt"),
        attack_name="p",
        attack={"type": "patch", "recipe": "r"},
        seed=0,
        out=str(tmp_path / "p.pt"),
    )
    reference = _train_job(tmp_path, device, tmp_path / "ref.json", tmp_path / "ref.ckpt")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    out, ckpt = tmp_path / "run.json", tmp_path / "run.ckpt"
    kill_after_checkpoint(_train_job(tmp_path, device, out, ckpt), ckpt)
    resumed = _train_job(tmp_path, device, out, ckpt)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    a, b = json.loads((tmp_path / "ref.json").read_text()), json.loads(out.read_text())
    for record in (a, b):
        record.pop("train_seconds")
    assert a == b and a["device"].startswith(device.type)


def test_crafting_on_the_device_keeps_the_eps_ball(device):
    from augdefense.gpucheck import synthetic

    dataset = synthetic((3, 32, 32), 500)
    model = _model().to(device).eval()
    context = CraftingContext(
        model,
        Normalizer(dataset.mean, dataset.std).to(device),
        device,
        None,
        Recipe.from_spec({"epochs": 1, "milestones": [], "crop_pad": 4, "flip": True}),
    )
    attack = attacks.build(
        {"type": "gradient_matching", "recipe": "r", "eps": 16, "budget": 0.02, "iterations": 3, "restarts": 1}, "wb"
    )
    poison = attack.craft(dataset, 0, context)
    clean = dataset.train_images[poison["train_indices"]].int()
    moved = (poison["train_images"].int() - clean).abs()
    assert moved.max() <= 16 and moved.max() > 0
    assert poison["train_images"].dtype == torch.uint8


def test_training_runs_on_the_device(device):
    """The training loop keeps its data and model on the device it was given."""
    from augdefense.gpucheck import synthetic

    dataset = synthetic((3, 32, 32), 256)
    model = _model()
    recipe = Recipe.from_spec({"epochs": 1, "milestones": [], "crop_pad": 4})
    train(
        model,
        dataset.train_images,
        dataset.train_labels,
        defenses.build({"type": "cutmix"}, 10),
        recipe,
        Normalizer(dataset.mean, dataset.std),
        device,
        0,
        amp=device.type == "cuda",
    )
    assert next(model.parameters()).device.type == device.type


def test_laplace_noise_is_drawn_on_the_device_and_replays_from_the_seed(device):
    """DP-InstaHide's noise: every tensor the defense makes lives on the batch's device (no host draw,
    no copy), and the device's seeded generator, saved and restored as a checkpoint does, replays it."""
    defense = defenses.build({"type": "mixup", "k": 4, "weights": "equal", "laplace": 8}, 10, seed=0)
    x, y = torch.rand(64, 3, 32, 32, device=device), torch.arange(64, device=device) % 10
    made = []

    class Devices(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            made.extend(
                t.device for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)
            )
            return out

    torch.manual_seed(3)
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    with Devices():
        first = defense.add_noise(x)
    assert made and set(made) == {x.device}
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
    assert torch.equal(defense.add_noise(x), first) and not torch.equal(first, x)
    noise = first - x
    assert abs(noise.abs().mean().item() - 8 / 255) < 0.05 * 8 / 255  # E|Laplace(b)| = b
    assert defense.transform(x, y, 0)[0].device == x.device
