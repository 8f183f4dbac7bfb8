"""The check's summary: the per-image costs ``augdefense.estimate`` prices a grid with, and the
markdown report (written whatever failed: each part reports what it has)."""

from __future__ import annotations

GOAL_SHARE_OF_PEAK = 0.10  # the goal: the victim at >= 10% of the card's bf16 rate in model FLOPs


def costs(result: dict) -> dict:
    """Per-image training seconds per defense (compile off, one process) and the seconds of one
    crafting iteration per poison: what ``augdefense.estimate`` multiplies by a grid's sizes. The
    measurements that failed are named in ``failed``; the estimate refuses a file that has any."""
    rows = [r for r in result.get("throughput") or [] if not r["compile"]]
    per_image = {r["defense"]: 1 / r["images_per_s"] for r in rows if r.get("images_per_s")}
    failed = [f"throughput {r['defense']}" for r in rows if not r.get("images_per_s")]
    crafting = result.get("crafting") or {}
    per_poison = crafting["seconds_per_iteration"] / crafting["poisons"] if crafting else None
    if per_poison is None:
        failed.append("crafting")
    concurrency = [c for c in result.get("concurrency") or [] if c]
    best = max((c["aggregate_images_per_s"] for c in concurrency), default=None)
    one = next((c["aggregate_images_per_s"] for c in concurrency if c["processes"] == 1), None)
    env = result.get("environment") or {}
    return {
        "training_seconds_per_image": per_image,
        "crafting_seconds_per_iteration_per_poison": per_poison,
        "concurrency_gain": best / one if best and one else None,
        "device": env.get("name", env.get("device", "?")),
        "failed": failed,
    }


def to_markdown(result: dict) -> str:
    """The report; a part whose step failed is left out (the failures are listed at the end)."""
    env = result.get("environment") or {}
    lines = [
        f"# GPU check ({'tiny' if result.get('tiny') else 'paper scale'})",
        "",
        f"Device: {env.get('name', env.get('device', '?'))}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, "
        f"Python {env.get('python', '?')}; {env.get('date', '?')}; {result.get('seconds', '?')} s in all.",
        "",
    ]
    peak, flops = result.get("bf16_matmul_tflops"), result.get("training_flops_per_image")
    if peak:
        lines.append(f"Measured bf16 matrix-product rate: {peak:.0f} TFLOP/s.")
    if flops:
        lines.append(f"Model FLOPs per training image (forward + backward, counted): {flops / 1e9:.3g} GFLOP.")
    lines += _tests(result)
    lines += _throughput(result, peak, flops)
    lines += _concurrency(result)
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
    lines += cifar10_markdown(result.get("cifar10"))
    if peak and flops:
        best = max((c["aggregate_images_per_s"] for c in result.get("concurrency") or [] if c), default=0)
        goal = GOAL_SHARE_OF_PEAK * peak * 1e12 / flops
        lines += [
            "",
            f"Goal: >= {100 * GOAL_SHARE_OF_PEAK:.0f}% of the bf16 rate in model FLOPs, i.e. >= {goal:.0f} "
            f"images/s with the best k; measured {best:.0f} ({'met' if best >= goal else 'not met'}).",
        ]
    steps = result.get("steps") or {}
    skipped = {k: v["skipped"] for k, v in steps.items() if v.get("skipped")}
    failed = {k: v["error"] for k, v in steps.items() if not v["ok"]}
    if skipped:
        lines += ["", "Steps skipped:"] + [f"- {k}: {v}" for k, v in skipped.items()]
    if failed:
        lines += ["", "Steps that failed:"] + [f"- {k}: {v}" for k, v in failed.items()]
    return "\n".join(lines) + "\n"


def _tests(result: dict) -> list[str]:
    tests = result.get("gpu_tests")
    if not tests:
        return []
    named = f" ({', '.join(tests['failed'])})" if tests.get("failed") else ""
    return [
        "",
        f"Tests marked gpu ({', '.join(tests['files'])}): {tests['tests']} run, {tests['failures']} failed, "
        f"{tests['skipped']} skipped{named}",
    ]


def _throughput(result: dict, peak, flops) -> list[str]:
    lines = [
        "",
        "| defense | compile | images/s | share of the bf16 rate | first epoch (s) |",
        "|---|---|---|---|---|",
    ]
    for r in result.get("throughput") or []:
        if "images_per_s" not in r:
            lines.append(f"| {r['defense']} | {'on' if r['compile'] else 'off'} | {r.get('skipped', 'failed')} | | |")
            continue
        share = f"{100 * r['images_per_s'] * flops / (peak * 1e12):.1f}%" if peak and flops else "–"
        lines.append(
            f"| {r['defense']} | {'on' if r['compile'] else 'off'} | {r['images_per_s']:.0f} | {share} | "
            f"{r['first_epoch_s']:.1f} |"
        )
    return lines


def _concurrency(result: dict) -> list[str]:
    rows = [c for c in result.get("concurrency") or [] if c]
    if not rows:
        return []
    lines = [
        "",
        "| runtime.jobs_per_gpu (training processes on the device) | aggregate images/s | per process |",
        "|---|---|---|",
    ]
    for c in rows:
        per = ", ".join(f"{v:.0f}" for v in c["per_process_images_per_s"])
        lines.append(f"| {c['processes']} | {c['aggregate_images_per_s']:.0f} | {per} |")
    best = max(rows, key=lambda c: c["aggregate_images_per_s"])
    one = next((c for c in rows if c["processes"] == 1), None)
    if one:
        gain = best["aggregate_images_per_s"] / one["aggregate_images_per_s"]
        lines += [
            "",
            f"Most images/s with k = {best['processes']} ({gain:.2f}x one process). The default "
            "runtime.jobs_per_gpu stays 1 until a measured run on the card the grid runs on says otherwise.",
        ]
    return lines


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def cifar10_markdown(c: dict | None) -> list[str]:
    if not c:
        return []
    epochs = (
        f"{c['epochs']} epochs (the recipe's)"
        if c["epochs"] >= c["recipe_epochs"]
        else f"{c['epochs']} of the recipe's {c['recipe_epochs']} epochs ({c['epochs_reason']}; learning-rate "
        f"drops after epochs {c['milestones']}), fewer than the paper's"
    )
    lines = [
        "",
        f"CIFAR-10 slice, Table 1's 100% column (every training image of the target class patched, "
        f"{c['attack']['patch_size']} px patch): {c['data']}, {c['n_train']} training and {c['n_test']} test "
        f"images ({c['load_seconds']} s to load and craft); {c['model']['arch']} width {c['model'].get('width')}, "
        f"the backdoor recipe for {epochs}; one seed ({c['seed']}). Paper: DP-InstaHide, Table 1.",
        "",
        "| defense | backdoor success | paper | clean accuracy | paper | images/s | MFU | seconds per victim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in c["rows"]:
        rate = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "–"
        lines.append(
            f"| {r['defense']} | {_percent(r['poison_success'])} | {_percent(r.get('paper_poison_success'))} | "
            f"{_percent(r['clean_acc'])} | {_percent(r.get('paper_clean_acc'))} | {rate} | {_percent(r.get('mfu'))} | "
            f"{r['victim_seconds']} |"
        )
    lines += [
        "",
        "MFU: model FLOPs per second over the measured bf16 matrix-product rate; images/s over the whole training.",
    ]
    return lines
