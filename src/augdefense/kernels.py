"""The CPU kernels a job runs: their instruction set (ISA) and thread pools, pinned and reported.

Per-seed CPU numbers depend on which kernels the libraries dispatch to, and each chooses from the
CPU it finds: ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions
(``ONEDNN_MAX_CPU_ISA``), MKL's BLAS inside torch (``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``) and the
OpenBLAS of numpy and scipy (``OPENBLAS_CORETYPE``). AVX-512 and AVX2 kernels sum in different
orders, so the same seed gives other bytes on an AVX-512 machine than on an AVX2 one. ``runtime.cpu_isa:
avx2`` caps all five at AVX2, which x86-64 CPUs of the last decade have, whatever the calling
environment asks for: an AVX-512 machine then runs the kernels an AVX2 machine runs. It does
not make two CPU vendors agree (measured: an Intel and an AMD CPU gave one pinned job different
numbers, docs/reproducibility.md). ``native`` (the default: the pin is slower on an AVX-512
machine) leaves the choice to each library and to the caller's variables, which is how one runs
another machine's kernels here. The thread count changes summation order too: a job's pools follow
its ``threads``. And the allocator: a training step frees every buffer it made when it returns, so
glibc hands the heap's top back to the system after each step and the next step faults it in again
(``hold_freed_memory``).

Each library reads its variable once, when it first loads or first computes. The workflow sets them
in its own environment as it starts (the Snakefile), so every job process and the warm worker
inherit them; ``apply`` sets them again in a job's process, which covers a job started by hand while
its kernels are still unloaded, and the sidecar records what the job actually ran with (``report``).
Off x86-64 there is nothing to pin. Torch-free.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

# The setting a process was started with, so a job and the warm worker know it without the config.
SETTING_ENV = "AUGDEFENSE_CPU_ISA"
SETTINGS = ("native", "avx2")
# native: pinning costs 20-30% more CPU time on an AVX-512 machine (docs/reproducibility.md).
DEFAULT = "native"
PINS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
    },
}
VARIABLES = tuple(PINS["avx2"])
# Snakemake sets these to a job's threads; libraries loaded before the job (the warm worker's) ignore them.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# glibc's mallopt parameters (malloc.h) and the values a job sets: blocks up to 32 MiB (glibc's
# largest mmap threshold) come from the heap, and up to 1 GiB of freed heap stays for the next step.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HELD_BYTES = 1 << 30
HEAP_BLOCK_BYTES = 32 << 20
_heap_held = False

log = logging.getLogger(__name__)


def pinnable() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64"}


def pin(setting: str, environ=os.environ) -> None:
    """Set ``environ`` so that a process started with it, or a library loaded after, gets
    ``setting``'s kernels: ``avx2`` overrides what the caller set; ``native`` keeps it (the
    variables are how one runs another machine's kernels here), undoing only an inherited avx2 pin."""
    if setting not in SETTINGS:
        raise ValueError(f"runtime.cpu_isa: {setting!r} is not one of {list(SETTINGS)}")
    if environ.get(SETTING_ENV) == "avx2" and setting != "avx2":
        for name, value in PINS["avx2"].items():
            if environ.get(name) == value:
                del environ[name]
    environ[SETTING_ENV] = setting
    if pinnable():
        environ.update(PINS.get(setting, {}))


def setting_of(params: dict) -> str:
    """A job's setting: its ``runtime.cpu_isa`` param, else the one its process was started with."""
    runtime = params.get("runtime") or {}
    return runtime.get("cpu_isa") or os.environ.get(SETTING_ENV) or DEFAULT


def apply(setting: str, threads: int) -> None:
    """Pin this process's kernels to ``setting`` (effective for a library not yet loaded or, for
    ATen, oneDNN and MKL, not yet used) and its thread pools, loaded or not, to ``threads``."""
    pin(setting)
    hold_freed_memory()
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
        capability = torch.backends.cpu.get_cpu_capability()
        if setting == "avx2" and pinnable() and capability not in ("AVX2", "DEFAULT"):
            log.warning(
                "runtime.cpu_isa is avx2 but this process's ATen kernels were chosen before the pin (%s): "
                "its numbers are those of this machine's kernels",
                capability,
            )


def hold_freed_memory() -> bool:
    """Keep freed memory in this process's heap for reuse instead of returning it to the system after
    each step; True where it took effect (glibc), False elsewhere. glibc raises its thresholds by
    itself only as large blocks are freed, so whether it trims each step depended on which tensors
    outlived a step; fixed thresholds (what MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ set at a
    process's start, here also for the warm worker's children) end that. docs/performance.md."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no such thresholds
        return False
    global _heap_held
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, HELD_BYTES)
    _heap_held = bool(trim_set) and bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES))
    return _heap_held


def report() -> dict:
    """What this process's kernels are: the setting, the variables, ATen's dispatch level and the
    thread pools (OpenBLAS reports the kernels it chose)."""
    from threadpoolctl import threadpool_info

    found = {
        "cpu_isa": os.environ.get(SETTING_ENV),
        "machine": platform.machine(),
        "variables": {name: os.environ.get(name) for name in VARIABLES},
        "heap_held": _heap_held,
        "pools": [
            {key: pool.get(key) for key in ("user_api", "internal_api", "num_threads", "architecture")}
            for pool in threadpool_info()
        ],
    }
    if "torch" in sys.modules:
        import torch

        found.update(aten_capability=torch.backends.cpu.get_cpu_capability(), torch_threads=torch.get_num_threads())
    return found
