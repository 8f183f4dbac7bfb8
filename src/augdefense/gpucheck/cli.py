"""``python -m augdefense.gpucheck OUT [--tiny]``: run every step, each guarded (a failure is recorded
with its step, a step that cannot run here is recorded as skipped, and the rest go on), then write
``gpucheck.json`` and ``gpucheck.md`` whatever happened."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from augdefense.gpucheck.checks import Skipped, crafting_iteration, data_path, gpu_tests, pipeline_epoch
from augdefense.gpucheck.report import costs, to_markdown
from augdefense.gpucheck.workload import (
    DEFENSES,
    PAPER,
    TINY,
    Workload,
    check_device,
    device_info,
    matmul_tflops,
    training_flops_per_image,
)

# The paper-scale check's time budget (seconds): the compiled throughput rows are skipped once
# COMPILE_SHARE of it is spent, and the CIFAR-10 slice, the last step, trains for what is left less
# REPORT_RESERVE. One `make gpu-check` stays under 9 minutes on the card it runs on.
BUDGET_SECONDS = 510
COMPILE_SHARE = 0.5
REPORT_RESERVE = 15


class Check:
    """The result being built, and the guard each step runs under. After each step the files are
    rewritten with what there is, so a check killed by a time limit still leaves its results."""

    def __init__(self, tiny: bool, folder: Path | None = None) -> None:
        self.start = time.monotonic()
        self.folder = folder
        self.result: dict = {"tiny": tiny, "steps": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def step(self, name: str, fn, *args, **kwargs):
        """Run one part; its failure or skip is recorded, not fatal, so the summary shows what did run."""
        t0 = time.monotonic()
        record: dict = {"ok": True}
        value = None
        try:
            value = fn(*args, **kwargs)
        except Skipped as why:
            record["skipped"] = str(why)
        except Exception as exc:  # recorded in the summary, with the step that raised it
            record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.result["steps"][name] = {**record, "seconds": round(time.monotonic() - t0, 1)}
        if self.folder is not None:
            write(self, self.folder)
        return value


def run(check: Check, folder: Path, budget_seconds: float, cifar10: Path | None, cifar_epochs: int | None) -> dict:
    from augdefense.gpucheck.cifar import cifar10_slice
    from augdefense.gpucheck.throughput import concurrent_throughput, training_throughput

    result, step = check.result, check.step
    folder.mkdir(parents=True, exist_ok=True)
    device = check_device()
    work = Workload(**(TINY if result["tiny"] else PAPER))
    result["workload"] = asdict(work)
    result["environment"] = step("environment", device_info, device) or {"device": str(device)}
    result["bf16_matmul_tflops"] = peak = step("peak", matmul_tflops, device)
    result["training_flops_per_image"] = flops = step("flops", training_flops_per_image, work.model, work.shape, device)
    rows = result["throughput"] = []
    for name, spec in DEFENSES.items():
        row = step(f"throughput {name}", training_throughput, work, spec, device, False)
        rows.append({"defense": name, "compile": False, **(row or {"failed": True})})
    for name in work.compiled:
        if check.elapsed() > budget_seconds * COMPILE_SHARE:
            rows.append({"defense": name, "compile": True, "skipped": "time budget"})
            continue
        row = step(f"throughput {name} compiled", training_throughput, work, DEFENSES[name], device, True)
        rows.append({"defense": name, "compile": True, **(row or {"failed": True})})
    result["concurrency"] = [
        step(f"concurrency k={k}", concurrent_throughput, work, k, device) for k in work.concurrency
    ]
    result["crafting"] = step("crafting", crafting_iteration, work, device)
    with tempfile.TemporaryDirectory() as tmp:
        result["pipeline"] = step("pipeline", pipeline_epoch, work, device, Path(tmp))
    result["data_path"] = step("data path", data_path, work)
    result["gpu_tests"] = step("gpu tests", gpu_tests, folder, device)
    rates = {r["defense"]: r.get("images_per_s") for r in rows if not r["compile"]}
    left = budget_seconds - check.elapsed() - REPORT_RESERVE
    result["cifar10"] = step(
        "cifar10 slice",
        cifar10_slice,
        work,
        device,
        cifar10,
        seconds_left=left,
        epochs=cifar_epochs,
        rates=rates,
        flops_per_image=flops,
        peak_tflops=peak,
        tiny=result["tiny"],
    )
    return result


def write(check: Check, folder: Path) -> str:
    """gpucheck.json and gpucheck.md, whatever the run left in the result."""
    from augdefense.io import atomic_path, write_json

    result = check.result
    result["seconds"] = round(check.elapsed(), 1)
    try:
        result["costs"] = costs(result)
    except Exception as exc:
        result["steps"]["costs"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": 0}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "gpucheck.json", result)
    try:
        markdown = to_markdown(result)
    except Exception:
        failed = [f"- {k}: {v.get('error', 'ok')}" for k, v in result["steps"].items()]
        markdown = "# GPU check\n\nThe report could not be rendered:\n\n```\n" + traceback.format_exc() + "```\n\n"
        markdown += "Steps:\n" + "\n".join(failed) + "\n"
    with atomic_path(folder / "gpucheck.md") as tmp:
        tmp.write_text(markdown)
    return markdown


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of epochs")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        from augdefense.gpucheck.throughput import worker

        return worker(*argv[1:])
    import augdefense.gpucheck as package

    parser = argparse.ArgumentParser(
        prog="python -m augdefense.gpucheck",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="folder for gpucheck.json and gpucheck.md")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CI; on the CPU when there is no GPU)")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=BUDGET_SECONDS,
        help="time budget: compiled rows are skipped past half of it; the CIFAR-10 slice fits its epochs to the rest",
    )
    parser.add_argument(
        "--cifar10",
        type=Path,
        help="the JPEG copy of CIFAR-10: cifar10-jpeg.tar.gz or its extracted folder (else torchvision's download)",
    )
    parser.add_argument(
        "--cifar-epochs", type=int, help="train the slice's victims this many epochs (else: fit the budget)"
    )
    args = parser.parse_args(argv)
    check = Check(args.tiny, args.out)
    try:
        run(check, args.out, args.budget_seconds, args.cifar10, args.cifar_epochs)
    except Exception as exc:  # outside any step: still write what there is
        check.result["steps"]["check"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": 0}
    print(write(check, args.out))
    steps_ok = all(s["ok"] for s in check.result["steps"].values())
    return 0 if steps_ok and not (check.result.get("gpu_tests") or {}).get("failures") else 1
