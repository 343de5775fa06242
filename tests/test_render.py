"""Visual QA renders from a synthetic video (pipeline.synthetic.videos) and the Parquet rows its ground truth makes
through the real writer: the clip decodes, skeletons land on the keypoints in their track's colour, everything far
from people is untouched; the contact sheet has its grid size; the summary plot is a real picture of the tables."""

from __future__ import annotations

import io
import shutil

import av
import cv2
import fsspec
import numpy as np
import pytest

from pipeline.outputs.query import connect, query
from pipeline.outputs.render import (
    draw_people,
    footage_by_source,
    people_by_frame,
    plot_summary,
    plural,
    render_clip,
    render_contact_sheet,
    sheet_indices,
    summary_bin_seconds,
    track_colour,
)
from pipeline.stages.assemble import TrackedVideo
from pipeline.stages.batch import VideoHeader
from pipeline.stages.write import write_videos_now

from test_query import context, write_synthetic_output

NUM_FRAMES, FPS, EMPTY_FROM = 24, 10.0, 18     # rows of frames >= EMPTY_FROM are dropped: "nobody found there"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(output root, ref, ground truth, frames rows) of a 24-frame synthetic video with 3 people."""
    base = tmp_path_factory.mktemp("render")
    ref, gt = write_synthetic_output(base / "full", base / "videos", seed=11, num_frames=NUM_FRAMES, fps=FPS,
                                     scenario="mixed", num_people=3)
    frames = query(connect(str(base / "full")), "SELECT * FROM frames")
    frames = frames[frames.frame_index < EMPTY_FROM].reset_index(drop=True)
    return base, ref, gt, frames


def decode_all(path_or_file) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a video."""
    with av.open(path_or_file) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def near_people_mask(frames, frame_index: int, shape: tuple[int, int], margin: int = 30) -> np.ndarray:
    """(H, W) True within `margin` px of a drawn person's keypoint box, or of the label above it."""
    mask = np.zeros(shape, bool)
    people = people_by_frame(frames).get(frame_index)
    if people is None:
        return mask
    for kp in people[0]:
        xy = kp[kp[:, 2] > 0, :2]
        x0, y0 = np.floor(xy.min(0) - margin).astype(int)
        x1, y1 = np.ceil(xy.max(0) + margin).astype(int)
        mask[max(0, y0 - 20):max(0, y1), max(0, x0):max(0, x1 + 40)] = True   # label: above and to the right
    return mask


def test_track_colours_are_stable_and_distinct():
    colours = np.array([track_colour(i) for i in range(12)], float)
    assert track_colour(7) == track_colour(7)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[~np.eye(12, dtype=bool)].min() > 30


def test_draw_people_draws_joints_in_the_track_colour_and_nothing_else():
    image = np.full((100, 100, 3), 40, np.uint8)
    kp = np.full((1, 17, 3), np.nan, np.float32)
    kp[0, 5] = [30, 50, 0.9]                     # left shoulder
    kp[0, 7] = [70, 50, 0.9]                     # left elbow: limb (5, 7)
    kp[0, 9] = [70, 90, 0.0]                     # not found: no dot
    out = draw_people(image, kp, np.array([4]))
    assert tuple(out[50, 30]) == track_colour(4)                                           # joint
    assert np.abs(out[50, 50].astype(int) - track_colour(4)).max() < 30                    # limb (antialiased)
    assert (out[88:93, 68:73] == 40).all()                                                 # missing joint
    assert (out[70:, :60] == 40).all() and (image == 40).all()                             # input untouched


def test_clip_decodes_with_skeletons_on_people_and_the_rest_unchanged(synthetic):
    base, ref, gt, frames = synthetic
    out = base / "clip.mp4"
    assert render_clip(frames, ref["uri"], str(out)) == NUM_FRAMES
    rendered, source = decode_all(str(out)), decode_all(ref["uri"])
    assert rendered.shape == source.shape == (NUM_FRAMES, gt["height"], gt["width"], 3)

    people = people_by_frame(frames)
    checked = 0
    for t in (0, 9, 17):
        keypoints, ids = people[t]
        for p, (kp, track_id) in enumerate(zip(keypoints, ids)):
            others = np.concatenate([keypoints[:p], keypoints[p + 1:]]).reshape(-1, 3)
            for x, y, s in kp:
                clear = np.all(np.hypot(others[:, 0] - x, others[:, 1] - y) > 15) if len(others) else True
                if s <= 0 or not clear or not (3 <= x < gt["width"] - 3 and 3 <= y < gt["height"] - 3):
                    continue
                at = rendered[t, int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2]
                assert np.abs(at.reshape(-1, 3).mean(0) - track_colour(track_id)).max() < 45, (t, track_id, x, y)
                checked += 1
        far = ~near_people_mask(frames, t, rendered.shape[1:3])
        assert far.sum() > 5000
        diff = np.abs(rendered[t].astype(int) - source[t].astype(int))[far]
        assert diff.mean() < 3 and np.percentile(diff, 99) < 16, (t, diff.mean())
    assert checked > 20

    drawn = np.abs(rendered[:EMPTY_FROM].astype(int) - source[:EMPTY_FROM].astype(int)).max(axis=-1)
    untouched = np.abs(rendered[EMPTY_FROM:].astype(int) - source[EMPTY_FROM:].astype(int)).max(axis=-1)
    assert (drawn > 60).sum(axis=(1, 2)).min() > 200          # every frame with rows shows skeletons
    assert (untouched > 60).sum() == 0                         # frames without rows are only re-encoded


def test_clip_of_a_rotated_video_is_upright(synthetic, tmp_path):
    """Rows are in the displayed orientation, so the frames they are drawn on must be too (a phone's portrait video:
    stored 96x64, turned 90 degrees counter-clockwise; its stored top-left red square shows at the bottom-left)."""
    import faults

    source = faults.write_rotated(tmp_path / "portrait.mp4", 90, num_frames=6)
    assert render_clip(synthetic[3].iloc[:0], str(source), str(tmp_path / "clip.mp4")) == 6
    rendered = decode_all(str(tmp_path / "clip.mp4"))
    assert rendered.shape == (6, 96, 64, 3)
    red = (rendered[0, ..., 0] > 180) & (rendered[0, ..., 1] < 110)
    np.testing.assert_allclose(np.argwhere(red).mean(axis=0), [96 - 8.5, 7.5], atol=3)  # (row, column)


def test_clip_to_an_fsspec_uri_and_first_frames_only(synthetic):
    base, ref, _, frames = synthetic
    assert render_clip(frames, ref["uri"], "memory://render-test/clip.mp4", max_frames=5) == 5
    data = fsspec.filesystem("memory").cat_file("/render-test/clip.mp4")
    assert len(decode_all(io.BytesIO(data))) == 5


def test_contact_sheet_grid(synthetic):
    base, ref, gt, frames = synthetic
    out = base / "sheet.png"
    assert render_contact_sheet(frames, ref["uri"], str(out), count=6, columns=4, tile_width=160) == (240, 640)
    sheet = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert sheet.shape == (240, 640, 3)                         # 2 rows of 120 px, 4 columns of 160 px
    tiles = [sheet[r * 120:(r + 1) * 120, c * 160:(c + 1) * 160] for r in range(2) for c in range(4)]
    assert (tiles[6] == 0).all() and (tiles[7] == 0).all()      # 6 frames on a 4 x 2 grid: two empty cells
    colours = [track_colour(i) for i in frames["track_id"].unique()]
    for tile in tiles[:4]:                                      # frames 0, 5, 9, 14 have rows: skeletons drawn
        near = [(np.abs(tile.astype(int) - c).max(axis=-1) < 30).sum() for c in colours]
        assert max(near) > 30
    assert render_contact_sheet(frames, ref["uri"], str(base / "s.png"), count=4, tile_width=100)[1] == 200


@pytest.mark.parametrize("width, height, tile", [(960, 540, 960), (1280, 720, 960), (320, 180, 320)])
def test_contact_sheet_tiles_keep_the_videos_width_up_to_960(synthetic, tmp_path, width, height, tile):
    """A street scene's people stay big enough to judge: each tile is the video's own width, capped at 960 px."""
    from conftest import encode_video

    video = encode_video(tmp_path / "wide.mp4", num_frames=6, width=width, height=height)
    no_rows = synthetic[3].iloc[:0]
    assert render_contact_sheet(no_rows, str(video), str(tmp_path / "s.png"), count=3) == \
        (2 * round(height * tile / width), 2 * tile)            # 3 frames: a 2 x 2 grid of tiles


def test_sheet_indices_are_even_and_snap_to_rows():
    np.testing.assert_array_equal(sheet_indices(24, np.array([], np.int64), 6), [0, 5, 9, 14, 18, 23])
    np.testing.assert_array_equal(sheet_indices(100, np.arange(0, 100, 10), 5), [0, 20, 50, 70, 90])
    np.testing.assert_array_equal(sheet_indices(100, np.array([3]), 3), [3, 50, 99])   # only near rows snap
    np.testing.assert_array_equal(sheet_indices(3, np.array([0]), 10), [0, 1, 2])


def test_summary_plot(synthetic, tmp_path):
    base, _, gt, _ = synthetic
    con = connect(str(base / "full"))
    out = tmp_path / "summary.png"
    table = plot_summary(con, str(out))
    image = cv2.imread(str(out))
    assert image.shape == (600, 1000, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50 and image.std() > 20     # axes, lines, text
    assert summary_bin_seconds(2.3) == 1.0 and summary_bin_seconds(3600) == 60.0
    expected = {}
    for frame in gt["frames"]:                                  # distinct tracks per 1 s bin, from the truth
        expected.setdefault(int(frame["timestamp_s"]), set()).update(p["track_id"] for p in frame["people"])
    assert dict(zip(table["t_s"].astype(int), table["people"])) == {k: len(v) for k, v in expected.items() if v}
    assert table["mean_score"].between(0.5, 0.9).all()
    (tmp_path / "empty").mkdir()
    assert plot_summary(connect(str(tmp_path / "empty")), str(tmp_path / "empty.png")).empty
    assert cv2.imread(str(tmp_path / "empty.png")).shape == (600, 1000, 3)


def test_summary_draws_each_source_over_its_footage_only(synthetic, tmp_path):
    """A camera whose videos hold nobody is a line at 0 along its footage; past a source's footage nothing is drawn
    (not a bar at 0)."""
    base, ref, _, _ = synthetic
    root = tmp_path / "out"
    shutil.copytree(base / "full", root)
    quiet = {"video_id": "q", "uri": "/q.mp4", "source": "empty-cam", "size": 10}
    write_videos_now(context(str(root), run_id="r"), [(quiet, TrackedVideo.from_frames([], num_frames=20))],
                     headers={"q": VideoHeader(64, 48, 20.0, 1.0)})
    con = connect(str(root))
    footage = footage_by_source(con)
    span = query(con, "SELECT max(timestamp_s) AS t FROM frames")["t"][0]
    assert footage == {"empty-cam": 1.0, ref["source"]: pytest.approx(span)}
    plot_summary(con, str(tmp_path / "s.png"), bin_s=0.5)
    assert cv2.imread(str(tmp_path / "s.png")).shape == (600, 1000, 3)
    assert [plural(n, "video") for n in (0, 1, 2)] == ["0 videos", "1 video", "2 videos"]


def test_render_command(synthetic, tmp_path, capsys):
    from jobs.render import main

    base, ref, _, _ = synthetic
    root = str(base / "full")
    assert main([root, "--video-id", ref["video_id"], "--sheet", str(tmp_path / "a.png"), "--frames", "4"]) == 0
    assert cv2.imread(str(tmp_path / "a.png")).shape == (480, 640, 3)
    assert main([root, "--video-id", "nope", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "not in the output" in capsys.readouterr().err
    assert main([root, "--video-id", ref["video_id"], "--source-video", str(tmp_path / "gone.mp4"),
                 "--out", str(tmp_path / "c.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([root, "--out", str(tmp_path / "c.mp4")])         # a clip needs --video-id
