"""Memory and CPU of a Ray job's process tree, sampled while it runs: what `posepipe benchmark` reports per role.

Roles come from Ray's process titles (`ray::MapWorker(MapBatches(PoseEstimator))`, `ray::write_wave`, `ray::IDLE`,
...): infer, decode, write (tracking, Parquet, compaction tasks), driver, and ray (Ray's node processes and idle
workers).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from pathlib import Path

logger = logging.getLogger("posepipe.benchmark")

MB = 2**20

PLASMA_USAGE = re.compile(r"Plasma memory usage (\d+) MiB")


def object_store_mb() -> float | None:
    """Bytes in Ray's object store now (plasma usage from the raylet), in MiB; None when Ray cannot say."""
    try:
        import ray
        from ray._private.internal_api import memory_summary

        address = ray.get_runtime_context().gcs_address  # explicit: other Ray instances may run on this machine
        match = PLASMA_USAGE.search(memory_summary(address=address, stats_only=True))
    except Exception as exc:  # a private API: never let its changes break a benchmark
        logger.debug("memory summary unavailable: %s", exc)
        return None
    return float(match.group(1)) if match else None


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # node services with a worker-like title


def process_role(cmdline: list[str]) -> str | None:
    """Ray worker role from its process title (`ray::MapWorker(MapBatches(PoseEstimator))`, `ray::IDLE`, ...).

    None for processes that are not Ray workers (raylet, GCS, dashboard, agents).
    """
    title = " ".join(cmdline)
    if not title.startswith("ray::") or title.startswith(RAY_AGENTS):
        return None
    for role in ("FrameDecoder", "PoseEstimator", "write_wave", "replace_files", "compact", "IDLE"):
        if role in title:
            return role
    return "other"


def wait_for_actors_to_exit(roles: tuple[str, ...] = ("FrameDecoder", "PoseEstimator"), timeout_s: float = 30.0,
                            poll_s: float = 0.1, idle_at_most: int | None = None) -> bool:
    """Wait until no process of this process tree has one of `roles`, and at most `idle_at_most` Ray workers are
    idle (None: any number): the actors and the extra workers of an earlier run are gone.

    Ray kills a finished dataset's actors asynchronously, and a run that started while the previous run's inference
    actor was still exiting would count that actor's memory and CPU as its own. Likewise the workers an earlier run's
    write and compaction tasks started stay idle for a while (Ray keeps as many as the node has CPUs, and the rest
    for `idle_worker_killing_time_threshold_ms`, see `pipeline.stages.plan.init_ray`): a run that starts beside them
    counts them. Returns False, with a warning, when some are still alive after `timeout_s`.
    """
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        alive, idle = [], []
        for child in psutil.Process().children(recursive=True):
            try:
                role = process_role(child.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if role in roles:
                alive.append(child.pid)
            elif role == "IDLE":
                idle.append(child.pid)
        extra_idle = idle if idle_at_most is not None and len(idle) > idle_at_most else []
        if not alive and not extra_idle:
            return True
        if time.monotonic() >= deadline:
            logger.warning("an earlier run's actors (pids %s) or idle workers (pids %s) still alive after %.0f s: "
                           "their memory and CPU count in the next measurement", alive, extra_idle, timeout_s)
            return False
        time.sleep(poll_s)


def read_cpu_wait(pid: int) -> float | None:
    """Seconds the threads of `pid` now alive have spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return total


ROLES = {"PoseEstimator": "infer", "FrameDecoder": "decode", "write_wave": "write", "replace_files": "write",
         "compact": "write", "driver": "driver", "IDLE": "ray", "other": "ray", "node": "ray"}


class ResourceSampler:
    """Samples, in a thread, memory and CPU of the driver's whole process tree, and the object-store use.

    Memory peaks: driver RSS, the sum over Ray workers at one instant, the largest single worker per role, the
    object store. Worker RSS includes pages of the object store a worker has mapped (shared memory), as the OS
    counts them; the private part (RSS less shared pages) is kept too, as the measure of memory that accumulates.

    CPU per role (driver, decode, infer, ray = Ray's node processes and idle workers): CPU seconds (user + system,
    all threads, ended ones included) from the first to the last sample of each process; a process that started
    during the run counts from zero, so actor start-up (imports, model load) is in. CPU seconds per frame barely
    depend on background load, so they compare configurations on a shared machine where wall-clock rates do not.
    `wait_s` is the time live threads were runnable but waiting for a CPU (Linux schedstat, read every
    `wait_interval_s`: one file per thread, and Ray's processes have dozens; threads that ended between reads are
    missed, so it is a lower bound): how much contention held the job back.
    """

    def __init__(self, interval_s: float = 0.25, store_interval_s: float = 1.0, wait_interval_s: float = 2.0):
        import psutil

        self.process = psutil.Process()
        self.interval_s, self.store_interval_s, self.wait_interval_s = interval_s, store_interval_s, wait_interval_s
        self.driver_mb = self.workers_mb = self.workers_anon_mb = 0.0
        self.store_mb: float | None = None
        self.role_mb: dict[str, float] = {}       # largest single process per role
        self.role_private_mb: dict[str, float] = {}  # ... in private memory (no libraries, no object-store pages)
        self.role_sum_mb: dict[str, float] = {}   # largest sum over the role's processes at one instant
        self.role_count: dict[str, int] = {}
        self.job_mb = 0.0                         # driver + decode + inference actors at one instant (JSON only)
        self.workers_peak_by_role_mb: dict[str, float] = {}  # what the workers' peak sum was made of, at that instant
        self.workers_peak_at_s = 0.0              # ... and when, in seconds from the first sample
        self._started = time.monotonic()
        self.cpu: dict[int, tuple[str, tuple[float, float], tuple[float, float]]] = {}  # pid -> role, first, last
        self._first_sample = True
        self._last_store = self._last_wait = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ResourceSampler":
        self.sample()
        self._first_sample = False
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._last_wait = -math.inf  # the last sample reads every thread's wait
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def _track_cpu(self, proc, role: str, read_wait: bool) -> None:
        times = proc.cpu_times()
        last_wait = self.cpu[proc.pid][2][1] if proc.pid in self.cpu else 0.0
        now = (times.user + times.system, (read_cpu_wait(proc.pid) or 0.0) if read_wait else last_wait)
        if proc.pid in self.cpu:
            first = self.cpu[proc.pid][1]
        else:  # there before the run: count from now; started during it: count all of its life
            first = now if self._first_sample else (0.0, 0.0)
        self.cpu[proc.pid] = (role, first, now)

    def sample(self) -> None:
        import psutil

        self.driver_mb = max(self.driver_mb, self.process.memory_info().rss / MB)
        read_wait = time.monotonic() - self._last_wait >= self.wait_interval_s
        if read_wait:
            self._last_wait = time.monotonic()
        self._track_cpu(self.process, "driver", read_wait)
        total = anon = 0.0
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for child in self.process.children(recursive=True):
            try:
                role = process_role(child.cmdline())
                info = child.memory_info() if role else None
                self._track_cpu(child, role or "node", read_wait)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if info is not None:
                total += info.rss / MB
                anon += (info.rss - info.shared) / MB      # private memory: no libraries, no object-store pages
                self.role_mb[role] = max(self.role_mb.get(role, 0.0), info.rss / MB)
                self.role_private_mb[role] = max(self.role_private_mb.get(role, 0.0), (info.rss - info.shared) / MB)
                sums[role] = sums.get(role, 0.0) + info.rss / MB
                counts[role] = counts.get(role, 0) + 1
        for role in sums:
            self.role_sum_mb[role] = max(self.role_sum_mb.get(role, 0.0), sums[role])
            self.role_count[role] = max(self.role_count.get(role, 0), counts[role])
        driver_now = self.process.memory_info().rss / MB
        self.job_mb = max(self.job_mb, driver_now + sums.get("FrameDecoder", 0.0) + sums.get("PoseEstimator", 0.0))
        if total > self.workers_mb:
            self.workers_mb, self.workers_peak_by_role_mb = total, sums
            self.workers_peak_at_s = time.monotonic() - self._started
        self.workers_anon_mb = max(self.workers_anon_mb, anon)
        if time.monotonic() - self._last_store >= self.store_interval_s:
            self._last_store = time.monotonic()
            used = object_store_mb()
            if used is not None:
                self.store_mb = max(self.store_mb or 0.0, used)

    def cpu_seconds(self) -> dict[str, dict[str, float]]:
        """Per role (driver, decode, infer, ray) and in all: CPU seconds, and seconds waiting for a CPU."""
        out: dict[str, dict[str, float]] = {}
        for role, (cpu0, wait0), (cpu1, wait1) in self.cpu.values():
            for key in (ROLES[role], "all"):
                entry = out.setdefault(key, {"cpu_s": 0.0, "wait_s": 0.0})
                entry["cpu_s"] += cpu1 - cpu0
                entry["wait_s"] += max(0.0, wait1 - wait0)
        return out


def format_cpu(cpu: dict[str, dict[str, float]], frames: int) -> str:
    """`CPU ms/frame: infer 48, decode 3, driver 2, ray 4, all 57` for the note column."""
    if not cpu or frames <= 0:
        return ""
    order = [k for k in ("infer", "decode", "write", "driver", "ray", "all") if k in cpu]
    return "CPU ms/frame: " + ", ".join(f"{k} {1e3 * cpu[k]['cpu_s'] / frames:.1f}" for k in order)
