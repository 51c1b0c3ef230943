"""Helpers shared by the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import os
import resource
import time


class OtherLoad:
    """CPU used by *other* processes while timing: busy time in /proc/stat minus this process's own CPU time.

    Other processes competing for the cores (with OpenMP worker threads spinning at barriers) slow small ops far
    more than large ones, which skews ratios; this makes such a run visible in the output.
    """

    def __init__(self, children: bool = False) -> None:
        self.children = children  # count the CPU of this process's (waited-for) children as its own
        self.t0, self.busy0, self.own0 = time.monotonic(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            return float("nan")

    def _own(self) -> float:
        whos = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if self.children else [])
        return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, whos))

    def cores(self) -> float:
        """Average number of cores other processes kept busy since construction."""
        dt = time.monotonic() - self.t0
        return max(0.0, (self._busy() - self.busy0) - (self._own() - self.own0)) / dt if dt > 0 else float("nan")

    def report(self) -> str:
        c = self.cores()
        warn = "  WARNING: other processes competed for the CPU; timings may be skewed, rerun on a quiet machine" \
            if c > 0.25 else ""
        return f"other processes' CPU use during the timings: {c:.2f} cores{warn}"


def _loadavg() -> str:
    """1/5/15-minute load averages: other processes competing for the cores make timings noisy."""
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, after one warm-up call each, timed round-robin ``repeats``
    times (so a slow spell of the machine hits every function alike)."""
    import statistics

    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}
