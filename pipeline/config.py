"""Typed job configs: YAML files in `configs/`, `--set key=value` overrides, clear validation errors.

Math modules keep their own frozen dataclasses (`GroupingConfig`, `TrackerConfig`, `ModelConfig`); the job configs
here embed them, so every default is defined once, next to the code it tunes.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`decode.fps=5` -> (["decode", "fps"], 5). Values are parsed as YAML, so `true`, `[1, 2]` and `null` work."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. --set decode.fps=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Set nested keys of a plain dict from `key.sub=value` strings."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            merge(node[path[-1]], value)   # `--set decode={fps: 5}` changes fps, as `--set decode.fps=5` does
        else:
            node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (configs live in {CONFIG_DIR})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line naming each offending key, what came, and for a misspelt key the closest valid one."""
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        key = ".".join(loc) or "<root>"
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            valid = section_keys(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
            hint = f"did you mean {'.'.join(loc[:-1] + close[:1])!r}?" if close else \
                f"valid keys here: {', '.join(valid)}"
            problems.append(f"{key}: unknown key ({hint})")
        else:
            problems.append(f"{key}: {item['msg']}, got {item.get('input')!r}")
    return f"invalid config ({source}): " + "; ".join(problems)


def section_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the config section at `path` (a dotted key's parents); [] when it is not a section."""
    section: Any = model
    for part in path:
        fields = section_fields(section)
        section = fields.get(part)
    return list(section_fields(section))


def section_fields(section: Any) -> dict[str, Any]:
    """{name: type} of a pydantic model or a dataclass (the math modules' configs); {} for anything else."""
    if isinstance(section, type) and issubclass(section, BaseModel):
        return {name: field.annotation for name, field in section.model_fields.items()}
    if isinstance(section, type) and dataclasses.is_dataclass(section):
        return {field.name: field.type for field in dataclasses.fields(section)}
    return {}


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` written over it, nested dicts merged key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build a config of type `cls` from the code's defaults, an optional YAML file of changes, then `key=value`
    overrides.

    Raises:
        ConfigError: naming the offending key, what was expected and what came.
    """
    overrides = list(overrides)
    # every default first: a file or override that sets one key of a section keeps the section's other defaults
    # (validated alone, {val: {num_images: 4}} would drop the seed and options of the default val split)
    data = merge(cls().model_dump(mode="json"), read_yaml(path) if path else {})
    apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        source = " + ".join(filter(None, [str(path) if path else "", " ".join(f"--set {o}" for o in overrides)]))
        raise ConfigError(format_validation_error(exc, source or "defaults", cls)) from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, every key with its value (what `--show-config` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_hash(config: BaseModel) -> str:
    """Stable short hash of a config's content, recorded with each run and checkpoint."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- the main job's config ------------------------------------------------------------------------------------------

import datetime  # noqa: E402  (kept beside the job config it serves)
from typing import Literal  # noqa: E402

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator  # noqa: E402

from pipeline.models.blazepose.topdown import TopDownConfig  # noqa: E402
from pipeline.pose.grouping import GroupingConfig  # noqa: E402
from pipeline.pose.tracking import TrackerConfig  # noqa: E402

DEFAULT_CHECKPOINT = "blazepose-heavy"           # imported real-trained weights, see pipeline/models/blazepose/weights.py


class DecodeSettings(StrictModel):
    every_nth: PositiveInt = 1                   # decode every Nth frame
    fps: PositiveFloat | None = None             # target sampling rate; wins over every_nth when below the video's
    max_frames: PositiveInt | None = None        # cap per video (the first frames are kept)
    batch_size: PositiveInt = 32                 # frames per batch handed to inference
    workers: PositiveInt | None = None           # decode actors, a fixed pool; None: an autoscaling pool that starts
                                                 # at a quarter of the cluster's CPUs and grows onto added nodes
    threads: PositiveInt = 1                     # decord threads per decode actor
    timeout_s: PositiveFloat = 900.0             # a video whose decoder keeps its actor waiting longer becomes an error
                                                 # row (type Timeout); time spent waiting on inference does not count
    memory_gb: PositiveFloat | None = None       # memory reserved per decode actor (Ray `memory`, see RaySettings);
                                                 # None: estimated from the frames it holds (pipeline.stages.plan)
    cache_dir: str | None = None                 # local folder for remote videos while they decode (default: tmp)


class ModelSettings(StrictModel):
    checkpoint: str = DEFAULT_CHECKPOINT         # a cached model name (`posepipe models fetch`), path or URI
                                                 # (s3://...); models/posepipe-synthetic.pt is the bottom-up
                                                 # synthetic-trained net
    frame_size: PositiveInt | None = None        # frames are letterboxed to this square for the model; None: the
                                                 # checkpoint's (1024 for the imported top-down models)
    device: Literal["auto", "cpu", "cuda"] = "auto"   # auto: cuda when the actor has a GPU, else cpu
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"  # autocast dtype; auto: fp32 for top-down models
                                                 # (bf16 loses them accuracy), and for the bottom-up net bf16 where
                                                 # the device runs it natively (GPUs, AMX/AVX512-BF16 CPUs); fp16
                                                 # runs as fp32 on CPUs (a warning says so)
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"  # what runs a top-down model's nets; auto: ONNX
                                                 # Runtime for fp32 on a CPU (faster there, docs/performance.md),
                                                 # torch on GPUs, in bf16/fp16 and compiled
    batch_size: PositiveInt = 16                 # frames per forward pass (bottom-up; a top-down model takes each
                                                 # decoded batch whole, decode.batch_size frames)
    compile: bool = False                        # torch.compile the nets in each inference actor: about a minute of
                                                 # compiling when an actor starts, then 1.5-2x faster on a CPU
                                                 # (docs/performance.md); worth it for long archives
    flip_test: bool = False                      # also run each frame mirrored and average (twice the model cost;
                                                 # more accurate keypoints, see models/posepipe-synthetic.md)
    workers: PositiveInt | None = None           # inference actors, a fixed pool; None: an autoscaling pool that
                                                 # starts at one per GPU (else the CPUs decoding leaves) and grows
                                                 # onto added nodes
    threads: PositiveInt | None = None           # torch threads per CPU actor; None: an equal share of the
                                                 # cluster's CPUs (decoders and the driver use few of theirs)
    cpus_per_worker: PositiveFloat = 1.0         # CPUs reserved by each inference actor, on a GPU too (its host
                                                 # thread: the person finding's loop, NMS, kernel launches)
    memory_gb: PositiveFloat | None = None       # memory reserved per inference actor (Ray `memory`); None:
                                                 # estimated for the model kind (pipeline.stages.plan)

    @model_validator(mode="after")
    def onnxruntime_runs_fp32_on_cpus(self):
        if self.runtime == "onnxruntime" and (self.device == "cuda" or self.precision in ("bf16", "fp16")
                                               or self.compile):
            raise ValueError("model.runtime=onnxruntime runs fp32 nets on a CPU without model.compile; use "
                             "model.runtime=torch (or auto) with model.device=cuda, bf16/fp16 or model.compile")
        return self


class WriteSettings(StrictModel):
    """How the tables are written: Delta Lake tables, committed in waves, compacted and vacuumed after each run
    (pipeline/outputs/tables.py, docs/tables.md)."""

    date: datetime.date | None = None            # partition date YYYY-MM-DD; None: the run's start date (UTC)
    incremental: bool = True                     # skip videos already processed with the same size, version and
                                                 # settings (read from the videos table)
    commit_seconds: PositiveFloat = 10.0         # at most one commit per table this often (and one at the end)
    wave_videos: PositiveInt = 256               # complete videos per write task (a wave), at most
    wave_frames: PositiveInt = 20_000            # ... or this many frames, whichever comes first
    cpus: PositiveFloat = 0.25                   # CPUs each write task (tracking, Parquet) reserves
    compact: bool = True                         # after the run: compact small files into ~128 MB ones, then vacuum
    compact_cpus: PositiveFloat = 1.0            # CPUs each table's compaction reserves: a CPU-bound rewrite, so
                                                 # as many run at once as there are CPUs (each in its own process)
    retention_hours: NonNegativeInt = 0          # files a commit removed stay this long (time travel to older
                                                 # versions); 0: deleted at once, so a plain Parquet reader of the
                                                 # folders sees exactly the current rows whenever no run is active
    orphan_hours: NonNegativeInt = 1             # files no commit ever added (a killed run's) are deleted once
                                                 # this old; younger ones may belong to a run still writing


class RaySettings(StrictModel):
    """Ray connection and fault tolerance.

    `memory_gb` of the decode and model sections is Ray's `memory` resource: a reservation Ray uses to place actors
    (a node gets no more actors than its memory holds, and the pools are sized to fit the cluster), not a hard
    cap on the process. An actor that grows past the node's memory is killed by Ray's memory monitor; it restarts
    and its batch is retried (`max_task_retries`), so an out-of-memory kill costs time, never rows.
    """

    address: str | None = None                   # None: start Ray in-process; "auto" or "ray://host:10001"
    num_cpus: PositiveInt | None = None          # for the in-process Ray only; None: all of the machine's
    max_task_retries: NonNegativeInt = 3         # retries of a batch whose actor died (killed, OOM, crash in C);
                                                 # actors always restart. A batch that fails them all gives its
                                                 # videos error rows instead of looping on a video that kills it
    max_failed_batches: int = Field(10, ge=-1)   # batches that may fail every retry before the run stops (-1: any)
    buffered_batches: PositiveInt | None = 1     # decoded batches of frames held ahead per actor in the object
                                                 # store (frames the size of the first video's); None: Ray's
                                                 # default, which lets fast decoders fill a share of the whole
                                                 # store ahead of the model


class RunConfig(StrictModel):
    input: str | None = None                     # folder, video file or URI of the archive
    output: str | None = None                    # folder or URI for the Delta tables (local, s3://, gs://, az://)
    storage_options: dict[str, Any] = Field(default_factory=dict)  # fsspec options, e.g. {endpoint_url: ...}
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    grouping: GroupingConfig = GroupingConfig()  # bottom-up models: peaks and people assembly
    topdown: TopDownConfig = TopDownConfig()     # top-down models: person detection, crops, video following
    tracking: TrackerConfig = TrackerConfig()
    write: WriteSettings = Field(default_factory=WriteSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
