"""The peak resident memory of the calling process itself.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` cannot be used in a child process on Linux: it survives fork and
exec, so a child started by a runner holding 800 MiB reports at least 800 MiB even if it allocates nothing.
``VmHWM`` of ``/proc/self/status`` is the high-water mark of the process's own address space (a new one starts
at exec), so a freshly started child sees only its own peak. That peak still includes the transient memory of its
imports, which can exceed what the measured work adds: :func:`reset_peak` sets the mark to the current size just
before the work, so the peak afterwards is the work's own.
"""

from __future__ import annotations

from pathlib import Path


def own_peak_bytes() -> int:
    """Peak resident set size (``VmHWM``) of this process in bytes, counted from its own exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (peak memory needs Linux)")


def own_rss_bytes() -> int:
    """Resident set size (``VmRSS``) of this process now, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line (memory figures need Linux)")


def reset_peak() -> int:
    """Set this process's peak (``VmHWM``) to its current resident size (Linux: ``5`` into
    ``/proc/self/clear_refs``) and return that size in bytes: the baseline of the work that follows."""
    Path("/proc/self/clear_refs").write_text("5")
    return own_rss_bytes()
