"""``make gpu-check``: what the paper-scale run costs on this machine's GPU, and whether its CUDA
paths work, in one short run on a bare GPU node (torch, torchvision, numpy, pandas, matplotlib,
scikit-learn, pyyaml, tqdm and pytest; no snakemake, no opacus, no dataset: CIFAR-shaped synthetic
data). From a checkout:

    PYTHONPATH=src python3 -m augdefense.gpucheck results/gpucheck          # on a GPU node
    PYTHONPATH=src python3 -m augdefense.gpucheck results/gpucheck --tiny   # any machine, minutes

It writes ``gpucheck.json`` and ``gpucheck.md`` into the folder given:

- the tests marked ``gpu`` (bf16 against fp32, channels-last, GPU locks, a killed and resumed
  training, crafting on the device), through pytest;
- the paper-recipe ResNet-18 victim's training throughput (images/s, batch 128, AMP and
  channels-last on) under none, mixup, CutMix, MaxUp-cutout and batch DP-SGD, with ``compile``
  off and on, and its share of the card's measured bf16 matrix-product rate (model FLOPs per image
  counted by torch's FlopCounterMode);
- the aggregate throughput of k = 1, 2, 4 training processes sharing the GPU;
- one Witches' Brew crafting iteration at paper scale (500 poisons, ResNet-18);
- one victim trained for one epoch through the real job function (``jobs.train.train_victim``);
- the streamed ImageFolder data path (``data.storage: stream``, Table 3): milliseconds per
  ImageNet-sized JPEG decoded by 0, 8 and all-cores DataLoader workers (``bench.bench_data_path``).

``--tiny`` does all of it at a toy size (ConvNet, 8x8 images, k = 1, 2, no compile), on the CPU
when there is no GPU (the gpu tests then run on the CPU): CI runs it so it cannot rot.
``augdefense.estimate`` reads the JSON's per-image costs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import; per-epoch bars would drown the log

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# The paper-scale workload, and the toy one CI runs.
PAPER = {
    "model": {"arch": "resnet18_cifar", "width": 64},
    "shape": (3, 32, 32),
    "images": 12800,
    "epochs": 3,
    "batch": 128,
    "poisons": 500,
    "craft_batch": 512,
    "concurrency": (1, 2, 4),
    "compile": (False, True),
    "jpegs": 2048,
    "loader_workers": (0, 8, os.cpu_count() or 1),
}
TINY = {
    "model": {"arch": "convnet", "width": 8},
    "shape": (1, 8, 8),
    "images": 512,
    "epochs": 2,
    "batch": 128,
    "poisons": 16,
    "craft_batch": 16,
    "concurrency": (1, 2),
    "compile": (False,),
    "jpegs": 16,
    "loader_workers": (0,),
}
# The defenses whose training cost the estimate needs, as config.yaml writes them.
DEFENSES = {
    "none": {"type": "none"},
    "mixup": {"type": "mixup", "k": 2, "alpha": 1.0},
    "cutmix": {"type": "cutmix", "alpha": 1.0, "p": 0.5},
    "maxup_cutout": {"type": "maxup", "m": 4, "start_epoch": 0, "inner": {"type": "cutout", "size": 16}},
    "dpsgd_batch": {"type": "dpsgd_batch", "clip": 1.0, "noise": 1e-2},
}
RECIPE = {
    "milestones": [],
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "crop_pad": 4,
    "flip": True,
}
GOAL_SHARE_OF_PEAK = 0.10  # the README's goal: the victim at >= 10% of the card's bf16 rate in model FLOPs


@dataclass
class Workload:
    model: dict
    shape: tuple
    images: int
    epochs: int
    batch: int
    poisons: int
    craft_batch: int
    concurrency: tuple
    compile: tuple
    jpegs: int
    loader_workers: tuple


def synthetic(shape: tuple, n: int, classes: int = 10, seed: int = 0):
    """A CIFAR-shaped dataset of random uint8 images and labels (``data.Dataset``)."""
    from augdefense.data import Dataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    test = torch.randint(0, 256, (max(n // 5, classes), *shape), generator=g, dtype=torch.uint8)
    return Dataset(
        images,
        labels,
        test,
        torch.arange(len(test)) % classes,
        [str(c) for c in range(classes)],
        torch.full((shape[0],), 0.5),
        torch.full((shape[0],), 0.25),
    )


def device_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=[props.major, props.minor],
            multiprocessors=props.multi_processor_count,
        )
    return info


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float | None:
    """The card's measured bf16 matrix-product rate (TFLOP/s): the peak the training rate is held against."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def training_flops_per_image(model_spec: dict, shape: tuple, device: torch.device) -> float:
    """Model FLOPs of one training image (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from augdefense import models

    model = models.build(model_spec, shape[0], 10, shape[-1]).to(device)
    x = torch.randn(8, *shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def training_throughput(
    work: Workload,
    defense: dict,
    device: torch.device,
    compile_model: bool,
    seed: int = 0,
    barrier: tuple[Path, Path] | None = None,
) -> dict:
    """Images/s of the victim's training loop (``training.train``): a first epoch pays for warm-up
    and compilation, then the median epoch of the rest. With ``barrier`` (ready, go): after the first
    epoch, create ``ready`` and wait for ``go``, so concurrent processes time the same window."""
    from augdefense import defenses, models
    from augdefense.training import Normalizer, Recipe, train

    dataset = synthetic(work.shape, work.images, seed=seed)
    model = models.build(work.model, work.shape[0], 10, work.shape[-1])
    normalizer = Normalizer(dataset.mean, dataset.std)
    built = defenses.build(defense, 10, seed=seed, data_mean=dataset.mean)
    amp = device.type == "cuda"

    def epochs(n: int) -> list[float]:
        recipe = Recipe.from_spec({**RECIPE, "epochs": n, "batch_size": work.batch})
        history = train(
            model,
            dataset.train_images,
            dataset.train_labels,
            built,
            recipe,
            normalizer,
            device,
            seed,
            amp=amp,
            compile_model=compile_model,
        )
        return [h["seconds"] for h in history]

    first = epochs(1)[0]
    if barrier is not None:
        ready, go = barrier
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
    started = time.time()
    seconds = epochs(work.epochs - 1)
    return {
        "images_per_s": work.images / statistics.median(seconds),
        "first_epoch_s": first,
        "epoch_s": seconds,
        "started": started,
        "finished": time.time(),
        "images": work.images * len(seconds),
    }


def concurrent_throughput(work: Workload, k: int, device: torch.device) -> dict:
    """k training processes (defense none) on one device, timed over the same window: the aggregate
    images/s is all their images over the window from the first start to the last finish."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        ready = [Path(tmp) / f"{i}.json" for i in range(k)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "augdefense.gpucheck",
                    "--worker",
                    str(out),
                    str(go),
                    json.dumps(asdict(work)),
                    str(device),
                ],
                env=os.environ.copy(),
            )
            for out in ready
        ]
        while not all(Path(f"{r}.ready").exists() for r in ready):
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"a concurrent training process failed (k = {k})")
            time.sleep(0.05)
        go.touch()
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"a concurrent training process failed (k = {k})")
        runs = [json.loads(r.read_text()) for r in ready]
    window = max(r["finished"] for r in runs) - min(r["started"] for r in runs)
    return {
        "processes": k,
        "aggregate_images_per_s": sum(r["images"] for r in runs) / window,
        "per_process_images_per_s": [r["images_per_s"] for r in runs],
    }


def _worker(out: str, go: str, work_json: str, device: str) -> int:
    """One of the concurrent training processes (``python -m augdefense.gpucheck --worker ...``)."""
    work = Workload(**json.loads(work_json))
    if device == "cpu":
        torch.set_num_threads(1)  # k processes on a few cores: no oversubscription
    result = training_throughput(
        work, DEFENSES["none"], torch.device(device), False, barrier=(Path(f"{out}.ready"), Path(go))
    )
    Path(out).write_text(json.dumps(result))
    return 0


def crafting_iteration(work: Workload, device: torch.device) -> dict:
    """Seconds of one Witches' Brew iteration (all poisons, one restart) on the paper's model: the
    difference between brewing 3 and 1 iterations, halved, so set-up is not counted."""
    from augdefense import models
    from augdefense.attacks.base import CraftingContext
    from augdefense.attacks.gradient_matching import brew
    from augdefense.training import Normalizer

    dataset = synthetic(work.shape, work.poisons + 1)
    model = models.build(work.model, work.shape[0], 10, work.shape[-1]).to(device).eval()
    context = CraftingContext(model, Normalizer(dataset.mean, dataset.std).to(device), device)
    images = dataset.train_images[: work.poisons].float() / 255
    labels = dataset.train_labels[: work.poisons]
    target = dataset.test_images[:1].float() / 255

    def timed(iterations: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        brew(
            context,
            images,
            labels,
            target,
            1,
            eps=16 / 255,
            iterations=iterations,
            restarts=1,
            batch_size=work.craft_batch,
            shift=4,
            flip=True,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed(1)  # warm-up
    one, three = timed(1), timed(3)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"poisons": work.poisons, "seconds_per_iteration": max(three - one, 0.0) / 2, "peak_memory_gib": peak}


def pipeline_epoch(work: Workload, device: torch.device, folder: Path) -> dict:
    """One victim for one epoch through the real job functions: a synthetic prepared dataset, a
    patch poison crafted by ``jobs.craft``, trained by ``jobs.train.train_victim``."""
    from augdefense.io import save_tensors
    from augdefense.jobs.craft import craft_poison
    from augdefense.jobs.train import TrainingJob, train_victim

    data = folder / "data.pt"
    save_tensors(data, synthetic(work.shape, work.images).to_dict())
    craft_poison(
        data=str(data),
        attack_name="patch",
        attack={"type": "patch", "recipe": "r", "patch_size": 4},
        seed=0,
        out=str(folder / "poison.pt"),
    )
    job = TrainingJob(
        data=str(data),
        poison=str(folder / "poison.pt"),
        model=work.model,
        seed=0,
        recipe={**RECIPE, "epochs": 1, "batch_size": work.batch},
        runtime={"device": device.type, "amp": device.type == "cuda"},
    )
    start = time.perf_counter()
    record = train_victim(job, attack="patch", out=str(folder / "run.json"))
    return {
        "seconds": time.perf_counter() - start,
        "train_seconds": record["train_seconds"],
        "device": record["device"],
        "clean_acc": record["clean_acc"],
    }


def gpu_tests(folder: Path, device: torch.device) -> dict:
    """The tests marked ``gpu`` (on the CPU when there is no GPU), through pytest."""
    import xml.etree.ElementTree as ET

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}
    if device.type != "cuda":
        env["AUGDEFENSE_GPU_TESTS_ON_CPU"] = "1"
    report = folder / "gpu-tests.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(repo / "tests"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [
        c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None
    ]
    return {
        "tests": int(suite.get("tests")),
        "failures": int(suite.get("failures")) + int(suite.get("errors")),
        "skipped": int(suite.get("skipped")),
        "failed": failed,
        "exit_code": done.returncode,
        "output_tail": done.stdout[-2000:],
    }


def run(folder: Path, tiny: bool, budget_seconds: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    work = Workload(**(TINY if tiny else PAPER))
    start = time.monotonic()
    result: dict = {"tiny": tiny, "workload": asdict(work), "environment": device_info(device), "steps": {}}

    def step(name: str, fn, *args):
        """Run one part; a failure is recorded, not fatal, so the summary shows what did run."""
        t0 = time.monotonic()
        try:
            value = fn(*args)
            result["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - t0, 1)}
            return value
        except Exception as exc:  # recorded in the summary, with the step that raised it
            result["steps"][name] = {
                "ok": False,
                "seconds": round(time.monotonic() - t0, 1),
                "error": f"{type(exc).__name__}: {exc}",
            }
            return None

    result["bf16_matmul_tflops"] = step("peak", matmul_tflops, device)
    result["training_flops_per_image"] = step("flops", training_flops_per_image, work.model, work.shape, device)
    result["gpu_tests"] = step("gpu tests", gpu_tests, folder, device)
    rows = []
    for compile_model in work.compile:
        for name, spec in DEFENSES.items():
            if compile_model and time.monotonic() - start > budget_seconds * 0.6:
                rows.append({"defense": name, "compile": True, "skipped": "time budget"})
                continue
            row = step(
                f"throughput {name} compile={compile_model}", training_throughput, work, spec, device, compile_model
            )
            rows.append({"defense": name, "compile": compile_model, **(row or {"failed": True})})
    result["throughput"] = rows
    result["concurrency"] = [
        step(f"concurrency k={k}", concurrent_throughput, work, k, device) for k in work.concurrency
    ]
    result["crafting"] = step("crafting", crafting_iteration, work, device)
    with tempfile.TemporaryDirectory() as tmp:
        result["pipeline"] = step("pipeline", pipeline_epoch, work, device, Path(tmp))
    from augdefense.bench import bench_data_path

    result["data_path"] = step("data path", bench_data_path, work.jpegs, sorted(set(work.loader_workers)))
    result["seconds"] = round(time.monotonic() - start, 1)
    result["costs"] = costs(result)
    return result


def costs(result: dict) -> dict:
    """Per-image training seconds per defense (compile off, one process) and the seconds of one
    crafting iteration per poison: what ``augdefense.estimate`` multiplies by a grid's sizes."""
    per_image = {
        r["defense"]: 1 / r["images_per_s"] for r in result["throughput"] if not r["compile"] and r.get("images_per_s")
    }
    crafting = result.get("crafting") or {}
    per_poison = crafting.get("seconds_per_iteration", 0) / crafting["poisons"] if crafting else None
    best = max((c["aggregate_images_per_s"] for c in result["concurrency"] if c), default=None)
    one = next((c["aggregate_images_per_s"] for c in result["concurrency"] if c and c["processes"] == 1), None)
    return {
        "training_seconds_per_image": per_image,
        "crafting_seconds_per_iteration_per_poison": per_poison,
        "concurrency_gain": best / one if best and one else None,
        "device": result["environment"].get("name", result["environment"]["device"]),
    }


def to_markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# GPU check ({'tiny' if result['tiny'] else 'paper scale'})",
        "",
        f"Device: {env.get('name', env['device'])}; torch {env['torch']}, CUDA {env['cuda']}, "
        f"Python {env['python']}; {result['seconds']} s in all.",
        "",
    ]
    peak, flops = result.get("bf16_matmul_tflops"), result.get("training_flops_per_image")
    if peak:
        lines.append(f"Measured bf16 matrix-product rate: {peak:.0f} TFLOP/s.")
    if flops:
        lines.append(f"Model FLOPs per training image (forward + backward, counted): {flops / 1e9:.3g} GFLOP.")
    tests = result.get("gpu_tests") or {}
    lines += [
        "",
        f"Tests marked gpu: {tests.get('tests', '?')} run, {tests.get('failures', '?')} failed, "
        f"{tests.get('skipped', '?')} skipped" + (f" ({', '.join(tests['failed'])})" if tests.get("failed") else ""),
        "",
        "| defense | compile | images/s | share of the bf16 rate | first epoch (s) |",
        "|---|---|---|---|---|",
    ]
    for r in result["throughput"]:
        if "images_per_s" not in r:
            lines.append(f"| {r['defense']} | {'on' if r['compile'] else 'off'} | {r.get('skipped', 'failed')} | | |")
            continue
        share = f"{100 * r['images_per_s'] * flops / (peak * 1e12):.1f}%" if peak and flops else "–"
        lines.append(
            f"| {r['defense']} | {'on' if r['compile'] else 'off'} | {r['images_per_s']:.0f} | {share} | "
            f"{r['first_epoch_s']:.1f} |"
        )
    lines += ["", "| training processes on the device | aggregate images/s | per process |", "|---|---|---|"]
    for c in result["concurrency"]:
        if c:
            per = ", ".join(f"{v:.0f}" for v in c["per_process_images_per_s"])
            lines.append(f"| {c['processes']} | {c['aggregate_images_per_s']:.0f} | {per} |")
    if result.get("crafting"):
        c = result["crafting"]
        lines += [
            "",
            f"Witches' Brew: {c['seconds_per_iteration']:.3f} s per iteration for {c['poisons']} poisons"
            + (f" (peak memory {c['peak_memory_gib']:.1f} GiB)." if c["peak_memory_gib"] else "."),
        ]
    if result.get("pipeline"):
        p = result["pipeline"]
        lines += [
            "",
            f"One victim, one epoch, through jobs.train.train_victim on {p['device']}: {p['seconds']:.1f} s "
            f"({p['train_seconds']:.1f} s training).",
        ]
    if result.get("data_path"):
        d = result["data_path"]
        rates = ", ".join(f"{r['ms_per_image']} ms with {r['workers']} workers" for r in d["rows"])
        lines += [
            "",
            f"Streamed data path ({d['images']} generated {d['jpeg_size'][0]} x {d['jpeg_size'][1]} JPEGs to the "
            f"224-px centre crop): {rates} per image; one ImageNet epoch at the best rate: "
            f"{d['imagenet_epoch_minutes']} min.",
        ]
    if peak and flops:
        best = max((c["aggregate_images_per_s"] for c in result["concurrency"] if c), default=0)
        goal = GOAL_SHARE_OF_PEAK * peak * 1e12 / flops
        lines += [
            "",
            f"Goal: >= {100 * GOAL_SHARE_OF_PEAK:.0f}% of the bf16 rate in model FLOPs, i.e. >= {goal:.0f} "
            f"images/s with the best k; measured {best:.0f} ({'met' if best >= goal else 'not met'}).",
        ]
    failed = {k: v["error"] for k, v in result["steps"].items() if not v["ok"]}
    if failed:
        lines += ["", "Steps that failed:"] + [f"- {k}: {v}" for k, v in failed.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(*argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m augdefense.gpucheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder for gpucheck.json and gpucheck.md")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CI; on the CPU when there is no GPU)")
    parser.add_argument(
        "--budget-seconds", type=float, default=420, help="compiled runs are skipped once 60%% of this is spent"
    )
    args = parser.parse_args(argv)
    result = run(args.out, args.tiny, args.budget_seconds)
    from augdefense.io import write_json

    write_json(args.out / "gpucheck.json", result)
    markdown = to_markdown(result)
    (args.out / "gpucheck.md").write_text(markdown)
    print(markdown)
    return (
        0 if all(s["ok"] for s in result["steps"].values()) and not (result["gpu_tests"] or {}).get("failures") else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
