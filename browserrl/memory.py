"""A run's peak memory: the process's resident set and, on CUDA, torch's peak allocation. No dependency
beyond the standard library, so the device check (no browsergym there) and the training path use it alike."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path


def reset_peak_memory() -> None:
    """Start a fresh peak for this run: the runs of a local multirun share one process, so the process-wide
    high-water mark (ru_maxrss) would carry one run's peak into the next."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> dict[str, float]:
    """`peak_rss_mb` of this process since `reset_peak_memory` (VmHWM; ru_maxrss where /proc is missing) and
    `peak_gpu_mb` (torch's peak allocation) on CUDA."""
    status = Path("/proc/self/status")
    match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text()) if status.exists() else None
    if match:
        peak = {"peak_rss_mb": int(match.group(1)) / 1024}
    else:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
