import numpy as np
import pytest

from pipeline.stages.batch import unpack
from pipeline.stages.decode import FrameDecoder
from pipeline.video import DecodeError, DecordStream, probe_video, sample_frame_indices

from conftest import encode_video


def test_sample_every_frame_every_nth_and_target_fps():
    np.testing.assert_array_equal(sample_frame_indices(10, 30.0), np.arange(10))
    np.testing.assert_array_equal(sample_frame_indices(10, 30.0, every_nth=3), [0, 3, 6, 9])
    np.testing.assert_array_equal(sample_frame_indices(30, 30.0, target_fps=5), [0, 6, 12, 18, 24])
    np.testing.assert_array_equal(sample_frame_indices(30, 10.0, target_fps=50), np.arange(30))  # never upsample
    np.testing.assert_array_equal(sample_frame_indices(30, 30.0, every_nth=2, max_frames=4), [0, 2, 4, 6])
    assert len(sample_frame_indices(0, 30.0)) == 0


def test_stream_decodes_the_right_frames_with_timestamps(tmp_path):
    path = encode_video(tmp_path / "v.mp4", num_frames=24, width=160, height=120, fps=12)
    info = probe_video(str(path))
    assert (info.width, info.height, info.num_frames) == (160, 120, 24)
    stream = DecordStream(str(path), size=64)
    assert stream.num_frames == 24 and stream.fps == pytest.approx(12.0)
    batches = list(stream.batches(np.array([0, 5, 10, 23]), batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 1]                      # bounded batches
    indices = np.concatenate([b[0] for b in batches])
    timestamps = np.concatenate([b[1] for b in batches])
    frames = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(indices, [0, 5, 10, 23])
    np.testing.assert_allclose(timestamps, indices / 12.0, atol=1e-3)
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    lb = stream.letterbox                                               # 160x120 -> 64x48, 8 px bars top/bottom
    assert (lb.resized_width, lb.resized_height, lb.pad_y) == (64, 48, 8)
    assert frames[:, :lb.pad_y].max() == 0
    for frame, t in zip(frames, indices):                               # the bar moved to x = 4 t + 4 (centre)
        row = frame[lb.pad_y + 24, :, 0].astype(float)
        expected = lb.to_input(np.array([4 * t + 3.5, 60.0]))[0]
        assert abs(np.argmax(row) - expected) <= 2


@pytest.mark.parametrize("suffix,codec", [(".avi", "mpeg4"), (".mkv", "libx264"), (".webm", "libvpx-vp9"),
                                          (".mov", "libx264")])
def test_other_containers(tmp_path, suffix, codec):
    path = encode_video(tmp_path / f"v{suffix}", num_frames=10, codec=codec)
    stream = DecordStream(str(path), size=32)
    assert stream.num_frames == 10


def test_frame_decoder_streams_batches_then_an_end_marker(tmp_path):
    good = encode_video(tmp_path / "good.mp4", num_frames=20)
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video")
    decoder = FrameDecoder(size=64, every_nth=2, batch_size=4)
    refs = {"uri": np.array([str(good), str(bad)], dtype=object),
            "video_id": np.array(["good", "bad"], dtype=object)}
    batches = [batch for row in decoder(refs) for batch in unpack(row)]   # each yield: one packed batch
    good_batches = [b for b in batches if b["video_id"][0] == "good"]
    assert [len(b["frame_index"]) for b in good_batches] == [4, 4, 2, 1]
    marker = good_batches[-1]
    assert marker["is_end"].tolist() == [True] and marker["num_frames"][0] == 10 and marker["error"][0] == ""
    frames = np.concatenate([b["frame_index"] for b in good_batches[:-1]])
    np.testing.assert_array_equal(frames, np.arange(0, 20, 2))
    bad_batches = [b for b in batches if b["video_id"][0] == "bad"]
    assert len(bad_batches) == 1 and bad_batches[0]["is_end"][0]
    stage, kind, message = bad_batches[0]["error"][0].split("|", 2)
    assert stage == "open" and "cannot open" in message


@pytest.mark.parametrize("width,height,size,expected", [(160, 120, 256, (120, 160)),   # never enlarged
                                                        (320, 180, 128, (72, 128))])   # shrunk to fit
def test_unpadded_frames_travel_at_their_own_size(tmp_path, width, height, size, expected):
    """A top-down run's frames: the picture alone, at most `size` on its long side and never more than the source,
    with end markers of the same shape (the bytes in the object store are the frame's pixels x 3 at most)."""
    path = encode_video(tmp_path / "v.mp4", num_frames=6, width=width, height=height)
    rows = FrameDecoder(size=size, batch_size=4, pad=False)({"uri": np.array([str(path)], dtype=object),
                                                             "video_id": np.array(["v"], dtype=object)})
    batches = [batch for row in rows for batch in unpack(row)]
    assert [b["image"].shape[1:] for b in batches] == [(*expected, 3)] * 3
    assert batches[0]["image"].max() > 0 and batches[-1]["is_end"][0] and batches[-1]["image"].max() == 0
    assert (batches[0]["width"][0], batches[0]["height"][0]) == (width, height)


def test_missing_file_is_an_open_error(tmp_path):
    with pytest.raises(DecodeError, match="cannot open"):
        DecordStream(str(tmp_path / "nope.mp4"), size=64)


@pytest.mark.slow
def test_decoded_batches_leave_the_decoder_whole_at_any_frame_size(ray_local, tmp_path):
    """Ray Data sizes blocks by bytes and cuts them between rows: with a row per frame, 32-frame batches of
    1024x1024 video left the decoder as 33-row pieces (measured), and batches of a small video joined to a large
    one's were cut where the bytes fell. Packed into one row each, every decoded batch arrives whole."""
    import ray

    from pipeline.stages.incremental import refs_table
    from pipeline.stages.plan import BLOCK_BYTES
    from pipeline.stages.read import list_videos

    sizes = {"a": (1024, 1024), "b": (320, 240), "c": (1024, 1024)}
    for name, (width, height) in sizes.items():
        encode_video(tmp_path / f"{name}.mp4", num_frames=40, width=width, height=height)
    refs = refs_table(list_videos(str(tmp_path)))                       # a, b, c
    ds = ray.data.from_arrow(refs)
    ds.context.target_max_block_size = BLOCK_BYTES
    ds = ds.map_batches(FrameDecoder, batch_size=3, compute=ray.data.ActorPoolStrategy(size=1),
                        fn_constructor_kwargs=dict(size=1024, batch_size=16, pad=False))
    blocks = [unpack(block) for block in ds.iter_batches(batch_size=None, batch_format="numpy")]
    pieces = [(batch["video_id"][0], batch["frame_index"].tolist()) for block in blocks for batch in block
              if not batch["is_end"][0]]
    assert [frames for _, frames in pieces] == [list(range(start, min(start + 16, 40)))
                                                for _ in sizes for start in range(0, 40, 16)]
    assert [video_id for video_id, _ in pieces] == [video_id for video_id in refs["video_id"].to_pylist()
                                                    for _ in range(3)]
    assert max(len(block) for block in blocks) <= 2      # a block: one batch (or small ones and an end marker)
