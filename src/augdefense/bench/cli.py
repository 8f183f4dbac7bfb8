"""``python -m augdefense.bench``: run the measurements, write ``bench.json`` and ``bench.md``."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from augdefense import data, kernels
from augdefense.bench.crafting import CRAFT_MODEL_EPOCHS, bench_crafting, crafting_markdown
from augdefense.bench.data_path import IMAGENET_TRAIN_IMAGES, bench_data_path
from augdefense.bench.demo import breakdown_markdown, job_breakdown, overhead_share, run_demo, workflow_timings
from augdefense.bench.training import DEFENSES, EPOCHS, bench_training
from augdefense.io import atomic_path, write_json


def to_markdown(result: dict) -> str:
    m = result["machine"]
    if "training" not in result:  # --demo-only
        machine = f"Machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['when']}."
        return (
            "\n".join(["# augdefense benchmark: the demo", "", machine, "", *breakdown_markdown(result["demo"])]) + "\n"
        )
    lines = [
        "# augdefense benchmark",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads), torch {m['torch']}, "
        f"{m['when']}. Model {result['setup']['model']}, {result['setup']['images']} images of "
        f"{result['setup']['image_shape']}, batch {result['setup']['batch_size']}, median of "
        f"{result['setup']['repeats']} repeats of {EPOCHS} epochs each; reference DataLoader workers: "
        f"{result['setup']['workers']}. The opacus row uses the GroupNorm model in both loops.",
        "",
        "| defense | ours (images/s) | reference (images/s) | ratio |",
        "|---|---|---|---|",
    ]
    for row in result["training"]:
        if "skipped" in row:
            lines.append(f"| {row['defense']} | skipped: {row['skipped']} | | |")
        else:
            lines.append(
                f"| {row['defense']} | {row['ours_images_per_s']} | {row['reference_images_per_s']} | {row['ratio']}× |"
            )
    lines += ["", *crafting_markdown(result["crafting"]), ""]
    dp = result.get("data_path")
    if dp:
        lines += [
            f"Streamed data path: {dp['images']} generated JPEGs of {dp['jpeg_size'][0]} x {dp['jpeg_size'][1]} "
            f"({dp['mean_jpeg_kb']} KiB each on average) decoded to the 224-px centre crop and batched by "
            f"{dp['batch_size']}:",
            "",
            "| DataLoader workers | ms per image |",
            "|---|---|",
            *(f"| {r['workers']} | {r['ms_per_image']} |" for r in dp["rows"]),
            "",
            f"At the best rate, one ImageNet epoch ({IMAGENET_TRAIN_IMAGES} images) spends "
            f"{dp['imagenet_epoch_minutes']} minutes in the data path on this machine.",
            "",
        ]
    wf = result["workflow"]
    if wf.get("last_run_wall_seconds") is not None:
        lines.append(f"Last workflow run in this folder: {wf['last_run_wall_seconds']} s wall time.")
    if wf.get("rules"):
        lines += ["", "| rule | jobs | median s | total s |", "|---|---|---|---|"]
        lines += [
            f"| {r} | {v['jobs']} | {v['median_seconds']} | {v['total_seconds']} |" for r, v in wf["rules"].items()
        ]
    if "demo" in result:
        lines += ["", *breakdown_markdown(result["demo"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import augdefense.bench as package

    parser = argparse.ArgumentParser(
        prog="python -m augdefense.bench",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite uses it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--demo", action="store_true", help="also run the CPU demo from scratch and break its jobs' time down"
    )
    parser.add_argument(
        "--craft-iterations",
        type=int,
        default=None,
        help="gradient-matching iterations per crafting measurement (20; 2 with --tiny)",
    )
    parser.add_argument("--jpegs", type=int, default=512, help="generated JPEGs the data-path measurement decodes")
    parser.add_argument("--demo-only", action="store_true", help="only the demo and its breakdown (implies --demo)")
    parser.add_argument(
        "--no-warm-worker", action="store_true", help="run the demo's jobs each in its own process (for comparison)"
    )
    args = parser.parse_args(argv)
    heap_held = kernels.hold_freed_memory()  # the allocator a job's process runs with
    torch.set_num_threads(args.threads)
    dataset = data.build({"source": "digits", "image_size": 16})
    model_spec = {"arch": "convnet", "width": 32}
    n, repeats, names = (1437, args.repeats, list(DEFENSES)) if not args.tiny else (256, 1, ["none", "mixup k=2"])
    workers = 0 if args.tiny else args.workers
    craft_iterations = args.craft_iterations or (2 if args.tiny else 20)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "heap_held": heap_held,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    result = (
        {"machine": machine}
        if args.demo_only
        else {
            "machine": machine,
            "setup": {
                "model": "convnet width 32",
                "images": n,
                "image_shape": list(dataset.image_shape),
                "batch_size": 128,
                "repeats": repeats,
                "workers": workers,
            },
            "training": bench_training(dataset, model_spec, n, 128, repeats, workers, names),
            "crafting": bench_crafting(
                dataset, model_spec, craft_iterations, repeats, model_epochs=0 if args.tiny else CRAFT_MODEL_EPOCHS
            ),
            "data_path": bench_data_path(
                16 if args.tiny else args.jpegs, [0] if args.tiny else sorted({0, 1, os.cpu_count() or 1})
            ),
            "workflow": workflow_timings(Path(".")),
        }
    )
    if args.demo or args.demo_only:
        workdir = Path("scratch") / "bench-demo"
        demo = run_demo(workdir, warm_worker=not args.no_warm_worker)
        result["demo"] = {**demo, "breakdown": job_breakdown(workdir)}
        result["demo"]["overhead_share"] = overhead_share(result["demo"])
    out = Path(args.out)
    write_json(out / "bench.json", result)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(to_markdown(result))
    print(to_markdown(result))
    return 0
