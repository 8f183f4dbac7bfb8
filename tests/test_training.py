"""Training: the batched baseline augmentation, seeding, and divergence handling."""

import json

import pytest
import torch

from augdefense import augment, data
from augdefense.errors import TrainingError
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


def test_sanitize_and_filtered_victim(tiny_files, tmp_path):
    train_feature_model(_job(tiny_files, defense_name="none", defense={"type": "none"}), out=tmp_path / "fm.pt")
    spec = {"type": "spectral_signatures"}

    def run_filter(model):
        return sanitize(
            data=tiny_files / "data.pt",
            poison=tiny_files / "poison.pt",
            feature_model=model,
            defense_name="ss",
            defense=spec,
            runtime={"device": "cpu"},
            seed=0,
            out=tmp_path / "s.json",
        )

    record = run_filter(tmp_path / "fm.pt")
    # Every target-class image is a poison here, and 1.5x that budget is capped at the class size.
    assert record["n_removed"] == record["n_poisons"] > 0
    assert record["filter_recall"] == record["filter_precision"] == 1.0
    victim = train_victim(
        _job(tiny_files, defense_name="ss", defense=spec),
        attack="patch100",
        out=tmp_path / "v.json",
        sanitized=tmp_path / "s.json",
    )
    assert victim["n_removed"] == record["n_removed"]
    (tmp_path / "fm_bad.pt").write_bytes((tmp_path / "fm.pt").read_bytes()[:500])
    from augdefense.errors import ArtifactError

    with pytest.raises(ArtifactError, match="fm_bad.pt"):
        run_filter(tmp_path / "fm_bad.pt")


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
