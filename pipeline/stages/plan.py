"""Planning a run on a Ray cluster: actor pool sizes that fit its CPUs, GPUs and memory, and the Ray Data plan
(read -> decode actors -> inference actors) that `posepipe run` and the benchmark execute."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)


def is_topdown(meta: dict) -> bool:
    from pipeline.models.blazepose.weights import CHECKPOINT_KIND

    return meta.get("kind") == CHECKPOINT_KIND


def init_ray(config: RunConfig, verbose: bool = True) -> None:
    """Connect to `ray.address`, or start Ray in this process. Not `verbose`: Ray's own log lines (start-up, the
    workers' output, the core worker's notes) stay in Ray's log files, and only its errors show."""
    import ray

    if ray.is_initialized():
        return
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")   # C++ notes of the driver's core worker
    quiet = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    with contextlib.nullcontext() if verbose else native_stderr_to_devnull():
        if config.ray.address:
            ray.init(address=config.ray.address, **quiet)
        else:
            # Ray ends an idle worker after 1 s once a node has more workers than CPUs, actors included, which a
            # run always has: each write wave (one every write.commit_seconds / 2 at most) started a new worker and
            # imported the write stage again, about 2 s of CPU a wave (measured: 20 videos on 2 CPUs, 13 waves in 8
            # or more new processes). Kept for commit_seconds, one worker takes wave after wave; a cluster's nodes
            # set it as RAY_idle_worker_killing_time_threshold_ms (infra/).
            kept_ms = int(config.write.commit_seconds * 1000)
            ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False,
                     _system_config={"idle_worker_killing_time_threshold_ms": kept_ms}, **quiet)


@contextlib.contextmanager
def native_stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while: the core worker announces its log level on stderr as it starts,
    whatever that level is. Python exceptions still propagate; they are raised, not printed."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Pools:
    """The actor pools of a run and what each actor reserves. On a Ray cluster (`ray.address` set), a pool whose
    size the config does not fix starts at its planned size and autoscales (`actor_pool`), so nodes that join during
    a run get actors too; embedded Ray has fixed pools."""
    decode: int                # decode actors (to start with, when autoscaling)
    infer: int                 # inference actors
    decode_cpus: float         # CPUs each decode actor reserves (`decode_cpus`)
    infer_gpus: float          # GPUs each inference actor reserves; 0: inference on CPU
    threads: int | None        # torch threads per inference actor; None: torch's default (GPU actors)
    decode_memory: int = 0     # bytes of Ray `memory` each decode actor reserves
    infer_memory: int = 0      # ... and each inference actor


def pool_sizes(config: RunConfig, input_size: int | None = None, topdown: bool = False) -> Pools:
    """The pools of `config` on the connected Ray cluster (`plan_pools` over its resources)."""
    import ray

    resources = ray.cluster_resources()
    return plan_pools(config, float(resources.get("CPU", 1)), int(resources.get("GPU", 0)),
                      float(resources.get("memory", 0)), input_size, topdown)


def plan_pools(config: RunConfig, cpus: float, gpus: int, memory: float, input_size: int | None = None,
               topdown: bool = False) -> Pools:
    """Pools from config and a cluster's CPUs, GPUs and memory (bytes): one inference actor per GPU (or per
    `model.cpus_per_worker` CPUs left by a quarter of the CPUs decoding), shrunk to fit the memory reservations
    (`actor_memory`; none without `input_size`); a CPU inference actor runs an equal share of all the CPUs as torch
    threads."""
    use_gpu = gpus > 0 and config.model.device in ("auto", "cuda")
    decode = config.decode.workers or max(1, int(cpus) // 4)
    infer = config.model.workers or (gpus if use_gpu else max(1, (int(cpus) - decode)
                                                                // max(1, int(config.model.cpus_per_worker))))
    per_decode, per_infer = actor_memory(config, input_size, topdown)
    decode, infer = fit_memory(decode, infer, per_decode, per_infer, memory)
    infer_gpus = 1.0 if use_gpu else 0.0
    # CPU actors share all the CPUs: decoders and the driver use a fraction of theirs (5.5 and 9 ms a frame against
    # 37 for inference on 2 CPUs), so 2 threads on 2 CPUs ran the pipeline 1.19x faster than the 1 reserved
    threads = config.model.threads or (None if use_gpu else max(1, int(config.model.cpus_per_worker),
                                                                 int(cpus) // infer))
    return Pools(decode, infer, decode_cpus(decode, infer, config, cpus), infer_gpus, threads,
                 per_decode, per_infer)


def memory_bytes(gb: float | None) -> int:
    return int(gb * 2**30) if gb else 0


# Peak memory of one actor, measured with Ray Data's per-operator report on the demo: a decode actor 0.47 GB at
# 1024 px (its frames included), an inference actor 0.33-0.50 GB bottom-up and 2.5 GB top-down (heavy, 32 frames
# of 1024 px, fp32). Reserved with the 25 % headroom Ray asks for, so Ray places actors where they fit.
DECODE_BASE_GB = 0.4
INFER_GB = {False: 1.0, True: 3.5}                 # by topdown
DECODE_BATCHES_HELD = 3                            # the decoder's queue (2 batches) and the one handed on


def actor_memory(config: RunConfig, input_size: int | None, topdown: bool = False) -> tuple[int, int]:
    """Bytes of Ray `memory` each decode and inference actor reserves: `decode.memory_gb` / `model.memory_gb` when
    set, else an estimate for the model kind and the frames in flight; (0, 0) for what is unset when the input size
    is not known (nothing reserved)."""
    decode, infer = memory_bytes(config.decode.memory_gb), memory_bytes(config.model.memory_gb)
    if input_size:
        frames = DECODE_BATCHES_HELD * config.decode.batch_size * input_size * input_size * 3
        decode = decode or int(DECODE_BASE_GB * 2**30) + frames
        infer = infer or int(INFER_GB[topdown] * 2**30)
    return decode, infer


def fit_memory(decode: int, infer: int, per_decode: int, per_infer: int, available: float) -> tuple[int, int]:
    """Shrink the pools until their memory reservations (bytes per actor) fit the cluster: an actor Ray cannot place
    would stay pending and stall the job. Raises ConfigError when not even one actor of each fits."""
    if per_decode + per_infer > available:
        raise ConfigError(f"one decode and one inference actor reserve {per_decode / 2**30:.1f} + "
                          f"{per_infer / 2**30:.1f} GB (decode.memory_gb, model.memory_gb; estimated when unset), but "
                          f"the cluster offers {available / 2**30:.1f} GB of memory to Ray tasks; lower them or add "
                          f"nodes")
    wanted = (decode, infer)
    while decode * per_decode + infer * per_infer > available:
        if infer > 1 and (infer * per_infer >= decode * per_decode or decode == 1):
            infer -= 1
        else:
            decode -= 1
    if (decode, infer) != wanted:
        logger.warning("memory reservations fit %d decode and %d inference actors (asked for %d and %d)",
                       decode, infer, *wanted)
    return decode, infer


def decode_cpus(decode: int, infer: int, config: RunConfig, cpus: float) -> float:
    """CPUs each decode actor reserves: one, or an equal share of what the inference actors (on CPUs or GPUs) and
    the write tasks leave.

    Ray places an actor only where its CPUs are free, so pools that ask for more CPUs than the cluster has leave the
    inference actors pending until decoding ends (measured: 2 decode + 1 inference actor on 2 CPUs ran 3.4
    frames/s instead of 65). Decode actors then share the cores left, and the OS scheduler shares the time.
    Raises ConfigError when the inference actors alone take every CPU.
    """
    # the write tasks (tracking, Parquet) need a share as well: a task that found no free CPU would wait forever;
    # an inference actor reserves its CPUs on a GPU too: its host thread (the person finding's Python loop, NMS,
    # kernel launches) keeps the GPU fed only on a core that decode actors do not also claim
    left = cpus - infer * config.model.cpus_per_worker - config.write.cpus
    if left <= 0:
        raise ConfigError(f"model.workers x model.cpus_per_worker = {infer} x {config.model.cpus_per_worker:g} CPUs "
                          f"take all {cpus:g} CPUs of the cluster and leave none to decode; lower them or add nodes")
    share = min(1.0, left / decode)
    if share < 1.0:
        logger.info("%d decode actors share %.2g CPUs (%.2g each) beside %d inference actors", decode, left,
                       share, infer)
    return share


def actor_pool(size: int, fixed: bool):
    """A pool of `size` actors, or one that starts at `size` and autoscales (at least 1, at most what the cluster's
    free resources hold), so that nodes joining during the run get actors."""
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size) if fixed else ActorPoolStrategy(min_size=1, max_size=None,
                                                                         initial_size=size)


def reference_blocks(refs, decode_actors: int) -> list:
    """The listed videos cut into blocks for the decode actors: a few blocks per actor, so that every actor has work
    and an autoscaled one finds some, at most REFS_PER_BLOCK videos each (a block is what a retry replays)."""
    n = refs.num_rows
    per_block = max(1, min(REFS_PER_BLOCK, -(-n // (4 * max(1, decode_actors)))))
    return [refs.slice(start, per_block) for start in range(0, n, per_block)]


REFS_PER_BLOCK = 64
BLOCK_BYTES = 2**20


def transit_frame_bytes(refs, config: RunConfig, input_size: int, topdown: bool) -> int:
    """Bytes of one decoded frame in the object store, for its budget. The bottom-up net's frames travel
    letterboxed into its square; a top-down model's at their own size, shrunk to fit `model.frame_size`: those of
    the first listed video (one header read, on the driver), the square when its header cannot be read. A larger
    video later in a mixed archive gets fewer batches ahead: Ray Data still lets a batch through that alone is
    over the budget (measured: a budget of half a batch ran the 20-video benchmark at full speed on 2 CPUs)."""
    square = input_size * input_size * 3
    if not topdown or not refs.num_rows:
        return square
    from pipeline.pose.letterbox import Letterbox
    from pipeline.storage import resolve
    from pipeline.video import probe_video

    uri = refs.column("uri")[0].as_py()
    found: dict[str, Any] = {}

    def probe() -> None:
        try:
            fs, path = resolve(uri, config.storage_options)
            with fs.open(path, "rb") as file:
                info = probe_video(file)
            found["box"] = Letterbox.fit(info.width, info.height, input_size, pad=False)
        except Exception as exc:  # the decode actors will report what is wrong with it; the budget falls back
            found["error"] = exc

    # a stalled mount or object store would hold the driver before any work; a daemon thread is left behind instead
    reader = threading.Thread(target=probe, name="posepipe-probe", daemon=True)
    reader.start()
    reader.join(PROBE_TIMEOUT_S)
    if "box" not in found:
        why = found.get("error", f"no answer in {PROBE_TIMEOUT_S:g} s")
        logger.info("object-store budget in %dx%d frames: the header of %s cannot be read (%s)", input_size,
                    input_size, uri, why)
        return square
    return found["box"].resized_width * found["box"].resized_height * 3


PROBE_TIMEOUT_S = 10.0


def build_dataset(refs, config: RunConfig, input_size: int, topdown: bool = False, verbose: bool = True):
    """The Ray Data plan: refs (an Arrow table of listed videos) -> decoded frame batches -> per-person rows.

    Frame batches travel as one row each (`pipeline.stages.batch.pack`), so the inference actor always gets whole
    decoded batches: a top-down model follows people from frame to frame within one, and batches cut elsewhere
    would move where its detector runs.
    """
    import ray

    from pipeline.stages.decode import FrameDecoder
    from pipeline.stages.infer import PoseEstimator

    pools = pool_sizes(config, input_size, topdown)
    logger.info("decode actors %d (%.2g CPUs, %.1f GB each), inference actors %d (%.0f GPUs, %.1f GB each)",
                pools.decode, pools.decode_cpus, pools.decode_memory / 2**30, pools.infer, pools.infer_gpus,
                pools.infer_memory / 2**30)
    # Fault tolerance: a dead actor always restarts and its batch is retried `max_task_retries` times (replayed
    # rows overwrite, see pipeline.stages.assemble); a batch that fails every retry is dropped and its videos get
    # error rows.
    retries = dict(max_restarts=-1, max_task_retries=config.ray.max_task_retries)
    # Ray 2.60 names no parameter for these two, only the deprecated remote-args kwargs; tests/test_faults.py
    # kills actors mid-run, so a Ray that drops them fails there.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    ds = ray.data.from_arrow(reference_blocks(refs, pools.decode))
    ds.context.max_errored_blocks = config.ray.max_failed_batches
    if not verbose:  # posepipe's own progress bar replaces Ray Data's bars and its periodic log lines
        ds.context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    # One block per decoded batch. Ray Data joins a task's outputs into blocks until they pass this size (by
    # default 128 MiB: a long video became one block of all its frames), and never cuts a row; a packed batch (22 MB
    # at 640x360) is larger, so each leaves the decoder on its own and the object-store bound below applies batch by
    # batch. Person rows, a few KB per frame, still leave an inference call as one block.
    ds.context.target_max_block_size = BLOCK_BYTES
    if config.ray.buffered_batches:  # bound frames waiting in the object store: memory set by config, not archive
        frame_bytes = transit_frame_bytes(refs, config, input_size, topdown)
        limit = config.ray.buffered_batches * (pools.decode + pools.infer) * config.decode.batch_size * frame_bytes
        logger.info("object-store budget %.0f MB (ray.buffered_batches %d per actor, frames of %.2f MB)",
                    limit / 2**20, config.ray.buffered_batches, frame_bytes / 2**20)
        limits = ds.context.execution_options.resource_limits
        ds.context.execution_options.resource_limits = limits.copy(object_store_memory=limit)
    # Pools autoscale on a cluster, which can grow; Ray embedded in this process cannot, and there a pool that grew
    # into the CPUs another stage just freed would oversubscribe them (torch threads are set per actor at start).
    grows = config.ray.address is not None
    ds = ds.map_batches(
        FrameDecoder, batch_size=1, compute=actor_pool(pools.decode, config.decode.workers is not None or not grows),
        num_cpus=pools.decode_cpus,
        memory=pools.decode_memory, **retries,
        # glibc gives threads arenas of their own (up to 8 per core) and reuses freed memory only within one; a
        # decoder starts a thread per video, so its memory grew with every video. And glibc raises its mmap
        # threshold to the largest block freed (up to 32 MB), after which frame batches (22 MB at 640x360) came
        # from arenas that kept them; a fixed 1 MiB returns every batch to the OS (docs/performance.md, sessions
        # 12 and 14). glibc reads both when the process starts, hence the actor's environment.
        runtime_env={"env_vars": {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20)}},
        fn_constructor_kwargs=dict(size=input_size, every_nth=config.decode.every_nth, fps=config.decode.fps,
                                   max_frames=config.decode.max_frames, batch_size=config.decode.batch_size,
                                   threads=config.decode.threads, storage_options=config.storage_options,
                                   cache_dir=config.decode.cache_dir, timeout_s=config.decode.timeout_s,
                                   pad=not topdown))
    ds = ds.map_batches(
        PoseEstimator, batch_size=None,                          # a block: one decoded batch, or a few small ones
        compute=actor_pool(pools.infer, config.model.workers is not None or not grows),
        num_gpus=pools.infer_gpus, num_cpus=config.model.cpus_per_worker,
        memory=pools.infer_memory, **retries,
        fn_constructor_kwargs=dict(checkpoint=config.model.checkpoint, device=config.model.device,
                                   precision=config.model.precision, flip_test=config.model.flip_test,
                                   grouping=config.grouping, topdown=config.topdown, threads=pools.threads,
                                   compile_model=config.model.compile, runtime=config.model.runtime,
                                   frame_size=input_size if topdown else None,
                                   batch_size=config.model.batch_size,
                                   storage_options=config.storage_options))
    return ds
