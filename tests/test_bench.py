"""The benchmark runs in its tiny mode (its output's shape is checked, not its speed; the
crafting row measured against IBM ART when it is installed, skipped with a reason when not), and the
batched fast paths follow the same distributions as the reference per-sample transforms."""

import json
import sys

import torch
from torchvision.transforms import v2

from augdefense import augment, data, defenses
from augdefense.bench import cli, crafting


def test_tiny_benchmark_writes_its_report(tmp_path):
    assert cli.main(["--tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert set(result) == {"machine", "setup", "training", "crafting", "data_path", "workflow"}
    path = result["data_path"]
    assert path["images"] == 16 and [r["workers"] for r in path["rows"]] == [0]
    assert path["rows"][0]["ms_per_image"] > 0 and path["mean_jpeg_kb"] > 10
    assert path["imagenet_epoch_minutes"] == round(path["rows"][0]["ms_per_image"] * 1_281_167 / 60_000, 1)
    measured = [r for r in result["training"] if "skipped" not in r]
    assert [r["defense"] for r in measured] == ["none", "mixup k=2"]
    for row in measured:
        assert row["ours_images_per_s"] > 0 and row["reference_images_per_s"] > 0
        assert abs(row["ratio"] - row["ours_images_per_s"] / row["reference_images_per_s"]) < 0.02
    markdown = (tmp_path / "bench.md").read_text()
    assert "| mixup k=2 |" in markdown
    crafting = result["crafting"]
    if _art_importable():
        assert "skipped" not in crafting
        assert crafting["poisons"] == 14 and crafting["training_images"] == 1437  # 1% of digits' training set
        assert int(crafting["percent_poison"] * crafting["training_images"]) == crafting["poisons"]  # ART's count
        assert crafting["iterations"] == 2 and crafting["restarts"] == 1 and crafting["eps"] == "16/255"
        ours, art = crafting["ours_seconds_per_iteration"], crafting["art_seconds_per_iteration"]
        assert ours > 0 and art > 0
        assert abs(crafting["ratio"] - art / ours) <= 0.01 * crafting["ratio"] + 0.01
        assert set(crafting["matching_loss"]) == {"clean", "ours", "art"}
        assert all(0 <= v <= 2 for v in crafting["matching_loss"].values())
        assert f"| gradient matching | {ours} | {art} | {crafting['ratio']}× |" in markdown
    else:
        assert set(crafting) == {"skipped"} and "ART is not importable" in crafting["skipped"]
        assert "Crafting (gradient matching vs IBM ART): skipped: IBM ART" in markdown


def _art_importable() -> bool:
    try:
        crafting._import_art()
    except ImportError:
        return False
    return True


def test_the_demo_command_runs_this_checkouts_workflow_and_demo_preset(tmp_path):
    from pathlib import Path

    from augdefense.bench.demo import demo_command

    cmd = demo_command(tmp_path / "demo", cores=2, warm_worker=False)
    repo = Path(__file__).resolve().parents[1]
    snakefile, configfile = cmd[cmd.index("--snakefile") + 1], cmd[cmd.index("--configfile") + 1]
    assert Path(snakefile) == repo / "Snakefile" and Path(configfile) == repo / "presets" / "quick.yaml"
    assert cmd[cmd.index("-d") + 1] == str(tmp_path / "demo") and "warm_worker=False" in cmd


def test_crafting_row_is_skipped_with_a_reason_without_art(monkeypatch):
    # As if ART were not installed: a None entry in sys.modules makes its import raise ImportError,
    # whether or not it is installed (and already imported by another test).
    for name in [m for m in sys.modules if m == "art" or m.startswith("art.")] + ["art"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert not _art_importable()
    dataset = data.build({"source": "digits", "image_size": 16})
    row = crafting.bench_crafting(dataset, {"arch": "convnet", "width": 32}, iterations=1, repeats=1, model_epochs=0)
    assert set(row) == {"skipped"}
    assert "IBM ART is not importable" in row["skipped"] and "pip install -e '.[bench]'" in row["skipped"]
    assert crafting.crafting_markdown(row) == [f"Crafting (gradient matching vs IBM ART): skipped: {row['skipped']}"]


def test_batched_crop_offsets_match_v2_random_crop():
    # Encode each pixel's (row, col) so the crop offset can be read back from the output.
    size, pad, n = 8, 2, 4000
    rows = torch.arange(size).view(size, 1).expand(size, size)
    cols = torch.arange(size).view(1, size).expand(size, size)
    image = torch.stack([rows + 1, cols + 1]).float()  # 0 marks padding
    torch.manual_seed(0)
    ours = augment.random_crop(image.expand(n, -1, -1, -1).contiguous(), pad)
    ref_crop = v2.RandomCrop(size, padding=pad)
    reference = torch.stack([ref_crop(image) for _ in range(n)])

    def offsets(batch):
        # crop pixel i shows padded pixel offset + i, i.e. image pixel offset + i - pad; the centre is
        # always inside the image, and its value is that image position + 1
        centre = size // 2
        row = batch[:, 0, centre, centre].long() - 1 - centre + pad
        col = batch[:, 1, centre, centre].long() - 1 - centre + pad
        return row * 10 + col

    ours_hist = torch.bincount(offsets(ours), minlength=50).float() / n
    ref_hist = torch.bincount(offsets(reference), minlength=50).float() / n
    assert (ours_hist > 0).sum() == (ref_hist > 0).sum() == 25  # 5 x 5 offsets, all reachable
    assert (ours_hist - ref_hist).abs().max() < 0.02  # each ~0.04; sampling noise ~0.003


def test_flip_rate_matches_v2():
    x = torch.rand(4000, 1, 2, 3)
    torch.manual_seed(0)
    ours = (augment.random_flip(x) == x.flip(3)).flatten(1).all(1).float().mean()
    flip = v2.RandomHorizontalFlip()
    ref = torch.stack([(flip(img) == img.flip(2)).all() for img in x]).float().mean()
    assert abs(ours - 0.5) < 0.03 and abs(ref - 0.5) < 0.03


def test_two_way_mixup_weights_match_v2_mixup():
    """Our k=2 Dirichlet(α, α) weight has the distribution of v2.MixUp's Beta(α, α) lambda."""
    ours = defenses.build({"type": "mixup", "k": 2, "alpha": 0.4}, 2, seed=0)
    ours_lam = torch.tensor([float(ours.draw_weights()[0]) for _ in range(4000)])
    mixup = v2.MixUp(alpha=0.4, num_classes=2)
    torch.manual_seed(0)
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    ref_lam = torch.stack([mixup(x, y)[1][0, 0] for _ in range(4000)])  # image 0 (class 0) keeps weight lambda
    for stat in (torch.mean, torch.var, lambda t: (t < 0.1).float().mean()):
        assert abs(stat(ours_lam) - stat(ref_lam)) < 0.03
