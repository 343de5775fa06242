"""Training: config, schedule and trace files (fast), and a real Ray Train run that learns, checkpoints and
resumes (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.models.bottomup import PoseNet
from pipeline.models.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from pipeline.training.loop import (
    OptimConfig,
    TrainConfig,
    export_run,
    initial_model,
    lr_factor,
    run_training,
    weighted_mse,
    write_trace,
)

TINY_MODEL = ["model.input_size=96", "model.width=8", "model.stage_blocks=[1, 1]", "model.feature_channels=16",
              "model.head_channels=8", "model.head_convs=1"]


def test_default_config_loads_and_overrides_apply():
    config = load_config(TrainConfig, None, ["optim.epochs=3", "model.width=8"])
    assert config.optim.epochs == 3 and config.model.width == 8
    assert config.data.generate.val.options["background"] == "heldout"
    with pytest.raises(ConfigError, match="optim.epoch"):
        load_config(TrainConfig, None, ["optim.epoch=3"])
    with pytest.raises(ConfigError, match="model"):
        load_config(TrainConfig, None, ["model.colour=red"])


def test_learning_rate_warms_up_then_decays():
    factor = lr_factor(OptimConfig(warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    values = [factor(step) for step in range(120)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[110] == pytest.approx(0.1) and values[119] == pytest.approx(0.1)


def test_foreground_weight_counts_target_pixels_more():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0
    pred = torch.full((1, 1, 2, 2), 0.5)  # squared errors: 0.25 on the one target pixel, 0.25 on each background one
    assert weighted_mse(pred, target, target > 0, 0.0) == pytest.approx(torch.nn.functional.mse_loss(pred, target))
    assert weighted_mse(pred, target, target > 0, 3.0) == pytest.approx((4 * 0.25 + 3 * 0.25) / 4)


def test_init_checkpoint_must_match_the_model_section(tmp_path, random_checkpoint):
    config = load_config(TrainConfig, None, [f"run.init_checkpoint={random_checkpoint}", "model.width=7"])
    with pytest.raises(ValueError, match="model section"):
        run_training(config)
    with pytest.raises(FileNotFoundError):
        run_training(load_config(TrainConfig, None, [f"run.init_checkpoint={tmp_path / 'missing.pt'}"]))


def test_init_checkpoint_with_fewer_blocks_is_deepened(tmp_path):
    small = load_config(TrainConfig, None, TINY_MODEL)
    path = str(tmp_path / "small.pt")
    save_checkpoint(PoseNet(small.model), path, checkpoint_metadata(small.model))
    config = load_config(TrainConfig, None, TINY_MODEL + [f"run.init_checkpoint={path}", "model.stage_blocks=[2, 3]"])
    model = initial_model(config)
    assert model.config == config.model and model.training
    deeper = load_config(TrainConfig, None, TINY_MODEL + [f"run.init_checkpoint={path}", "model.stage_blocks=[1]"])
    with pytest.raises(ValueError, match="more stage_blocks"):
        initial_model(deeper)


def trace_rows(epochs) -> list[dict]:
    return [{"epoch": e, "loss": 1.0 / e, "val_loss": 1.2 / e, "PCK": 0.1 * e, "AP": 0.05 * e, "AP50": 0.1,
             "AP75": 0.0, "AR": 0.1, "lr": 1e-3, "epoch_s": 2.0} for e in epochs]


def test_trace_files(tmp_path):
    trace = trace_rows((1, 2, 3))
    write_trace(trace, str(tmp_path / "run"))
    lines = (tmp_path / "run" / "trace.csv").read_text().splitlines()
    assert lines[0].split(",")[:5] == ["epoch", "loss", "val_loss", "PCK", "AP"] and len(lines) == 4
    assert json.loads((tmp_path / "run" / "trace.json").read_text()) == trace
    assert (tmp_path / "run" / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_export_copies_the_checkpoint_and_its_trace(tmp_path, weights):
    config = load_config(TrainConfig, None, TINY_MODEL + ["model.width=32"])  # convs large enough for int8
    run = tmp_path / "run"
    save_checkpoint(PoseNet(config.model), str(run / "last.pt"), checkpoint_metadata(config.model, epoch=7))
    write_trace(trace_rows([7]), str(run))
    export_run(str(run), str(tmp_path / "out" / "model.pt"), checkpoint="last.pt", weights=weights)
    model, meta = load_checkpoint(str(tmp_path / "out" / "model.pt"))
    assert meta["epoch"] == 7 and meta["weights_dtype"] == weights and model.config == config.model
    assert json.loads((tmp_path / "out" / "model-trace.json").read_text()) == trace_rows([7])
    sizes = [path.stat().st_size for path in (run / "last.pt", tmp_path / "out" / "model.pt")]
    assert sizes[1] == sizes[0] if weights == "float32" else sizes[1] < 0.4 * sizes[0]


@pytest.mark.slow
def test_ray_training_learns_checkpoints_and_resumes(tmp_path, ray_local):
    from jobs.train import main
    from pipeline.models.checkpoint import load_checkpoint

    output, export = tmp_path / "run", tmp_path / "export" / "tiny.pt"
    overrides = TINY_MODEL + [
        f"data.generate.cache_dir={tmp_path / 'data'}", "data.generate.image_size=[96, 96]",
        "data.generate.train.num_images=8", "data.generate.val.num_images=4", "data.train_input_size=64",
        "data.loader_workers=0", "optim.batch_size=2", "optim.lr=0.003", "optim.warmup_steps=0",
        "augment.scale=0", "augment.rotation=0", "augment.translate=0", "augment.flip=0",  # learnable in a few steps
        "eval.max_images=4", "eval.batch_size=4", "run.torch_threads=1", f"run.output={output}",
        f"run.ray_storage={tmp_path / 'ray'}", f"run.export={export}"]
    args = [arg for item in overrides for arg in ("--set", item)]
    assert main([*args, "--set", "optim.epochs=2"]) == 0
    first = json.loads((output / "trace.json").read_text())
    assert [row["epoch"] for row in first] == [1, 2]
    assert first[1]["loss"] < first[0]["loss"]
    assert all(np.isfinite(row["val_loss"]) and 0 <= row["PCK"] <= 1 for row in first)

    model, meta = load_checkpoint(str(export))
    assert meta["epoch"] in (1, 2) and meta["input_size"] == 96 and meta["train_config"]["optim"]["epochs"] == 2
    heatmaps, pafs = model(torch.zeros(1, 3, 96, 96))
    assert heatmaps.shape == (1, 17, 24, 24) and pafs.shape == (1, 38, 24, 24)
    assert (tmp_path / "export" / "tiny-trace.png").exists()

    # the same command with more epochs continues after epoch 2 instead of starting over
    assert main([*args, "--set", "optim.epochs=3"]) == 0
    resumed = json.loads((output / "trace.json").read_text())
    assert [row["epoch"] for row in resumed] == [1, 2, 3] and resumed[:2] == first
    assert load_checkpoint(str(output / "last.pt"))[1]["epoch"] == 3

    # fine-tuning: a new run starts from the exported weights (a vanishing learning rate keeps them)
    tuned = tmp_path / "tuned"
    assert main([*args, "--set", "optim.epochs=1", "--set", "optim.lr=1e-12", "--set", f"run.output={tuned}",
                 "--set", "run.export=null", "--set", f"run.init_checkpoint={export}"]) == 0
    start, after = (load_checkpoint(str(path))[0].state_dict() for path in (export, tuned / "last.pt"))
    for name, value in start.items():
        if name.endswith(".weight") and value.ndim == 4:  # conv weights; BatchNorm statistics move in train mode
            torch.testing.assert_close(after[name], value, rtol=0, atol=1e-6)
