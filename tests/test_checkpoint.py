"""Checkpoint round trips through real files and fsspec memory://, and the errors a user sees."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.bottomup import ModelConfig, PoseNet
from pipeline.models.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    dequantize_state,
    load_checkpoint,
    load_training_state,
    quantize_state,
    save_checkpoint,
    save_training_state,
)

TINY = ModelConfig(input_size=64, width=8, stage_blocks=(1, 1), feature_channels=16, head_channels=8, head_convs=1)
# ~0.3 M parameters: large convs (int8-stored) beside small ones, and torch.save's per-tensor records a small part
MID = ModelConfig(input_size=64, width=32, stage_blocks=(1, 1, 1), feature_channels=32, head_channels=16, head_convs=1)


def tiny_model(config: ModelConfig = TINY) -> PoseNet:
    torch.manual_seed(0)
    model = PoseNet(config)
    with torch.no_grad():  # non-default BatchNorm statistics, so buffers are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("where", ["file", "memory"])
def test_round_trip_gives_the_same_outputs(tmp_path, where):
    model = tiny_model()
    uri = str(tmp_path / "sub" / "m.pt") if where == "file" else "memory://ckpt-test/m.pt"
    metadata = checkpoint_metadata(TINY, {"optim": {"lr": 0.1}}, {"AP": 0.5}, epoch=3)
    save_checkpoint(model, uri, metadata)
    loaded, meta = load_checkpoint(uri)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b)
    assert not loaded.training
    assert loaded.config == TINY
    assert meta["epoch"] == 3 and meta["metrics"] == {"AP": 0.5} and meta["heads"] == ["heatmaps", "pafs"]
    assert meta["input_size"] == 64 and len(meta["keypoint_names"]) == 17 and len(meta["skeleton"]) == 19
    assert {"mean", "std", "train_config", "created_at", "model"} <= set(meta)


@pytest.mark.parametrize("weights, bytes_per_weight, tolerance", [("float16", 2, 5e-3), ("int8", 1, 3e-2)])
def test_smaller_weights_shrink_the_file_and_load_as_fp32(tmp_path, weights, bytes_per_weight, tolerance):
    model = tiny_model(MID)
    save_checkpoint(model, str(tmp_path / "full.pt"), checkpoint_metadata(MID))
    save_checkpoint(model, str(tmp_path / "small.pt"), checkpoint_metadata(MID), weights=weights)
    size, small_size = (tmp_path / "full.pt").stat().st_size, (tmp_path / "small.pt").stat().st_size
    state = model.state_dict()
    large = [key for key, t in state.items() if t.is_floating_point() and t.ndim >= 2 and t.numel() >= 2**14]
    floats = sum(t.numel() for t in state.values() if t.is_floating_point())
    # floats in fp16; with int8 the large conv weights take 1 byte and add an fp32 scale per output channel
    saved = 2 * floats
    if weights == "int8":
        saved += sum(state[key].numel() - 4 * state[key].shape[0] for key in large)
        assert sum(state[key].numel() for key in large) > 0.8 * floats
    assert size - small_size == pytest.approx(saved, rel=0.05)
    loaded, meta = load_checkpoint(str(tmp_path / "small.pt"))
    assert meta["weights_dtype"] == weights and load_checkpoint(str(tmp_path / "full.pt"))[1]["weights_dtype"] \
        == "float32"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            relative_error = float((a - b).norm() / a.norm())
            assert 0 < relative_error < tolerance  # > 0: really stored smaller, not passed through


def test_int8_weights_are_within_half_a_step_of_the_originals():
    state = tiny_model(MID).state_dict()
    quantized, scales = quantize_state(state, min_elements=0)
    restored = dequantize_state(quantized, scales)
    assert set(scales) == {k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2}
    large = set(quantize_state(state)[1])  # by default only the large convs
    assert large and large == {k for k in scales if state[k].numel() >= 2**14} != set(scales)
    for key, scale in scales.items():
        assert quantized[key].dtype == torch.int8 and scale.shape == (state[key].shape[0],)
        error = (restored[key] - state[key]).abs().flatten(1).amax(dim=1)     # per output channel
        assert torch.all(error <= scale / 2 + 1e-7)
        # every channel's largest weight maps to +-127 exactly
        assert torch.equal(quantized[key].flatten(1).abs().amax(dim=1), torch.full_like(scale, 127, dtype=torch.int8))
    assert all(torch.equal(restored[k], v) for k, v in state.items() if k not in scales)


def test_unknown_weight_storage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected weights one of"):
        save_checkpoint(tiny_model(), str(tmp_path / "m.pt"), checkpoint_metadata(TINY), weights="int4")


def test_local_save_leaves_no_temporary_files(tmp_path):
    save_checkpoint(tiny_model(), str(tmp_path / "m.pt"), checkpoint_metadata(TINY))
    save_checkpoint(tiny_model(), str(tmp_path / "m.pt"), checkpoint_metadata(TINY, epoch=2))  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    assert load_checkpoint(str(tmp_path / "m.pt"))[1]["epoch"] == 2


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt"):
        load_checkpoint(str(tmp_path / "nothing.pt"))


def test_corrupt_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(tiny_model(), str(path), checkpoint_metadata(TINY))
    path.write_bytes(path.read_bytes()[:1000])  # truncated upload
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(path))


def test_weights_that_do_not_fit_the_config(tmp_path):
    metadata = checkpoint_metadata(ModelConfig(input_size=64, width=16, stage_blocks=(1, 1)))
    save_checkpoint(tiny_model(), str(tmp_path / "m.pt"), metadata)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(str(tmp_path / "m.pt"))


def test_metadata_is_checked_before_writing(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tiny_model(), str(tmp_path / "m.pt"), {"epoch": 1})
    with pytest.raises(ValueError, match="JSON-like"):
        save_checkpoint(tiny_model(), str(tmp_path / "m.pt"), {**checkpoint_metadata(TINY), "x": object()})
    assert not (tmp_path / "m.pt").exists()


def test_training_state_round_trip(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 64, 64))[0].sum().backward()
    optimizer.step()
    uri = str(tmp_path / "state.pt")
    assert load_training_state(uri) is None
    save_training_state({"epoch": 2, "optimizer": optimizer.state_dict(), "trace": [{"epoch": 1, "loss": 0.5}]}, uri)
    state = load_training_state(uri)
    fresh = torch.optim.AdamW(tiny_model().parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    assert state["epoch"] == 2 and state["trace"] == [{"epoch": 1, "loss": 0.5}]
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_metadata_is_read_without_the_weights(tmp_path):
    """The driver needs the input size and kind only: read_metadata must not read (or need) the tensors."""
    import pickle
    import zipfile

    from pipeline.models.checkpoint import read_metadata

    config = ModelConfig(input_size=64, width=8, feature_channels=16, head_channels=8)
    full = tmp_path / "full.pt"
    save_checkpoint(PoseNet(config), str(full), checkpoint_metadata(config))
    skeleton = tmp_path / "structure-only.pt"           # the same file with every tensor's bytes left out
    with zipfile.ZipFile(full) as source, zipfile.ZipFile(skeleton, "w") as target:
        for name in source.namelist():
            if "/data/" not in name:
                target.writestr(name, source.read(name))
    assert skeleton.stat().st_size < full.stat().st_size / 10
    assert read_metadata(str(skeleton)) == read_metadata(str(full)) == read_metadata(str(full), verify=True)
    assert read_metadata(str(skeleton))["input_size"] == 64
    with pytest.raises(CheckpointError):
        read_metadata(str(skeleton), verify=True)       # the whole file, when asked: its weights are missing
    evil = tmp_path / "evil.pt"                         # a pickle that would run code is refused, not run
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"metadata": {}, "x": print}))
    with pytest.raises(CheckpointError, match="builtins.print has no place"):
        read_metadata(str(evil))
