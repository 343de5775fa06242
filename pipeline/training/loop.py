"""Training PoseNet with Ray Train: one CPU worker on a laptop, N GPU workers on a cluster, the same loop.

The driver (`run_training`) resolves the data (an existing COCO set, or one generated once by the synthetic
generator into a cache directory), starts Ray in-process unless `run.ray_address` names a cluster, and runs a
`TorchTrainer`. Each worker (`train_loop_per_worker`) trains with MSE on heatmaps + PAFs and, every epoch, scores
the held-out split (val loss, PCK@0.2 and OKS AP from grouped multi-person predictions). Rank 0 writes, under
`run.output` (a local path or fsspec URI):

    last.pt, best.pt     checkpoints (`pipeline.models.checkpoint`), best by OKS AP
    train_state.pt       optimizer, scheduler, trace: what a restarted run resumes from
    trace.csv, trace.json, trace.png    one row per epoch, and a plot of loss and accuracy

A run that finds `train_state.pt` continues after its last finished epoch (`run.resume`), so an interrupted job is
simply started again with the same command. For multi-node runs the data and `run.output` must be on shared
storage (e.g. s3://) since workers on other nodes cannot see the driver's /tmp.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from pipeline.config import StrictModel, config_hash
from pipeline.evaluation.metrics import evaluate_results, predict_coco_results
from pipeline.models.bottomup import ModelConfig, PoseNet, deepen
from pipeline.models.checkpoint import (
    WeightsDtype,
    checkpoint_metadata,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
    unwrap_model,
)
from pipeline.models.runtime import autocast_dtype
from pipeline.pose.grouping import GroupingConfig
from pipeline.storage import join, resolve, write_bytes_atomic
from pipeline.training.dataset import AugmentConfig, CocoKeypointDataset, TargetConfig

logger = logging.getLogger(__name__)

TRACE_COLUMNS = ("epoch", "loss", "val_loss", "PCK", "AP", "AP50", "AP75", "AR", "lr", "epoch_s")


class SyntheticSplit(StrictModel):
    num_images: int = Field(1000, ge=1)
    seed: int = 0
    options: dict[str, Any] = {}  # more write_coco_dataset arguments, e.g. {background: heldout}


class GenerateConfig(StrictModel):
    """A synthetic COCO set per split, written once into `cache_dir` and reused when it is already there."""

    cache_dir: str = "/tmp/posepipe-synthetic"
    image_size: tuple[int, int] = (256, 256)  # (W, H) of generated images
    workers: int | None = Field(None, ge=1)  # rendering processes; None: one per CPU (the images do not depend on it)
    train: SyntheticSplit = SyntheticSplit(num_images=8000, seed=1, options={"background": "train"})
    val: SyntheticSplit = SyntheticSplit(num_images=300, seed=100001, options={"background": "heldout"})  # other
    # backgrounds (lines, bricks, room) and seed than training's (gradient, noise, shapes, tiles, street)


class DataConfig(StrictModel):
    train: str | None = None  # COCO dir / URI (annotations.json + images/); None = generate
    val: str | None = None
    generate: GenerateConfig = GenerateConfig()
    storage_options: dict[str, Any] = {}
    train_input_size: int | None = None  # None = model.input_size; smaller = random crops at inference scale
    targets: TargetConfig = TargetConfig()
    loader_workers: int | None = Field(None, ge=0)  # DataLoader processes per training worker; None: the worker's
    # CPUs (run.cpus_per_worker) less the one that trains, at least 1 (a GPU worker with 8 CPUs decodes on 7)


class OptimConfig(StrictModel):
    epochs: int = Field(80, ge=1)
    batch_size: int = Field(8, ge=1)  # per worker; small batches make more updates of the few images a CPU processes
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.02, ge=0, le=1)  # cosine decays to lr * this
    grad_clip: float | None = 5.0
    heatmap_weight: float = 1.0
    paf_weight: float = 1.0
    foreground_weight: float = Field(10.0, ge=0)  # extra weight of target pixels (heatmap > 0.01, PAF != 0): they
    # are a few % of the maps, so they count 11x
    precision: Literal["fp32", "bf16", "auto"] = "auto"  # autocast dtype of the forward pass; auto: bf16 where the
    # device runs it natively (GPUs, AMX/AVX512-BF16 CPUs), fp32 elsewhere (emulated bf16 is ~13x slower on AVX2)
    max_steps_per_epoch: int | None = Field(250, ge=1)  # an 'epoch' is at most this many steps (2000 random images
    # at batch 8), so that progress, checkpoints and scores come at a steady pace; None: the whole training set


class EvalConfig(StrictModel):
    grouping: GroupingConfig = GroupingConfig()
    batch_size: int = Field(16, ge=1)
    max_images: int | None = 150  # score only the first N held-out images each epoch (posepipe evaluate: all)
    pck_threshold: float = 0.2


class RunSettings(StrictModel):
    output: str = "runs/posepipe-synthetic"  # local path or fsspec URI for checkpoints and traces
    export: str | None = None  # copy best.pt here at the end (traces beside it as <stem>-trace.*)
    export_weights: WeightsDtype = "float32"  # storage of the exported weights:
    # float16 is half the file, int8 a quarter (per-channel scales; pipeline/models/checkpoint.py save_checkpoint)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = Field(2, ge=1)
    ray_address: str | None = None  # None = start Ray in-process
    worker_niceness: int | None = 0  # in-process Ray only; Ray's default (15) starves training on a shared machine
    ray_storage: str = "/tmp/posepipe-ray"  # Ray Train's own run directory
    resume: bool = True
    init_checkpoint: str | None = None  # start from these weights (fine-tuning); ignored when resuming
    max_failures: int = 0  # worker restarts Ray Train may make (each resumes from train_state.pt)
    seed: int = 0
    log_every: int = Field(50, ge=1)  # steps between progress lines


class TrainConfig(StrictModel):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    run: RunSettings = RunSettings()


# ----------------------------------------------------------------------------------------------------- driver


def prepare_data(data: DataConfig) -> tuple[str, str]:
    """(train URI, val URI): the configured sets, or synthetic ones generated into the cache (once)."""
    return (data.train or generate_split(data.generate, data.generate.train),
            data.val or generate_split(data.generate, data.generate.val))


def generate_split(generate: GenerateConfig, split: SyntheticSplit) -> str:
    """Write a synthetic COCO set unless an identical one is cached; returns its directory."""
    from pipeline.synthetic import write_coco_dataset

    key = json.dumps([split.model_dump(mode="json"), list(generate.image_size)], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]  # options (e.g. backgrounds) change the name too
    name = f"n{split.num_images}-seed{split.seed}-{generate.image_size[0]}x{generate.image_size[1]}-{digest}"
    out_dir = os.path.join(generate.cache_dir, name)
    if os.path.exists(os.path.join(out_dir, "annotations.json")):
        logger.info("using cached synthetic set %s", out_dir)
        return out_dir
    start = time.monotonic()
    write_coco_dataset(out_dir, split.num_images, split.seed, image_size=tuple(generate.image_size),
                       workers=generate.workers or os.cpu_count() or 1, **split.options)
    logger.info("generated %d synthetic images into %s in %.0f s", split.num_images, out_dir,
                time.monotonic() - start)
    return out_dir


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train per `config` on a Ray cluster (in-process when no address is given); returns the last epoch's row."""
    import ray
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    if config.run.init_checkpoint:
        initial_model(config)  # a missing or mismatched checkpoint fails here, before any data or Ray work
    train_uri, val_uri = prepare_data(config.data)
    resolved = config.model_copy(deep=True)
    resolved.data.train, resolved.data.val = train_uri, val_uri
    resolved.run.output = absolute(resolved.run.output)  # workers do not share the driver's cwd
    if resolved.run.init_checkpoint:
        resolved.run.init_checkpoint = absolute(resolved.run.init_checkpoint)
    if not ray.is_initialized():
        if config.run.ray_address:
            ray.init(address=config.run.ray_address)
        else:
            if config.run.worker_niceness is not None:  # read by the raylet when it starts workers
                os.environ["RAY_worker_niceness"] = str(config.run.worker_niceness)
            # with the dashboard: Ray Train's placement-group cleaner polls the state API it serves, and logs a
            # warning every few seconds without it
            ray.init(num_cpus=max(os.cpu_count() or 1, int(math.ceil(config.run.cpus_per_worker))),
                     include_dashboard=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=resolved.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=config.run.num_workers, use_gpu=config.run.use_gpu,
                                     resources_per_worker={"CPU": config.run.cpus_per_worker}),
        run_config=RayRunConfig(name=f"posepipe-{config_hash(resolved)}", storage_path=config.run.ray_storage,
                                failure_config=FailureConfig(max_failures=config.run.max_failures)),
    )
    trainer.fit()
    if config.run.export:
        export_run(resolved.run.output, config.run.export, resolved.data.storage_options,
                   weights=config.run.export_weights)
    fs, path = resolve(join(resolved.run.output, "trace.json"), resolved.data.storage_options)
    return json.loads(fs.cat_file(path))[-1]


def absolute(uri: str) -> str:
    """A local path made absolute; URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def export_run(output: str, export: str, storage_options: dict | None = None, checkpoint: str = "best.pt",
               weights: WeightsDtype = "float32") -> None:
    """Copy a run's `checkpoint` (best.pt: best held-out AP of an epoch; last.pt: the last epoch) to `export` and the
    trace files beside it as <stem>-trace.{csv,json,png}; `weights` float16 or int8 stores the weights smaller
    (`save_checkpoint`)."""
    if checkpoint not in ("best.pt", "last.pt"):
        raise ValueError(f"expected checkpoint 'best.pt' or 'last.pt', got {checkpoint!r}")
    stem = export[:-3] if export.endswith(".pt") else export
    rewrite = weights != "float32"
    if rewrite:
        model, metadata = load_checkpoint(join(output, checkpoint), storage_options=storage_options)
        save_checkpoint(model, export, metadata, storage_options, weights=weights)
    copies = [(name, f"{stem}-{name}") for name in ("trace.csv", "trace.json", "trace.png")]
    for src, dst in ([] if rewrite else [(checkpoint, export)]) + copies:
        src_fs, src_path = resolve(join(output, src), storage_options)
        dst_fs, dst_path = resolve(dst, storage_options)
        write_bytes_atomic(dst_fs, dst_path, src_fs.cat_file(src_path))
    logger.info("exported %s/%s to %s (%s weights)", output, checkpoint, export, weights)


# ----------------------------------------------------------------------------------------------------- worker


def train_loop_per_worker(config_dict: dict) -> None:
    """The Ray Train worker: data, model, optimizer, epochs; rank 0 writes traces and checkpoints."""
    import ray.train
    import ray.train.torch

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    config = TrainConfig.model_validate(config_dict)
    torch.set_num_threads(config.run.torch_threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.run.seed)  # identical initial weights on every rank
    options = config.data.storage_options

    train_size = config.data.train_input_size or config.model.input_size
    train_set = CocoKeypointDataset(config.data.train, train_size, config.augment, config.data.targets, options,
                                    fit_size=config.model.input_size)
    val_set = CocoKeypointDataset(config.data.val, config.model.input_size, None, config.data.targets, options,
                                  limit=config.eval.max_images)
    workers = config.data.loader_workers
    if workers is None:
        workers = max(1, int(config.run.cpus_per_worker) - 1)
    train_loader = ray.train.torch.prepare_data_loader(DataLoader(
        train_set, batch_size=config.optim.batch_size, shuffle=True, drop_last=len(train_set) > config.optim.batch_size,
        num_workers=workers, persistent_workers=workers > 0))
    val_loader = ray.train.torch.prepare_data_loader(DataLoader(
        val_set, batch_size=config.eval.batch_size, shuffle=False, num_workers=min(workers, 1)))

    model = initial_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    steps_per_epoch = len(train_loader) if config.optim.max_steps_per_epoch is None \
        else min(len(train_loader), config.optim.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config.optim, steps_per_epoch * config.optim.epochs))
    state_uri = join(config.run.output, "train_state.pt")
    state = load_training_state(state_uri, options) if config.run.resume else None
    trace: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        trace = list(state["trace"])
        logger.info("resuming from %s after epoch %d", state_uri, state["epoch"])
    start_epoch = state["epoch"] if state is not None else 0
    model = ray.train.torch.prepare_model(model.to(memory_format=torch.channels_last))
    dtype = autocast_dtype(config.optim.precision, ray.train.torch.get_device())
    logger.info("training on %s, autocast %s", ray.train.torch.get_device(), dtype or "off (fp32)")

    for epoch in range(start_epoch + 1, config.optim.epochs + 1):
        started = time.monotonic()
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        loss = train_epoch(model, train_loader, optimizer, scheduler, config, epoch, steps_per_epoch, dtype)
        val_loss, results = validate(model, val_loader, config, dtype)
        row = {"epoch": epoch, "loss": loss, "val_loss": val_loss, "lr": scheduler.get_last_lr()[0]}
        if rank == 0:
            scores = evaluate_results(val_set.ground_truth(), results, config.eval.pck_threshold)
            row.update({key: scores[key] for key in ("PCK", "AP", "AP50", "AP75", "AR")})
            row["epoch_s"] = time.monotonic() - started
            trace.append(row)
            logger.info("epoch %d/%d  " + "  ".join(f"{k}=%.4g" for k in TRACE_COLUMNS[1:]), epoch,
                        config.optim.epochs, *[row[k] for k in TRACE_COLUMNS[1:]])
            save_epoch(model, optimizer, scheduler, trace, config)
        ray.train.report({k: v for k, v in row.items() if isinstance(v, (int, float))})


def initial_model(config: TrainConfig) -> PoseNet:
    """A fresh PoseNet of `config.model`, with the weights of `run.init_checkpoint` when one is given."""
    if config.run.init_checkpoint is None:
        return PoseNet(config.model)
    model, metadata = load_checkpoint(config.run.init_checkpoint, storage_options=config.data.storage_options)
    if model.config != config.model and model.config == replace(config.model, stage_blocks=model.config.stage_blocks):
        try:  # the same net with more blocks asked for: grow it, keeping what it learned
            model = deepen(model, config.model.stage_blocks)
        except ValueError:
            pass  # fewer blocks than the checkpoint: reported below
        else:
            logger.info("deepened %s from stage_blocks %s to %s", config.run.init_checkpoint,
                        metadata["model"]["stage_blocks"], config.model.stage_blocks)
    if model.config != config.model:
        raise ValueError(f"run.init_checkpoint {config.run.init_checkpoint} holds a model {model.config}, but the "
                         f"model section asks for {config.model}; set the model section to match the checkpoint "
                         "(or to the same net with more stage_blocks, which grows it)")
    logger.info("starting from %s (epoch %s)", config.run.init_checkpoint, metadata.get("epoch"))
    return model.train()


def forward(model, images: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads in fp32, computed channels_last and under autocast to `dtype` when one is given.

    channels_last and bf16 each made training steps faster where the CPU runs bf16 natively; where it does not,
    bf16 is emulated and an order of magnitude slower, hence `precision: auto` (docs/performance.md).
    """
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        heatmaps, pafs = model(images)
    return heatmaps.float(), pafs.float()


def lr_factor(optim: OptimConfig, total_steps: int):
    """Linear warmup, then cosine decay to `min_lr_ratio` over the remaining steps."""
    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def pose_loss(heatmaps: torch.Tensor, pafs: torch.Tensor, batch: dict, optim: OptimConfig) -> torch.Tensor:
    """MSE of the raw heads against the Gaussian / PAF targets, averaged over all pixels.

    Keypoints and limbs cover a few percent of the pixels, so plain MSE is mostly "predict zero"; with
    `foreground_weight` w, target pixels count 1 + w times, which pulls the peaks and fields up much sooner.
    """
    return (optim.heatmap_weight * weighted_mse(heatmaps, batch["heatmaps"], batch["heatmaps"] > 0.01,
                                                optim.foreground_weight)
            + optim.paf_weight * weighted_mse(pafs, batch["pafs"], batch["pafs"] != 0, optim.foreground_weight))


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor, weight: float) -> torch.Tensor:
    """Mean squared error where `foreground` pixels count 1 + `weight` times (plain MSE when weight is 0)."""
    error = (pred.float() - target) ** 2
    return (error * (1.0 + weight * foreground)).mean() if weight else error.mean()


def train_epoch(model, loader, optimizer, scheduler, config: TrainConfig, epoch: int, steps: int,
                dtype: torch.dtype | None) -> float:
    """One pass over the training shard; returns the mean loss over all workers."""
    model.train()
    total, count, started = 0.0, 0, time.monotonic()
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        heatmaps, pafs = forward(model, batch["image"], dtype)  # (B, K, h, w), (B, 2L, h, w)
        loss = pose_loss(heatmaps, pafs, batch, config.optim)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(batch["image"])
        count += len(batch["image"])
        if (step + 1) % config.run.log_every == 0:
            logger.info("epoch %d step %d/%d loss %.5f (%.1f img/s)", epoch, step + 1, steps, total / count,
                        count / (time.monotonic() - started))
    return all_mean(total, count)


@torch.no_grad()
def validate(model, loader, config: TrainConfig, dtype: torch.dtype | None) -> tuple[float, list[dict]]:
    """Held-out loss (mean over all workers) and COCO results of every held-out image (gathered on all ranks)."""
    model.eval()
    total, count, results = 0.0, 0, {}
    for batch in loader:
        heatmaps, pafs = forward(model, batch["image"], dtype)
        total += float(pose_loss(heatmaps, pafs, batch, config.optim)) * len(batch["image"])
        count += len(batch["image"])
        results.update(predict_coco_results(heatmaps, pafs, batch, config.eval.grouping))
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, results)
        results = {k: v for part in gathered for k, v in part.items()}  # the sampler's padding repeats images
    return all_mean(total, count), [r for image_results in results.values() for r in image_results]


def all_mean(total: float, count: int) -> float:
    """Mean of per-worker sums across the process group (the local mean without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        import ray.train.torch

        # on the worker's device: NCCL reduces only device tensors, gloo any
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=ray.train.torch.get_device())
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def save_epoch(model, optimizer, scheduler, trace: list[dict], config: TrainConfig) -> None:
    """Rank 0: trace files and plot, last/best checkpoints, then the resume state (written last, the commit)."""
    output, options = config.run.output, config.data.storage_options
    write_trace(trace, output, options)
    row = trace[-1]
    metadata = checkpoint_metadata(config.model, config.model_dump(mode="json"),
                                   {k: row[k] for k in row if k != "epoch"}, row["epoch"])
    save_checkpoint(model, join(output, "last.pt"), metadata, options)
    best_ap = max(r["AP"] for r in trace)
    if row["AP"] >= best_ap:
        save_checkpoint(model, join(output, "best.pt"), metadata, options)
    save_training_state({
        "epoch": row["epoch"],
        "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "trace": trace,
    }, join(output, "train_state.pt"), options)


def write_trace(trace: list[dict], output: str, storage_options: dict | None = None) -> None:
    """trace.csv, trace.json and trace.png (loss and accuracy per epoch) under `output`."""
    fs, _ = resolve(output, storage_options)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TRACE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(trace)
    for name, data in [("trace.csv", text.getvalue().encode()), ("trace.json", json.dumps(trace, indent=1).encode()),
                       ("trace.png", plot_trace(trace))]:
        write_bytes_atomic(fs, resolve(join(output, name), storage_options)[1], data)


def plot_trace(trace: list[dict]) -> bytes:
    """PNG: training and held-out loss (left), PCK@0.2 and OKS AP/AR (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in trace]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in trace], "o-", label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in trace], "s-", label="held-out loss")
    ax_loss.set(xlabel="epoch", ylabel="MSE (heatmaps + PAFs)", yscale="log", title="loss")
    for key, label in [("PCK", "PCK@0.2"), ("AP", "OKS AP"), ("AR", "OKS AR")]:
        ax_acc.plot(epochs, [r[key] for r in trace], "o-", label=label)
    ax_acc.set(xlabel="epoch", ylabel="held-out score", ylim=(0, 1), title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
