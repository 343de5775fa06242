"""The default (top-down, real-trained) model on real people: photos shipped with posepipe, labelled by hand, as
still images, as a COCO set for `posepipe evaluate`, and animated into videos with exactly known motion."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from pipeline.models.blazepose.topdown import TopDownConfig
from pipeline.models.pose_model import TopDownModel, load_pose_model
from pipeline.photos import FOLDER, pan_and_zoom, pan_and_zoom_matrices
from pipeline.pose.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from pipeline.pose.letterbox import Letterbox
from pipeline.stages.batch import VideoHeader, concat, end_marker, frame_batch
from pipeline.stages.infer import PoseEstimator

from conftest import ray_block

REAL_DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "real-dev"
# Read off the photos by eye (pixel centres), with how far a prediction may be (px, at 512x512): the face is sharp,
# a shoulder under a space suit or a coat is a guess within its width.
LABELS = {
    "astronaut.png": {"nose": (219, 127), "left_eye": (246, 104), "right_eye": (198, 101)},
    "camera.png": {"nose": (252, 165), "right_eye": (236, 147), "right_ear": (188, 142)},
}
TOLERANCE = {"nose": 10, "left_eye": 10, "right_eye": 10, "right_ear": 25}


def read_photo(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(FOLDER / name)), cv2.COLOR_BGR2RGB)


def frames_of(images: list[np.ndarray], size: int = 1024) -> tuple[np.ndarray, Letterbox]:
    letterbox = Letterbox.fit(images[0].shape[1], images[0].shape[0], size)
    return np.stack([letterbox.apply(image) for image in images]), letterbox


@pytest.fixture(scope="module")
def estimator() -> PoseEstimator:
    """The default model as a run's inference actor holds it (model.checkpoint and precision defaults)."""
    from pipeline.config import ModelSettings

    settings = ModelSettings()
    return PoseEstimator(settings.checkpoint, device="cpu", precision=settings.precision, threads=2)


@pytest.mark.parametrize("name", sorted(LABELS))
def test_the_default_model_finds_the_person_in_each_photo(estimator, name):
    image = read_photo(name)
    frames, letterbox = frames_of([image])
    [(keypoints, scores)] = estimator.predict(frames, np.array([image.shape[1]]), np.array([image.shape[0]]))
    assert isinstance(estimator.model, TopDownModel) and len(scores) >= 1
    best = letterbox.to_image(keypoints[int(np.argmax(scores)), :, :2])         # (K, 2) photo pixels
    for joint, expected in LABELS[name].items():
        error = float(np.linalg.norm(best[KEYPOINT_INDEX[joint]] - expected))
        assert error < TOLERANCE[joint], f"{name} {joint}: {error:.1f} px from the label"
    assert np.all((keypoints[..., 2] >= 0) & (keypoints[..., 2] <= 1)) and np.all((scores >= 0) & (scores <= 1))


def test_frames_without_people_give_no_rows_and_no_error(estimator):
    out = estimator(ray_block([
        frame_batch("v", np.arange(2), np.zeros(2), np.zeros((2, 1024, 1024, 3), np.uint8), 640, 480),
        end_marker("v", 1024, 2, header=VideoHeader(fps=25.0, duration_s=0.08))]))
    assert out["person_index"].tolist() == [-1, -1, -1] and out["error"].tolist() == ["", "", ""]


def test_frames_at_their_own_size_find_the_people_of_letterboxed_frames(estimator):
    """A run hands a top-down model frames unpadded and never enlarged, videos of several sizes in one block; the
    actor letterboxes them on its device and finds what letterboxed frames give."""
    from pipeline.config import ModelSettings

    own_size = PoseEstimator(ModelSettings().checkpoint, device="cpu", threads=2, frame_size=1024)
    astronaut, camera = read_photo("astronaut.png"), read_photo("camera.png")[:400]          # 512x512, 512x400
    pictures = {"a": (np.stack([astronaut, astronaut[:, ::-1]]), 512, 512),
                "c": (np.stack([camera, camera[:, ::-1]]), 512, 400)}
    got = own_size(ray_block([frame_batch(name, np.arange(2), np.zeros(2), frames, width, height)
                              for name, (frames, width, height) in pictures.items()]))
    expected = estimator(ray_block([frame_batch(name, np.arange(2), np.zeros(2), frames_of(list(frames))[0], width,
                                                height) for name, (frames, width, height) in pictures.items()]))
    assert got["video_id"].tolist() == expected["video_id"].tolist() and (got["person_index"] >= 0).all()
    np.testing.assert_allclose(got["keypoints"], expected["keypoints"], atol=1e-3)


def test_a_call_holding_several_decoded_batches_runs_them_one_at_a_time():
    """Ray may hand several decoded batches in one call; the actor runs them one by one (memory follows
    decode.batch_size) and finds, batch by batch, what one call per decoded batch finds."""
    from pipeline.config import ModelSettings

    estimator = PoseEstimator(ModelSettings().checkpoint, device="cpu", threads=2, frame_size=512)
    clips = {"a": pan_and_zoom(read_photo("astronaut.png"), 6, (480, 360)),
             "c": pan_and_zoom(read_photo("camera.png"), 4, (360, 480))}
    batches = [frame_batch(name, np.arange(start, min(start + 4, len(clip))), np.zeros(min(4, len(clip) - start)),
                           np.stack(clip[start:start + 4]), *clip[0].shape[1::-1])
               for name, clip in clips.items() for start in range(0, len(clip), 4)]      # 4 + 2, then 4 frames
    sizes, predict = [], estimator.predict
    estimator.predict = lambda frames, *args: sizes.append(len(frames)) or predict(frames, *args)
    got = estimator(ray_block(batches))
    assert sizes == [4, 2, 4]                                                  # one decoded batch per model call
    expected = concat([estimator(ray_block([batch])) for batch in batches])
    assert got["video_id"].tolist() == expected["video_id"].tolist() and (got["person_index"] >= 0).any()
    np.testing.assert_allclose(got["keypoints"], expected["keypoints"], atol=1e-4)


class HostReads(TorchFunctionMode):
    """Counts the torch calls that read a tensor's values on the host: on a GPU each makes the host wait for the
    device (`.cpu()`, `.item()`, `.tolist()`, truth values, `nonzero`, boolean-mask indexing...). `.numpy()` is not
    counted: a device tensor must come to the host before it, and that is counted."""

    READS = {torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__, torch.nonzero, torch.Tensor.nonzero, torch.argwhere,
             torch.masked_select, torch.Tensor.masked_select, torch.unique, torch.Tensor.unique}

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        index = args[1] if func is torch.Tensor.__getitem__ else ()
        masks = [i for i in (index if isinstance(index, tuple) else (index,))
                 if isinstance(i, torch.Tensor) and i.dtype == torch.bool]
        if func in self.READS or masks:
            self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_a_decoded_batch_reads_device_values_at_most_detect_every_plus_two_times(monkeypatch):
    """The host-device waits of tests/test_cuda.py, counted on a CPU (no GPU needed): the person finding as a GPU
    runs it (torch nets, the one-gather crop sampler), over one 32-frame batch of one video of real people."""
    from pipeline.models.blazepose import topdown
    from pipeline.models.blazepose.roi import gather_rois
    from pipeline.models.pose_model import picture_boxes
    from pipeline.photos import group_frames

    picture = (640, 360)
    letterbox = Letterbox.fit(*picture, 1024)
    frames = torch.from_numpy(np.stack([letterbox.apply(frame) for frame in group_frames(32, picture)]))
    config = TopDownConfig()
    model, _ = load_pose_model("blazepose-heavy", torch.device("cpu"), "fp32", topdown=config, runtime="torch")
    monkeypatch.setattr(topdown, "sample_rois", lambda frames, frame, matrices, size, padding_mode="zeros":
                        gather_rois(frames, frame, matrices, size, padding_mode))
    content = torch.from_numpy(picture_boxes(np.full(32, picture[0]), np.full(32, picture[1]), 1024))
    with HostReads() as mode:
        people = model.pose.estimate(frames, content, [list(range(32))])
    assert sum(len(p.scores) for p in people) >= 32                            # people found: every step ran
    assert len(mode.reads) <= config.detect_every + 2, mode.reads


def counting_detector(model: TopDownModel) -> list[int]:
    """Record how many frames each detector call covers."""
    calls: list[int] = []
    detect = model.pose.detect
    model.pose.detect = lambda frames, content: calls.append(len(frames)) or detect(frames, content)
    return calls


def test_videos_follow_people_between_detector_runs_and_detect_again_when_one_is_lost():
    model, _ = load_pose_model("blazepose-heavy", torch.device("cpu"), "fp32", topdown=TopDownConfig(detect_every=4))
    photo = read_photo("astronaut.png")
    clip = pan_and_zoom(photo, 12, (480, 360))
    frames, letterbox = frames_of(clip)
    content = torch.tensor([letterbox.picture_box] * len(clip), dtype=torch.float32)
    calls = counting_detector(model)
    people = model.pose.estimate(torch.from_numpy(frames), content, [list(range(12))])
    assert sum(calls) == 3                                                     # frames 0, 4 and 8 of 12
    nose = KEYPOINT_INDEX["nose"]
    for t, (found, matrix) in enumerate(zip(people, pan_and_zoom_matrices(photo.shape[:2], 12, (480, 360)))):
        expected = matrix @ [*LABELS["astronaut.png"]["nose"], 1.0]
        errors = np.linalg.norm(letterbox.to_image(found.keypoints[:, nose, :2]) - expected, axis=-1)
        assert len(errors) and errors.min() < 12, f"frame {t}: nose {errors} px from where the camera moved it"

    frames[5] = 0                                                              # the person vanishes for a frame
    calls.clear()
    people = model.pose.estimate(torch.from_numpy(frames), content, [list(range(12))])
    assert len(people[5].scores) == 0 and len(people[6].scores) >= 1 and len(people[7].scores) >= 1
    assert sum(calls) == 3 + 1                 # runs start at 0, 4, 8; frame 6 follows a frame that lost her


@pytest.mark.parametrize("carry_over", [False, True])
def test_a_person_the_detector_misses_at_a_runs_first_frame_is_carried_over_when_asked(carry_over):
    """The detector misses her on frame 4, the first of the second run. Without `carry_over` she is gone until the
    third run (frame 8); with it she is followed on from frame 3, where the camera moved her, and found once."""
    config = TopDownConfig(detect_every=4, carry_over=carry_over)
    model, _ = load_pose_model("blazepose-heavy", torch.device("cpu"), "fp32", topdown=config)
    photo = read_photo("astronaut.png")
    clip = pan_and_zoom(photo, 12, (480, 360))
    frames, letterbox = frames_of(clip)
    content = torch.tensor([letterbox.picture_box] * len(clip), dtype=torch.float32)
    detect, calls = model.pose.detect, []

    def blind_on_frame_4(frames, content):
        found = detect(frames, content)
        if not calls:                                                          # step 0: frames 0, 4 and 8
            found[1] = (np.zeros(0, np.float32), np.zeros((0, 2, 2), np.float32))
        calls.append(len(frames))
        return found

    model.pose.detect = blind_on_frame_4
    people = model.pose.estimate(torch.from_numpy(frames), content, [list(range(12))])
    assert calls == [3]                                                        # the detector ran as scheduled only
    counts = [len(found.scores) for found in people]
    assert counts[:4] == [1] * 4 and counts[8:] == [1] * 4
    assert counts[4:8] == ([1] * 4 if carry_over else [0] * 4)
    nose, camera = KEYPOINT_INDEX["nose"], pan_and_zoom_matrices(photo.shape[:2], 12, (480, 360))
    for t in range(4, 8) if carry_over else ():
        expected = camera[t] @ [*LABELS["astronaut.png"]["nose"], 1.0]
        error = np.linalg.norm(letterbox.to_image(people[t].keypoints[0, nose, :2]) - expected)
        assert error < 12, f"frame {t}: nose {error:.1f} px from where the camera moved it"


def labelled_set(folder: Path) -> Path:
    """The two photos as a COCO keypoint set with the hand labels (v = 2) and a box around each person."""
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    boxes = {"astronaut.png": [60, 20, 320, 492], "camera.png": [0, 60, 340, 452]}
    for i, name in enumerate(sorted(LABELS), start=1):
        (folder / "images" / name).write_bytes((FOLDER / name).read_bytes())
        keypoints = np.zeros((NUM_KEYPOINTS, 3))
        for joint, (x, y) in LABELS[name].items():
            keypoints[KEYPOINT_INDEX[joint]] = (x, y, 2)
        images.append({"id": i, "file_name": name, "width": 512, "height": 512})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "keypoints": keypoints.reshape(-1).tolist(),
                            "num_keypoints": len(LABELS[name]), "bbox": boxes[name], "iscrowd": 0,
                            "area": boxes[name][2] * boxes[name][3]})
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                         "categories": [{"id": 1, "name": "person"}]}))
    return folder


def test_evaluate_runs_the_default_model_end_to_end_and_with_ground_truth_boxes(tmp_path, capsys):
    from jobs.evaluate import main

    data = labelled_set(tmp_path / "photos")
    assert main(["--data", str(data), "--save-results", str(tmp_path / "r.json")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    results = json.loads((tmp_path / "r.json").read_text())
    assert metrics["AP"] > 0.8 and metrics["people"] == 2 and len(results) == metrics["predictions"] >= 2
    assert {r["image_id"] for r in results} == {1, 2} and all(len(r["keypoints"]) == 51 for r in results)
    assert main(["--data", str(data), "--gt-boxes", "--by", "file_name"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["predictions"] == 2 and metrics["AP"] > 0.8
    assert set(metrics["by_file_name"]) == set(LABELS)
    assert main(["--data", str(data), "--checkpoint", "models/posepipe-synthetic.pt", "--gt-boxes"]) == 2
    assert "top-down models only" in capsys.readouterr().err


@pytest.mark.skipif(not (REAL_DEV / "annotations.json").is_file(), reason="needs ../shared/real-dev (real photos)")
def test_real_people_accuracy_of_the_default_model(capsys):
    """OKS AP on real photos with COCO-17 truth (docs/real-people.md has the table: 0.487 with the defaults)."""
    from jobs.evaluate import main

    assert main(["--data", str(REAL_DEV)]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] >= 0.45


@pytest.mark.slow
def test_a_run_on_videos_of_real_people_tracks_them_where_the_camera_moved_them(ray_local, tmp_path):
    """The whole job, default config, on the clips `make demo` makes of the photos: each person is one track over
    (nearly) every frame, the nose where the known pan and zoom put it."""
    import pandas as pd

    from jobs.run import load_run_config, parse_args, run
    from pipeline.photos import write_photo_clips

    write_photo_clips(tmp_path / "in" / "photos", num_frames=24)
    summary = run(load_run_config(parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])))
    assert summary.status == "clean" and summary.videos_ok == 2 and summary.frames == 48
    frames = pd.read_parquet(tmp_path / "out" / "frames")
    # the same rows whatever the pools and Ray's scheduling: each decoded batch is followed through as a whole
    again = run(load_run_config(parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "again"),
                                            "--set", "decode.workers=2", "--set", "model.batch_size=4"])))
    assert again.people == summary.people and again.tracks == summary.tracks
    columns = [c for c in frames.columns if c not in ("date",)]
    order = ["uri", "frame_index", "person_index"]
    pd.testing.assert_frame_equal(frames[columns].sort_values(order).reset_index(drop=True),
                                  pd.read_parquet(tmp_path / "again" / "frames")[columns].sort_values(order)
                                  .reset_index(drop=True))
    scores = frames[[c for c in frames.columns if c.endswith("_score")]].to_numpy()   # person and keypoint scores
    assert np.nanmin(scores) >= 0 and np.nanmax(scores) <= 1
    for name, labels in LABELS.items():
        video = frames[frames.uri.str.endswith(Path(name).stem + ".mp4")]
        tracked = video[video.track_id >= 0]
        main_track = tracked.track_id.value_counts().idxmax()
        person = tracked[tracked.track_id == main_track].set_index("frame_index").sort_index()
        assert len(person) >= 22, f"{name}: the person's track covers {len(person)} of 24 frames"
        matrices = pan_and_zoom_matrices((512, 512), 24, (480, 360))
        expected = np.array([matrices[t] @ [*labels["nose"], 1.0] for t in person.index])
        errors = np.linalg.norm(person[["nose_x", "nose_y"]].to_numpy() - expected, axis=-1)
        assert np.median(errors) < 10, f"{name}: median nose error {np.median(errors):.1f} px"


@pytest.mark.slow
def test_compiled_nets_find_the_same_people(tmp_path, monkeypatch):
    """model.compile: torch.compile on both nets gives the eager model's people (to rounding), with one graph per
    net whatever the number of views and crops.

    A fresh inductor cache: its FX graph cache is keyed without the vector ISA, so a run under
    ATEN_CPU_CAPABILITY=default reused vectorized kernels from an earlier run and failed to compile them."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    image = read_photo("astronaut.png")
    frames, _ = frames_of([image, image[:, ::-1].copy(), read_photo("camera.png")])
    size = np.array([image.shape[1]] * 3)
    eager = PoseEstimator("blazepose-lite", device="cpu", precision="fp32", threads=2, runtime="torch")
    compiled = PoseEstimator("blazepose-lite", device="cpu", precision="fp32", threads=2, compile_model=True)
    torch._dynamo.reset()
    counters.clear()
    for n in (2, 1, 3):                                     # 14-42 detector views, 1-6 crops per landmark call
        found = zip(eager.predict(frames[:n], size[:n], size[:n]), compiled.predict(frames[:n], size[:n], size[:n]))
        for (kp, scores), (kp_c, scores_c) in found:
            assert len(scores) == len(scores_c) >= 1
            np.testing.assert_allclose(kp_c, kp, atol=1.0)  # a heatmap peak's parabola moves with rounding
    assert counters["stats"]["unique_graphs"] == 2          # the detector's and the landmark net's


def test_a_decode_batch_that_splits_the_detector_runs_is_refused(tmp_path, capsys):
    from jobs.run import EXIT_USAGE, main
    from pipeline.photos import write_photo_clips

    write_photo_clips(tmp_path / "in", num_frames=4)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--set", "decode.batch_size=30"]) == EXIT_USAGE
    assert "decode.batch_size (30) must be a multiple of topdown.detect_every (4)" in capsys.readouterr().err
