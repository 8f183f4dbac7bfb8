"""Training: the batched baseline augmentation, seeding, and divergence handling."""

import json
from dataclasses import replace

import pytest
import torch

from augdefense import augment, data
from augdefense.errors import ArtifactError, TrainingError
from augdefense.jobs.craft import craft_poison
from augdefense.jobs.sanitize import sanitize
from augdefense.jobs.train import TrainingJob, TrainingRun, train_feature_model, train_victim

RECIPE = {"epochs": 2, "milestones": [1], "batch_size": 128, "crop_pad": 1, "flip": False}
MODEL = {"arch": "convnet", "width": 8}


def test_random_crop_is_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 6, 6)
    out = augment.random_crop(x, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for i in range(64):
        matches = [
            (r, c) for r in range(5) for c in range(5) if torch.equal(padded[i, :, r : r + 6, c : c + 6], out[i])
        ]
        assert matches, f"image {i} is not a crop of its padded version"
        offsets.append(matches[0])
    assert len(set(offsets)) > 10  # offsets vary per image


def test_random_flip_rate():
    torch.manual_seed(0)
    x = torch.rand(4000, 1, 2, 3)
    out = augment.random_flip(x)
    flipped = (out == x.flip(3)).flatten(1).all(1) & ~(out == x).flatten(1).all(1)
    assert 0.45 < flipped.float().mean() < 0.55


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, digits8):
    root = tmp_path_factory.mktemp("tiny")
    data.prepare(spec={"source": "digits"}, out=root / "data.pt")
    craft_poison(
        data=root / "data.pt",
        attack_name="patch100",
        attack={"type": "patch", "recipe": "r", "patch_size": 2, "fraction": 1.0},
        seed=0,
        out=root / "poison.pt",
    )
    return root


def _job(root, seed=0, defense_name="mixup", defense=None, recipe=RECIPE) -> TrainingJob:
    return TrainingJob(
        data=root / "data.pt",
        poison=root / "poison.pt",
        defense_name=defense_name,
        defense=defense or {"type": "mixup", "k": 2, "alpha": 1.0},
        recipe=recipe,
        model=MODEL,
        runtime={"device": "cpu", "amp": False},
        seed=seed,
    )


def _train(root, out, seed=0, defense=None, recipe=RECIPE):
    return train_victim(_job(root, seed, defense=defense, recipe=recipe), attack="patch100", out=out)


def _without_timing(record):
    return {k: v for k, v in record.items() if k != "train_seconds"}


def test_same_seed_same_metrics(tiny_files, tmp_path):
    first = _train(tiny_files, tmp_path / "a.json", seed=1)
    second = _train(tiny_files, tmp_path / "b.json", seed=1)
    assert _without_timing(first) == _without_timing(second)
    other = _train(tiny_files, tmp_path / "c.json", seed=2)
    assert other["final_train_loss"] != first["final_train_loss"]
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["clean_acc"] == first["clean_acc"] and 0 <= written["poison_success"] <= 1


def test_divergence_stops_with_epoch_step_and_defense(tiny_files, tmp_path):
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+ under defense mixup"):
        _train(tiny_files, tmp_path / "nan.json", recipe={**RECIPE, "lr": 1e30})
    assert not (tmp_path / "nan.json").exists()
    assert not list(tmp_path.glob(".nan.json*"))  # no temporary left behind either


def test_sanitized_training_set_excludes_exactly_the_removed(tiny_files):
    job = TrainingRun.prepare(_job(tiny_files, defense_name="ss", defense={"type": "spectral_signatures"}))
    full_images, full_labels = job.training_set()
    removed, relabeled = [0, 5, 17, 1000], [[3, 9], [6, 0]]
    images, labels = job.training_set({"removed": removed, "relabeled": relabeled})
    kept = [i for i in range(len(full_labels)) if i not in removed]
    assert torch.equal(images, full_images[kept])
    expected = full_labels.clone()
    expected[3], expected[6] = 9, 0
    assert torch.equal(labels, expected[kept])


PATCH25 = {"type": "patch", "recipe": "r", "patch_size": 10, "fraction": 0.25}


@pytest.fixture(scope="module")
def patched25(tmp_path_factory):
    """Digits at 16 px with 25% of the target class carrying a 10x10 trigger, and a feature model
    (width 32, learning rate dropped for the last 5 epochs) trained on them. The backdoor is strong
    enough that the filters' outcome does not hang on floating-point order: over seeds 0-9 under the
    AVX-512 and AVX2 kernels of an Intel and an AMD CPU, Activation Clustering found every poison
    and Spectral Signatures at least 0.77 of them, 1.0 for seed 3 in all four
    (docs/reproducibility.md); chance is about 0.38. (With 10% of the class, width 16 and no drop,
    the setting this replaced, recall ranged from 0.0 to 1.0 by seed, and seed 3's 1.0 fell to 0.07
    on an AMD machine's AVX-512 kernels.) The test checks the plumbing around the filters: the
    right features, budget and poison positions."""
    root = tmp_path_factory.mktemp("patched25")
    data.prepare(spec={"source": "digits", "image_size": 16}, out=root / "data.pt")
    craft_poison(data=root / "data.pt", attack_name="patch25", attack=PATCH25, seed=3, out=root / "poison.pt")
    job = TrainingJob(
        data=root / "data.pt",
        poison=root / "poison.pt",
        model={"arch": "convnet", "width": 32},
        recipe={"epochs": 20, "milestones": [15], "crop_pad": 2, "flip": False, "nesterov": False},
        runtime={"device": "cpu"},
        seed=3,
    )
    train_feature_model(job, out=root / "fm.pt")
    return root, job


def _sanitize(root, model, spec, out):
    return sanitize(
        data=root / "data.pt",
        poison=root / "poison.pt",
        feature_model=model,
        attack=PATCH25,
        defense_name="f",
        defense=spec,
        runtime={"device": "cpu"},
        seed=3,
        out=out,
    )


@pytest.mark.parametrize(
    "spec", [{"type": "spectral_signatures"}, {"type": "activation_clustering", "removal": "always"}]
)
def test_filters_catch_a_learned_backdoor_through_the_sanitize_job(patched25, spec, tmp_path):
    root, _ = patched25
    record = _sanitize(root, root / "fm.pt", spec, tmp_path / "s.json")
    assert record["n_poisons"] == 36
    assert record["filter_recall"] >= 0.75  # twice chance, below every seed's recall on both CPUs and ISAs
    poisoned = set(torch.load(root / "poison.pt", weights_only=True)["train_indices"].tolist())
    assert record["n_poisons_removed"] == len(set(record["removed"]) & poisoned)


def test_a_filtered_victim_trains_on_what_the_filter_kept(patched25, tmp_path):
    root, job = patched25
    spec = {"type": "spectral_signatures"}
    record = _sanitize(root, root / "fm.pt", spec, tmp_path / "s.json")
    victim_job = replace(job, defense_name="ss", defense=spec, recipe={**job.recipe, "epochs": 1})
    victim = train_victim(victim_job, attack="patch25", out=tmp_path / "v.json", sanitized=tmp_path / "s.json")
    # int(1.5 x 36) = 54 from each of the 10 classes: the filter does not know which holds the poisons
    assert victim["n_removed"] == record["n_removed"] == 540 and victim["filter_recall"] == record["filter_recall"]
    assert record["budget_assumed"] == 36
    images, _ = TrainingRun.prepare(victim_job).training_set(record)
    assert len(images) == 1437 - 540
    (tmp_path / "fm_bad.pt").write_bytes((root / "fm.pt").read_bytes()[:500])
    with pytest.raises(ArtifactError, match=r"fm_bad\.pt: truncated or corrupted"):
        _sanitize(root, tmp_path / "fm_bad.pt", spec, tmp_path / "s2.json")


def test_compile_switch_trains_through_the_compiled_module(digits8, monkeypatch):
    """runtime.compile: true routes the training forward pass through torch.compile's module (a
    stand-in here: compiling for real takes minutes on this CPU); off by default."""
    from augdefense import defenses
    from augdefense.models import build as build_model
    from augdefense.training import Normalizer, Recipe, Runtime, train

    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(len(x))
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda module: Counting(module))
    model = build_model({"arch": "convnet", "width": 8}, 1, 10, 8)
    recipe = Recipe.from_spec({"epochs": 1, "milestones": [], "crop_pad": 1, "flip": False})
    args = (
        model,
        digits8.train_images[:256],
        digits8.train_labels[:256],
        defenses.build({"type": "none"}, 10),
        recipe,
        Normalizer(digits8.mean, digits8.std),
        torch.device("cpu"),
        0,
    )
    train(*args, amp=False)
    assert calls == [] and Runtime.from_spec({}).compile is False
    train(*args, amp=False, compile_model=True)
    assert calls == [128, 128]


def test_a_training_job_imports_no_library_it_does_not_use():
    """Each job is a fresh process: a victim under mixup, with its provenance record, must not pay for
    importing scikit-learn (filters), pandas (reporting) or torchvision (CutMix, CIFAR-10)."""
    import subprocess
    import sys

    code = (
        "import sys; from augdefense import defenses, provenance, runner, training; "
        "from augdefense.jobs import train; "
        "defenses.build({'type': 'mixup', 'k': 4}, 10); provenance.environment(); "
        "print(sorted(m for m in ('sklearn', 'pandas', 'torchvision', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = (
        "import sys; from augdefense import defenses; defenses.build({'type': 'cutmix'}, 10); "
        "print('torchvision' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "True"
    )


# -- the training step never reads a value back to the host --------------------------------------

HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
}


class _DeviceValuesStayPut(torch.overrides.TorchFunctionMode):
    """Raises on any read of a value derived from the device's data (the batch, the labels, the
    model's weights and gradients) back to the host: `.item()`, `.cpu()`, `float(t)`, `if t:`, ...
    On a GPU each would wait for the device. On the CPU path every tensor lives on the host, so the
    values that come from the device's data are followed through every torch call; the defenses'
    own host-side draws (mixup's weights, torchvision CutMix's box) are not, and may be read."""

    def __init__(self, seeds):
        super().__init__()
        self.derived = {id(t) for t in seeds}
        self.keep = list(seeds)  # ids stay unique while the tensors live

    def mark(self, value):
        if isinstance(value, torch.Tensor):
            self.derived.add(id(value))
            self.keep.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self.mark(v)

    def touches(self, values) -> bool:
        for v in values:
            if isinstance(v, torch.Tensor) and id(v) in self.derived:
                return True
            if isinstance(v, (list, tuple)) and self.touches(v):
                return True
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        derived = self.touches(args) or self.touches(kwargs.values())
        if derived and func in HOST_READS:
            raise AssertionError(f"host read inside the training step: {func.__name__}")
        out = func(*args, **kwargs)
        if derived:
            self.mark(out)
        return out


@pytest.mark.parametrize(
    "defense",
    [
        {"type": "none"},
        {"type": "mixup", "k": 4, "weights": "equal", "laplace": 8},  # DP-InstaHide
        {"type": "cutmix", "p": 1.0},
        {"type": "maxup", "m": 2, "start_epoch": 0, "inner": {"type": "cutout", "size": 3}},
        {"type": "dpsgd_batch", "clip": 1.0, "noise": 1e-2},
    ],
    ids=lambda d: d["type"],
)
def test_the_training_step_reads_nothing_back_to_the_host(digits8, defense, monkeypatch):
    from augdefense import defenses, training
    from augdefense.models import build as build_model

    real_step, steps = training._train_step, []

    def watched_step(forward, model, step_optimizer, defense_, recipe, batch, labels, epoch):
        seeds = [batch, labels, *model.parameters(), *model.buffers()]
        for p in model.parameters():  # gradients appear in backward, outside any torch call: mark them there
            p.register_post_accumulate_grad_hook(lambda p: mode.mark(p.grad))
        with _DeviceValuesStayPut(seeds) as mode:
            loss = real_step(forward, model, step_optimizer, defense_, recipe, batch, labels, epoch)
        for p in model.parameters():
            p._post_accumulate_grad_hooks.clear()
        steps.append(loss)
        return loss

    monkeypatch.setattr(training, "_train_step", watched_step)
    model = build_model({"arch": "convnet", "width": 8}, 1, 10, 8)
    recipe = training.Recipe.from_spec({"epochs": 1, "milestones": [], "crop_pad": 1, "flip": True})
    history = training.train(
        model,
        digits8.train_images[:256],
        digits8.train_labels[:256],
        defenses.build(defense, 10, seed=0),
        recipe,
        training.Normalizer(digits8.mean, digits8.std),
        torch.device("cpu"),
        0,
        amp=False,
    )
    assert len(steps) == 2 and history[0]["loss"] == pytest.approx(sum(float(s) for s in steps) / 2)


def test_the_host_read_watch_catches_a_loss_item(digits8):
    """The watch above can fail: a step that reads its loss back (what the loop did before) raises."""
    x, y = digits8.train_images[:4].float().flatten(1), digits8.train_labels[:4]
    head = torch.nn.Linear(x.shape[1], 10)
    with _DeviceValuesStayPut([x, y]), pytest.raises(AssertionError, match="item"):
        torch.nn.functional.cross_entropy(head(x), y).item()
    with _DeviceValuesStayPut([x, y]), pytest.raises(AssertionError, match="__float__"):
        float(torch.nn.functional.cross_entropy(head(x), y))
    with _DeviceValuesStayPut([x, y]):
        float(torch.tensor(0.5))  # a host-side value is not the device's
