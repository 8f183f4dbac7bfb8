"""The benchmark's trigger images ship with the package (with their licence) and resize exactly as
the benchmark's torchvision ``Resize((p, p))`` on the PIL image does, without importing torchvision."""

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augdefense import attacks
from augdefense.attacks import triggers
from augdefense.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _torchvision_trigger(name: str, size: int) -> torch.Tensor:
    """What craft_poisons_htbd.py / craft_poisons_clbd.py compute, in uint8."""
    from torchvision import transforms

    path = resources.files(triggers) / name
    with Image.open(path) as img:
        tensor = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])(img.convert("RGB"))
    return tensor.mul(255).round().to(torch.uint8)


@pytest.mark.parametrize("name", triggers.FILES)
@pytest.mark.parametrize("size", [2, 3, 4, 5, 7, 8, 16, 80])
def test_the_resized_trigger_is_torchvisions(name, size):
    assert torch.equal(triggers.load(name, size, 3), _torchvision_trigger(name, size))


def test_the_shipped_images_are_the_benchmarks():
    with Image.open(resources.files(triggers) / "htbd.png") as img:
        assert img.size == (80, 80)
    with Image.open(resources.files(triggers) / "clbd.png") as img:
        assert img.size == (5, 5)
    assert triggers.load("clbd.png", 5, 3).shape == (3, 5, 5)


def test_single_channel_data_get_the_luminance_of_the_resized_trigger():
    rgb = triggers.load("htbd.png", 7, 3).permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert torch.equal(triggers.load("htbd.png", 7, 1), torch.from_numpy(expected.copy())[None])


def test_loading_returns_a_fresh_tensor():
    first = triggers.load("clbd.png", 5, 3)
    first.zero_()
    assert triggers.load("clbd.png", 5, 3).any()


def test_unknown_trigger_or_channel_count_is_refused():
    with pytest.raises(ValueError, match="unknown trigger"):
        triggers.load("nope.png", 5, 3)
    with pytest.raises(ValueError, match="RGB"):
        triggers.load("htbd.png", 5, 2)


class _TwoChannels:
    image_shape = (2, 8, 8)
    num_classes = 10


def test_data_the_trigger_cannot_fit_are_refused_naming_the_key():
    attack = attacks.build({"type": "hidden_trigger", "recipe": "r", "patch_size": 3}, "htbd")
    with pytest.raises(ConfigError, match=r"attacks\.htbd\.trigger"):
        attack.draw(_TwoChannels(), 0)


def test_the_package_ships_the_triggers_with_their_licence():
    folder = resources.files(triggers)
    assert {"htbd.png", "clbd.png", "LICENSE-poisoning-benchmark.txt"} <= {p.name for p in folder.iterdir()}
    assert "MIT License" in (folder / "LICENSE-poisoning-benchmark.txt").read_text()
    text = (ROOT / "pyproject.toml").read_text()  # tomllib is Python 3.11+; the project supports 3.10
    line = text.split("[tool.setuptools.package-data]", 1)[1].strip().splitlines()[0]
    assert line.startswith("augdefense = [")
    patterns = [p.strip().strip('"') for p in line.split("[", 1)[1].rstrip("]").split(",")]
    for name in ("htbd.png", "clbd.png", "LICENSE-poisoning-benchmark.txt"):
        assert any(Path("attacks/triggers", name).match(p) for p in patterns), name


def test_loading_a_trigger_does_not_import_torchvision():
    code = (
        "import sys; from augdefense.attacks import triggers; triggers.load('htbd.png', 5, 3); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_crafting_rule_lists_the_trigger_images_among_its_code_inputs():
    """A changed trigger image reruns crafting, and the provenance archive records it."""
    from augdefense import codedeps

    files = codedeps.code_files("augdefense.jobs.craft")
    for name in triggers.FILES:
        assert str(Path(codedeps.SRC, "attacks", "triggers", name)) in files
