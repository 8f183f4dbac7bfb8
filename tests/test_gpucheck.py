"""`make gpu-check` at its tiny size (CI runs it on the CPU so it cannot rot) and `make estimate`."""

import json
import os
import subprocess
import sys

import pytest

from augdefense import config as grid
from augdefense import estimate
from augdefense.errors import ConfigError
from augdefense.gpucheck.workload import DEFENSES
from conftest import REPO, snakemake

# Stand-ins that fail on import: a bare GPU node has torch, torchvision and numpy, none of these.
ABSENT = "raise ImportError('{name} is not on a bare GPU node')\n"
NOT_ON_A_BARE_NODE = (
    "snakemake",
    "opacus",
    "pandas",
    "scipy",
    "sklearn",
    "yaml",
    "tqdm",
    "matplotlib",
    "pytest",
    "statsmodels",
)


def _cifar10_tarball(folder):
    """A tar.gz laid out like the JPEG copy of CIFAR-10 (cifar10-jpeg/{train,test}/<class>/NNNN.jpg),
    of generated 8 x 8 images."""
    import tarfile

    from augdefense.gpucheck.cifar import generated_imagefolder

    generated_imagefolder(folder / "cifar10-jpeg", 8)
    with tarfile.open(folder / "cifar10-jpeg.tar.gz", "w:gz") as archive:
        archive.add(folder / "cifar10-jpeg", arcname="cifar10-jpeg")
    return folder / "cifar10-jpeg.tar.gz"


def test_gpucheck_runs_on_a_bare_gpu_node_and_names_every_figure(tmp_path):
    fake = tmp_path / "absent"
    for name in NOT_ON_A_BARE_NODE:
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(ABSENT.format(name=name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO / "src")])}
    out = tmp_path / "check"
    tarball = _cifar10_tarball(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "augdefense.gpucheck", str(out), "--tiny", "--cifar10", str(tarball)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpucheck.json").read_text())
    assert all(step["ok"] for step in result["steps"].values()), result["steps"]
    # pytest is missing: the gpu tests are skipped, and the record says why.
    assert result["gpu_tests"] is None and "pytest is not importable" in result["steps"]["gpu tests"]["skipped"]
    assert [r["defense"] for r in result["throughput"]] == list(DEFENSES)  # DP-InstaHide's Laplace row among them
    assert all(r["images_per_s"] > 0 for r in result["throughput"])
    assert [c["processes"] for c in result["concurrency"]] == [1, 2]
    assert result["crafting"]["seconds_per_iteration"] >= 0 and result["pipeline"]["device"] == "cpu"
    assert set(result["costs"]["training_seconds_per_image"]) == set(DEFENSES) and result["costs"]["failed"] == []
    assert result["data_path"]["rows"][0]["ms_per_image"] > 0
    cifar = result["cifar10"]
    assert (
        cifar["data"] == "the JPEG copy of CIFAR-10 (cifar10-jpeg.tar.gz)" and cifar["spec"]["source"] == "imagefolder"
    )
    assert (cifar["n_train"], cifar["n_test"], cifar["epochs"]) == (400, 100, 2)
    rows = {r["defense"]: r for r in cifar["rows"]}
    assert set(rows) == {"none", "cutmix"}
    assert (rows["none"]["paper_poison_success"], rows["cutmix"]["paper_poison_success"]) == (0.983, 0.141)
    for row in rows.values():
        assert 0 <= row["poison_success"] <= 1 and 0 <= row["clean_acc"] <= 1 and row["images_per_s"] > 0
    summary = (out / "gpucheck.md").read_text()
    for figure in (
        "| none | off |",
        "| maxup_cutout | off |",
        "| dpinstahide_k4_s8 | off |",
        "aggregate images/s",
        "runtime.jobs_per_gpu stays 1",
        "Witches' Brew",
        "One victim, one epoch, through jobs.train.train_victim",
        "Streamed data path (16 generated 500 x 375 JPEGs",
        "CIFAR-10 slice, Table 1's 100% column",
        "2 of the recipe's 80 epochs",
        "| none | ",
        "| 98.3% |",
        "| 14.1% |",
        "gpu tests: pytest is not importable",
    ):
        assert figure in summary, figure


def test_the_gpu_tests_run_on_the_cpu_and_only_their_modules_are_collected(tmp_path):
    """The check's pytest step (the one the bare-node run above skips): the tests marked gpu, run on
    the CPU here, from the modules that hold them only."""
    import torch

    from augdefense.gpucheck import checks

    result = checks.gpu_tests(tmp_path, torch.device("cpu"))
    assert result["files"] == ["tests/test_gpu_paths.py"]
    assert result["tests"] >= 7 and result["failures"] == 0 and result["skipped"] == 0, result["output_tail"]


def test_a_failing_step_is_recorded_and_both_files_are_still_written(tmp_path, monkeypatch):
    from augdefense.gpucheck import cli, throughput

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (a stand-in)")

    monkeypatch.setattr(throughput, "training_throughput", broken)
    monkeypatch.setattr(cli, "run", lambda check, *a: check.step("throughput none", broken) or 1 / 0)
    assert cli.main([str(tmp_path), "--tiny"]) == 1
    result = json.loads((tmp_path / "gpucheck.json").read_text())
    assert result["steps"]["throughput none"] == {
        "ok": False,
        "error": "RuntimeError: out of memory (a stand-in)",
        "seconds": 0.0,
    }
    assert result["steps"]["check"]["error"].startswith("ZeroDivisionError")
    markdown = (tmp_path / "gpucheck.md").read_text()
    assert "- throughput none: RuntimeError: out of memory (a stand-in)" in markdown


def test_the_checks_copies_of_the_config_match_config_yaml():
    """The bare node has no YAML reader, so the check carries the config entries it measures."""
    from augdefense.gpucheck.cifar import BACKDOOR_RECIPE, PATCH100, SLICE_DEFENSES

    def within(full, part) -> bool:  # every key of ``part`` as ``full`` has it (full: defaults filled in)
        if isinstance(part, dict):
            return isinstance(full, dict) and all(k in full and within(full[k], v) for k, v in part.items())
        return full == part

    config = grid.load(REPO / "config.yaml")
    for name, spec in DEFENSES.items():
        # MaxUp is timed from its first epoch on (start_epoch 0): the cost of the epochs it draws m times.
        spec = {k: v for k, v in spec.items() if (name, k) != ("maxup_cutout", "start_epoch")}
        assert within(config["defenses"][{"dpsgd_batch": "dpsgd_n1e-2"}.get(name, name)], spec), name
    assert within(config["recipes"]["backdoor"], BACKDOOR_RECIPE)
    assert set(BACKDOOR_RECIPE) >= {"epochs", "milestones", "lr", "batch_size", "crop_pad", "flip", "nesterov"}
    assert within(config["attacks"]["patch100"], PATCH100)
    assert all(within(config["defenses"][name], spec) for name, spec in SLICE_DEFENSES.items())


def test_the_slice_fits_its_epochs_to_the_time_left_and_scales_the_schedule():
    from augdefense.gpucheck.cifar import choose_epochs, scaled_recipe

    rates = {"none": 10_000.0, "cutmix": 10_000.0}  # 10 s per epoch of both victims on 50 000 images
    assert choose_epochs(None, "", 240, rates, 50_000)[0] == 20  # (240 - 2 x 20 s) / 10 s
    assert choose_epochs(None, "", 10_000, rates, 50_000) == (80, "the recipe's")
    assert choose_epochs(None, "", 5, rates, 50_000)[0] == 1
    assert choose_epochs(7, "as given", 5, rates, 50_000) == (7, "as given")
    assert choose_epochs(None, "", 240, {"none": 1.0}, 50_000)[1].startswith("no training rate")
    assert scaled_recipe(80)["milestones"] == [30, 50, 70]
    assert scaled_recipe(20)["milestones"] == [8, 12, 18] and scaled_recipe(20)["epochs"] == 20
    assert scaled_recipe(2)["milestones"] == [1]


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


def _measured(tmp_path, *changes) -> str:
    """A gpucheck.json as a paper-scale run writes it (the numbers made up), edited by ``changes``."""
    per_image = {name: 1e-4 for name in DEFENSES}
    steps = {f"throughput {name}": {"ok": True, "seconds": 1.0} for name in DEFENSES}
    steps["crafting"] = {"ok": True, "seconds": 1.0}
    result = {
        "tiny": False,
        "workload": {"model": {"arch": "resnet18_cifar", "width": 64}, "shape": [3, 32, 32]},
        "steps": steps,
        "costs": {
            "training_seconds_per_image": per_image,
            "crafting_seconds_per_iteration_per_poison": 1e-3,
            "device": "a stand-in GPU",
        },
    }
    for change in changes:
        change(result)
    (tmp_path / "g.json").write_text(json.dumps(result))
    return str(tmp_path / "g.json")


def test_estimate_refuses_a_gpucheck_with_failed_rows_and_names_them(tmp_path, capsys):
    def cutmix_and_crafting_failed(result):
        result["steps"]["throughput cutmix"] = {"ok": False, "error": "RuntimeError: CUDA error", "seconds": 1}
        result["steps"]["crafting"] = {"ok": False, "error": "OutOfMemoryError: 80 GiB", "seconds": 1}
        del result["costs"]["training_seconds_per_image"]["cutmix"]
        result["costs"]["crafting_seconds_per_iteration_per_poison"] = None

    path = _measured(tmp_path, cutmix_and_crafting_failed)
    assert estimate.main([str(REPO / "config.yaml"), "--costs", path]) == 1
    message = capsys.readouterr().err
    assert (
        "throughput cutmix (RuntimeError: CUDA error)" in message and "crafting (OutOfMemoryError: 80 GiB)" in message
    )
    assert "throughput none" not in message

    def an_older_check_without_rows(result):
        del result["steps"]["throughput maxup_cutout"]

    with pytest.raises(ConfigError, match=r"throughput maxup_cutout \(not measured\)"):
        estimate.load_costs(_measured(tmp_path, an_older_check_without_rows), cpu=False)


def test_estimate_prices_laplace_defenses_with_the_measured_laplace_row(tmp_path):
    costs = estimate.load_costs(_measured(tmp_path), cpu=False)
    costs["training_seconds_per_image"]["dpinstahide_k4_s8"] = 5e-4
    noisy = {"type": "mixup", "k": 1, "weights": "equal", "laplace": 8}
    assert estimate.image_cost(noisy, costs, 1.0, 40) == 5e-4
    assert estimate.image_cost({"type": "mixup", "k": 2}, costs, 1.0, 40) == 1e-4
