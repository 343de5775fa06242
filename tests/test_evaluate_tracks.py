"""The tracking evaluation of a run's output against ground-truth sidecars: perfect rows score 1, swaps score less."""

import json

import pytest

from jobs.evaluate_tracks import evaluate_output, main
from pipeline.stages.assemble import TrackedVideo
from pipeline.stages.read import list_videos
from pipeline.stages.write import write_videos_now
from pipeline.synthetic.videos import write_video

from test_query import context, ground_truth_frames, tracked_from_ground_truth


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    videos = tmp_path_factory.mktemp("videos")
    gt = json.loads(write_video(videos / "cam1" / "cross.mp4", seed=3, num_frames=30, scenario="cross",
                                supersample=1).read_text())
    [ref] = list_videos(str(videos))
    return ref, gt


def test_ground_truth_rows_score_perfectly(tmp_path, crossing, capsys):
    ref, gt = crossing
    write_videos_now(context(str(tmp_path)), [(ref, tracked_from_ground_truth(gt))])
    table = evaluate_output(str(tmp_path))
    assert len(table) == 1 and table.loc[0, "scenario"] == "cross"
    assert table.loc[0, "idf1"] == pytest.approx(1.0) and table.loc[0, "id_switches"] == 0
    assert table.loc[0, "AP"] == pytest.approx(1.0) and table.loc[0, "PCK"] == pytest.approx(1.0)
    assert main([str(tmp_path)]) == 0 and "IDF1 1.000" in capsys.readouterr().out


def test_swapped_ids_and_shifted_keypoints_score_less(tmp_path, crossing):
    ref, gt = crossing
    frames = ground_truth_frames(gt)
    for i in range(len(frames) // 2, len(frames)):   # ids swap halfway: one switch per person
        frame_index, time_s, width, height, ids, scores, keypoints = frames[i]
        keypoints = keypoints.copy()
        keypoints[..., :2] += 6.0
        frames[i] = (frame_index, time_s, width, height, ids[::-1].copy(), scores, keypoints)
    write_videos_now(context(str(tmp_path)), [(ref, TrackedVideo.from_frames(frames))])
    row = evaluate_output(str(tmp_path)).iloc[0]
    assert row.id_switches >= 2 and row.idf1 < 0.8 and row.AP < 1.0


def test_output_without_ground_truth_is_a_clear_error(tmp_path, capsys):
    ref = {"video_id": "x-1", "uri": str(tmp_path / "x.mp4"), "source": "s"}
    write_videos_now(context(str(tmp_path / "out")), [(ref, TrackedVideo.from_frames([]))])
    assert main([str(tmp_path / "out")]) == 2 and "ground-truth" in capsys.readouterr().err
