"""Process settings that make CPU training fast: `trilm bench` applies them (never on import), and they
are there for training scripts and the recipes to call.

glibc's malloc serves every allocation above its mmap threshold (128 KiB at start) with a fresh `mmap`
and gives it back with `munmap` when freed. PyTorch on CPU has no caching allocator, so each activation
of a training step is page-faulted in and zeroed by the kernel again, every step: on the 2-core machine
of docs/results.md a Llama RMSNorm of a (4, 256, 768) float32 tensor took 2.3 ms this way and 0.19 ms with
freed memory kept in the heap, and a GPT-2-small training step 20% less time. `tune_cpu_allocator` keeps
freed memory in the process (as CUDA's caching allocator does), which is also what preloading jemalloc
or tcmalloc achieves. The cost: the process keeps its peak heap instead of returning it to the OS.
"""

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit builds): try larger first.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = (1 << 31) - 1
GLIBC_DEFAULT = 128 * 1024  # both thresholds' start values


def tune_cpu_allocator(keep_freed_memory: bool = True) -> bool:
    """Keep freed CPU memory in the heap instead of unmapping it (Linux with glibc); with
    `keep_freed_memory=False`, go back to glibc's start values (memory already kept stays with the process).
    Returns whether the setting took effect; elsewhere (macOS, Windows, musl) it does nothing and returns False."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mmap_thresholds, trim_threshold = (MMAP_THRESHOLDS, TRIM_THRESHOLD) if keep_freed_memory else ((GLIBC_DEFAULT,), GLIBC_DEFAULT)
    if not any(mallopt(M_MMAP_THRESHOLD, value) == 1 for value in mmap_thresholds):
        return False
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1


@dataclass
class RunArguments:
    """What every training recipe takes besides the libraries' arguments."""

    tune_cpu_allocator: bool = field(default=True, metadata={"help": "on CPU, keep freed memory in the heap (~20%% faster steps)"})


def start_run(tune_allocator: bool, seed: int) -> float:
    """What every recipe does first: keep freed CPU memory in the heap (when asked, and with no GPU), then
    seed everything before any model is built (its initial weights come from the seed). Returns the start
    time, from which the run's `wall_time` is measured."""
    start = time.perf_counter()
    if tune_allocator:
        import torch

        if not torch.cuda.is_available():
            tune_cpu_allocator()
    from transformers import set_seed

    configure_threads()
    set_seed(seed)
    return start


# ------------------------------------------------------------------------------------------ precision
# bf16 on a CPU without bf16 instructions is emulated: measured on 2-core machines of this project, a 512x512
# matmul ran 50x (AMD EPYC, AVX2) to 130x (Xeon capped to AVX2) slower than in float32, and the tiny
# presets' steps 10-15x slower. `trilm` therefore turns bf16 on only where the hardware computes it natively.
BF16_EMULATED_SLOWDOWN = "10-15x (matmuls 50-130x)"


def cpu_capability() -> str:
    """The vector instructions PyTorch's CPU kernels use here: AVX2, AVX512, ... (ATen's own dispatch)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively: on x86, AVX512_BF16 or AMX by CPUID *and* oneDNN
    allowed to use them (oneDNN answers False under ONEDNN_MAX_CPU_ISA=AVX2, where CPUID alone would still
    say yes; without it, oneDNN also says yes on AVX-512 CPUs that only emulate bf16). Elsewhere (Arm),
    oneDNN's own answer."""
    import torch

    def ask(name: str) -> bool:
        query = getattr(torch.cpu, name, None)
        return bool(query()) if query else False

    onednn = onednn_bf16()
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return onednn and (ask("_is_avx512_bf16_supported") or ask("_is_amx_tile_supported"))
    return onednn


def onednn_bf16() -> bool:
    """oneDNN's own answer: may it run bf16 kernels here (within ONEDNN_MAX_CPU_ISA)?"""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_support() -> tuple[bool, str]:
    """(whether bf16 is native on the device a run will use, and why, in words for the run folder)."""
    import torch

    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
        return native, f"cuda {torch.cuda.get_device_name()}: bf16 {'supported' if native else 'not supported'}"
    if torch.backends.mps.is_available():
        return False, "mps: float32 (trilm turns bf16 on only for CUDA GPUs and CPUs with native bf16)"
    native = native_cpu_bf16()
    return native, f"cpu capability {cpu_capability()}, {'native bf16 (AVX512_BF16 or AMX)' if native else 'no native bf16'}"


def resolve_bf16(requested: bool | None) -> tuple[bool, str]:
    """The `bf16` a run uses and why. `requested` None (unset, or `auto`) follows the hardware: bf16 where it is
    native (a CUDA GPU that supports it, a CPU with AVX512_BF16 or AMX), float32 elsewhere. An explicit
    value is kept; bf16 asked for where it is emulated gets a one-line warning."""
    native, why = bf16_support()
    if requested is None:
        return native, f"auto: {why}"
    if requested and not native:
        logger.warning(
            "bf16 true on hardware without native bf16 (%s): it is emulated, and training runs about %s slower than "
            "in float32. Leave bf16 unset (or auto) to follow the hardware.", why, BF16_EMULATED_SLOWDOWN)
    return requested, f"set: {why}"


# ------------------------------------------------------------------------------------------ threads
def physical_cores() -> int:
    """The physical cores this process may run on (its CPU affinity, without SMT siblings where Linux tells)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        cores.add(siblings.read_text().strip() if siblings.is_file() else str(cpu))
    return max(1, len(cores))


def configure_threads() -> int:
    """Use the physical cores for torch's intra-op threads unless OMP_NUM_THREADS says otherwise (or a caller
    already called torch.set_num_threads with fewer). Returns the thread count the run uses."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        cores = physical_cores()
        if torch.get_num_threads() > cores:
            torch.set_num_threads(cores)
    return torch.get_num_threads()


def hardware_record(bf16: bool, bf16_reason: str | None) -> dict:
    """What the run folder records of the machine a run used: precision and why, CPU capability, threads."""
    import torch

    return {"precision": "bf16" if bf16 else "float32", "precision_reason": bf16_reason or "set",
            "cpu_capability": cpu_capability(), "num_threads": torch.get_num_threads()}
