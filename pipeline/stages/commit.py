"""Commit stage, on the driver: complete videos go to `write_wave` tasks in waves, and the files the tasks wrote
are committed to the Delta tables together, at most once per `write.commit_seconds` and table.

The driver handles references and per-video records only: which blocks hold a video (from `PendingVideos`), the
wave a video goes in, each wave's files and counts. Tracking and Parquet writing run in the tasks, on any node; a
task that dies is retried by Ray, and a wave that fails every retry leaves its videos unrecorded, so the next run
processes them again. After the last commit, `compact_tables` runs compaction and vacuum in workers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.outputs.tables import Changes, Replacement, TableCommitter, compact, replace_files
from pipeline.stages.write import VIDEO_TABLES, VideoOutcome, WaveContext, WaveResult, WaveVideo, write_wave

logger = logging.getLogger(__name__)


@dataclass
class Wave:
    videos: list[WaveVideo] = field(default_factory=list)
    blocks: dict[Any, None] = field(default_factory=dict)   # object references, each once, in arrival order
    frames: int = 0


class RunWriter:
    """Waves of complete videos -> `write_wave` tasks -> batched commits (see the module docstring).

    `on_committed` gets each video's outcome once its rows are committed.
    """

    def __init__(self, context: WaveContext, commit_seconds: float = 10.0, wave_videos: int = 256,
                 wave_frames: int = 20_000, cpus: float = 0.25, max_retries: int = 3,
                 on_committed: Callable[[VideoOutcome], None] = lambda outcome: None):
        import ray

        self.context, self.on_committed = context, on_committed
        self.commit_seconds, self.wave_videos, self.wave_frames = commit_seconds, wave_videos, wave_frames
        self.write_task = ray.remote(write_wave).options(num_cpus=cpus, max_retries=max_retries,
                                                         retry_exceptions=True)
        self.replace_task = ray.remote(replace_files).options(num_cpus=cpus, max_retries=max_retries,
                                                              retry_exceptions=True)
        self.committers = {name: TableCommitter(context.output, name, context.run_id, context.storage_options,
                                                self.replace) for name in VIDEO_TABLES}
        self.wave = Wave()
        self.running: dict[Any, Wave] = {}        # task reference -> its wave
        self.done: list[WaveResult] = []          # finished, not yet committed
        self.failed: list[VideoOutcome] = []      # waves that failed every retry
        self.launched_at = self.committed_at = time.monotonic()
        self.task_seconds = 0.0                   # time the write tasks spent, for the benchmark

    def add(self, video: WaveVideo, blocks: list, frames: int = 0) -> None:
        """A complete video and the blocks that hold its rows."""
        self.wave.videos.append(video)
        self.wave.blocks.update(dict.fromkeys(blocks))
        self.wave.frames += frames
        if len(self.wave.videos) >= self.wave_videos or self.wave.frames >= self.wave_frames:
            self.launch()

    def tick(self) -> None:
        """Launch a wave that waited long enough, collect finished tasks, and commit when it is time."""
        if self.wave.videos and time.monotonic() - self.launched_at >= self.commit_seconds / 2:
            self.launch()
        self.collect(timeout=0)
        if self.done and time.monotonic() - self.committed_at >= self.commit_seconds:
            self.commit()

    def finish(self) -> None:
        """Write and commit everything left."""
        if self.wave.videos:
            self.launch()
        while self.running:
            self.collect(timeout=None)
        self.commit()

    def launch(self) -> None:
        wave, self.wave = self.wave, Wave()
        task = self.write_task.remote(self.context, wave.videos, *wave.blocks)
        self.running[task] = wave
        self.launched_at = time.monotonic()

    def collect(self, timeout: float | None) -> None:
        import ray

        if not self.running:
            return
        ready, _ = ray.wait(list(self.running), num_returns=1 if timeout is None else len(self.running),
                            timeout=timeout)
        for task in ready:
            wave = self.running.pop(task)
            try:
                result = ray.get(task)
            except Exception as exc:   # every retry failed: the videos stay unrecorded and the next run redoes them
                logger.error("a write task for %d videos failed every retry: %s", len(wave.videos), exc)
                message = f"write|{type(exc).__name__}|{str(exc).splitlines()[0][:300] if str(exc) else ''}; " \
                          f"nothing was written, the next run processes it again"
                self.failed += [VideoOutcome(v.video_id, (v.ref or {}).get("uri", v.video_id), 0, 0, 0, message)
                                for v in wave.videos]
                continue
            self.task_seconds += result.seconds
            self.done.append(result)

    def commit(self) -> None:
        """One commit per table for every finished wave, the videos table last."""
        if self.done:
            merged = {name: Changes() for name in VIDEO_TABLES}
            for result in self.done:
                for name in VIDEO_TABLES:
                    merged[name].merge(result.changes[name])
            for name in VIDEO_TABLES:
                self.committers[name].commit(merged[name])
            for result in self.done:
                for outcome in result.outcomes:
                    self.on_committed(outcome)
            logger.info("committed %d videos in %d waves", sum(len(r.outcomes) for r in self.done), len(self.done))
            self.done = []
        for outcome in self.failed:
            self.on_committed(outcome)
        self.failed = []
        self.committed_at = time.monotonic()

    def replace(self, name: str, video_ids: list[str], version: int) -> Replacement:
        """Find and rewrite the files holding earlier rows of `video_ids`, in a worker (it reads table data)."""
        import ray

        return ray.get(self.replace_task.remote(self.context.output, name, video_ids, self.context.run_id, version,
                                                self.context.storage_options))

    @property
    def commits(self) -> int:
        return sum(committer.commits for committer in self.committers.values())


def compact_tables(output: str, names: list[str], storage_options: dict[str, Any] | None, retention_hours: int,
                   orphan_hours: int, cpus: float) -> list[dict[str, Any]]:
    """Compaction and vacuum of each table, in workers, in parallel, each reserving `cpus` (`write.compact_cpus`;
    `pipeline.outputs.tables.compact`)."""
    import ray

    task = ray.remote(compact).options(num_cpus=cpus)
    return ray.get([task.remote(output, name, storage_options, retention_hours, orphan_hours) for name in names])
