"""Synthetic people: determinism, keypoints on the drawn figure, COCO export, videos that decode exactly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from jobs.synth import main as synth_main
from pipeline.pose.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from pipeline.synthetic import (
    HELDOUT_BACKGROUNDS,
    TRAIN_BACKGROUNDS,
    render_scene,
    video_ground_truth_to_coco,
    write_coco_dataset,
    write_video,
)
from pipeline.synthetic.appearance import sample_appearance
from pipeline.synthetic.backgrounds import resolve_styles
from pipeline.synthetic.figures import View, sample_body_shape
from pipeline.synthetic.poses import DEG, JOINT_LIMITS_DEG, Pose, sample_pose
from pipeline.synthetic.scenes import CameraEffects, Person, paint_people

BG = np.array([7.0, 250.0, 3.0], dtype=np.float32)   # a colour no skin, cloth or hair texture produces


def _video_reader(path):
    """decord, imported late on purpose: loaded before cv2 and av (which pipeline.synthetic imports), its bundled
    libraries break cv2's PNG reading and libvpx encoding for the rest of the process."""
    import decord

    return decord.VideoReader(str(path))


def _single(yaw_deg: float, seed: int = 0, pose: Pose | None = None, x: float = 64.0):
    """One person, 150 px tall, on a flat background, no camera effects: (image, keypoints (K, 3))."""
    rng = np.random.default_rng(seed)
    person = Person(sample_body_shape(rng), sample_appearance(rng),
                    pose or Pose(shoulder_abd=np.array([10.0, 10.0]) * DEG),
                    View(yaw=yaw_deg * DEG, x=x, y=170.0, height=150.0))
    bg = np.broadcast_to(BG, (180, 128, 3)).copy()
    image, truth = paint_people(bg, [person], rng, CameraEffects(outline=1.0), np.array([-0.3, -0.5, 0.8]))
    return image, truth.keypoints[0]


def test_same_seed_same_scene_and_other_seed_differs():
    a_img, a_kp = render_scene(np.random.default_rng(42), size=(128, 96), num_people=(2, 3))
    b_img, b_kp = render_scene(np.random.default_rng(42), size=(128, 96), num_people=(2, 3))
    c_img, _ = render_scene(np.random.default_rng(43), size=(128, 96), num_people=(2, 3))
    assert a_img.shape == (96, 128, 3) and a_img.dtype == np.uint8
    assert a_kp.dtype == np.float32 and a_kp.shape[1:] == (NUM_KEYPOINTS, 3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_kp, b_kp)
    assert np.abs(a_img.astype(int) - c_img.astype(int)).mean() > 5


def test_visible_keypoints_lie_on_figure_pixels():
    hits = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        people = [Person(sample_body_shape(rng), sample_appearance(rng), sample_pose(rng),
                         View(yaw=rng.uniform(-np.pi, np.pi), x=rng.uniform(30, 130), y=rng.uniform(120, 200),
                              height=rng.uniform(60, 160))) for _ in range(2)]
        bg = np.broadcast_to(BG, (200, 160, 3)).copy()
        image, truth = paint_people(bg, people, rng, CameraEffects(outline=1.0), np.array([0.0, -0.5, 0.8]))
        for kp in truth.keypoints:
            for x, y, v in kp[kp[:, 2] == 2]:
                pixel = image[int(round(y)), int(round(x))].astype(float)
                assert np.abs(pixel - BG).max() > 30, (seed, x, y, pixel)
                hits += 1
    assert hits > 200


def test_facing_decides_face_visibility():
    _, front = _single(0)
    _, back = _single(180)
    _, right = _single(90)          # walks to the image right: shows the person's right side
    face = [KEYPOINT_INDEX[n] for n in ("nose", "left_eye", "right_eye")]
    assert (front[face, 2] == 2).all()
    assert (back[face, 2] == 1).all()
    assert right[KEYPOINT_INDEX["right_eye"], 2] == 2 and right[KEYPOINT_INDEX["left_eye"], 2] == 1
    assert right[KEYPOINT_INDEX["left_ear"], 2] == 1 and right[KEYPOINT_INDEX["right_ear"], 2] == 2
    # person's left is the viewer's right when they face the camera
    assert front[KEYPOINT_INDEX["left_shoulder"], 0] > front[KEYPOINT_INDEX["right_shoulder"], 0]
    assert back[KEYPOINT_INDEX["left_shoulder"], 0] < back[KEYPOINT_INDEX["right_shoulder"], 0]


def test_keypoints_outside_image_are_zero_with_v0():
    _, kp = _single(0, x=-20.0)      # centred left of the image: the left half of the body is inside
    outside = kp[:, 2] == 0
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(kp[outside, :2], 0.0)


def test_sampled_poses_respect_joint_limits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        pose = sample_pose(rng)
        for name, (lo, hi) in JOINT_LIMITS_DEG.items():
            value = np.asarray(getattr(pose, name)) / DEG
            assert (value >= lo - 1e-6).all() and (value <= hi + 1e-6).all(), (name, value)


def test_background_splits_are_disjoint_and_validated():
    assert not set(TRAIN_BACKGROUNDS) & set(HELDOUT_BACKGROUNDS)
    assert resolve_styles("heldout") == HELDOUT_BACKGROUNDS
    with pytest.raises(ValueError, match="unknown background"):
        resolve_styles("marble")


def test_coco_dataset_loads_and_is_consistent(tmp_path):
    path = write_coco_dataset(tmp_path / "coco", num_images=6, seed=3, image_size=(160, 128),
                              num_people=(1, 3), background="heldout", min_keypoint_area=0)
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 6
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 6
    for img in coco.loadImgs(coco.getImgIds()):
        assert (path.parent / "images" / img["file_name"]).exists()
        assert (img["width"], img["height"]) == (160, 128) and img["background"] in HELDOUT_BACKGROUNDS
    for ann in anns:
        kp = np.array(ann["keypoints"], dtype=float).reshape(NUM_KEYPOINTS, 3)
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum()) > 0
        x, y, w, h = ann["bbox"]
        labelled = kp[kp[:, 2] > 0]
        assert (labelled[:, 0] >= x - 1).all() and (labelled[:, 0] <= x + w + 1).all()
        assert (labelled[:, 1] >= y - 1).all() and (labelled[:, 1] <= y + h + 1).all()
        assert 0 < ann["area"] <= w * h + 1 and ann["iscrowd"] == 0 and ann["category_id"] == 1


def test_worker_processes_write_the_same_dataset(tmp_path):
    options = dict(num_images=5, seed=11, image_size=(96, 96), num_people=(1, 2), person_height=(40, 80))
    one = write_coco_dataset(tmp_path / "one", **options)
    two = write_coco_dataset(tmp_path / "two", workers=2, **options)
    assert one.read_text() == two.read_text()
    for i in range(5):
        name = f"images/{i:06d}.jpg"
        assert (one.parent / name).read_bytes() == (two.parent / name).read_bytes(), name


def test_small_people_get_no_keypoints(tmp_path):
    path = write_coco_dataset(tmp_path / "c", num_images=4, seed=5, image_size=(128, 128),
                              person_height=(40, 60), min_keypoint_area=32 ** 2)
    anns = json.loads(path.read_text())["annotations"]
    assert anns and all(a["num_keypoints"] == 0 for a in anns if a["area"] < 32 ** 2)


def test_video_decodes_to_ground_truth_frames_and_people_move(tmp_path):
    gt_path = write_video(tmp_path / "cam" / "walk.mp4", seed=1, num_frames=12, fps=10.0, size=(160, 120),
                          num_people=2, scenario="cross")
    assert gt_path == tmp_path / "cam" / "walk.json"
    gt = json.loads(gt_path.read_text())
    reader = _video_reader(tmp_path / "cam" / "walk.mp4")
    assert len(reader) == gt["num_frames"] == len(gt["frames"]) == 12
    assert reader[0].shape == (120, 160, 3)
    assert gt["frames"][3]["timestamp_s"] == pytest.approx(0.3)
    first = {p["track_id"]: np.array(p["keypoints"]).reshape(-1, 3) for p in gt["frames"][0]["people"]}
    last = {p["track_id"]: np.array(p["keypoints"]).reshape(-1, 3) for p in gt["frames"][-1]["people"]}
    assert set(first) == set(last) == {1, 2}
    for tid in first:
        both = (first[tid][:, 2] > 0) & (last[tid][:, 2] > 0)
        shift = np.abs(first[tid][both, 0] - last[tid][both, 0]).mean()
        assert shift > 5, (tid, shift)
    coco = video_ground_truth_to_coco(gt_path)
    assert len(coco["images"]) == 12 and all("track_id" in a for a in coco["annotations"])
    again = write_video(tmp_path / "again" / "walk.mp4", seed=1, num_frames=12, fps=10.0, size=(160, 120),
                        num_people=2, scenario="cross")
    assert json.loads(again.read_text())["frames"] == gt["frames"]


@pytest.mark.parametrize("ext", [".avi", ".mkv", ".webm"])
def test_other_containers_decode(tmp_path, ext):
    gt_path = write_video(tmp_path / f"clip{ext}", seed=2, num_frames=8, size=(128, 96), scenario="mixed")
    reader = _video_reader(tmp_path / f"clip{ext}")
    assert len(reader) == json.loads(gt_path.read_text())["num_frames"] == 8
    frame = reader[4].asnumpy()
    assert frame.shape == (96, 128, 3) and frame.std() > 5


def test_video_rejects_odd_size_and_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "a.mp4", seed=0, size=(161, 120))
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "a.gif", seed=0)


def test_cli_images_and_sample(tmp_path):
    assert synth_main(["images", "--out", str(tmp_path / "img"), "--num", "2", "--seed", "0", "--size", "96"]) == 0
    assert len(json.loads((tmp_path / "img" / "annotations.json").read_text())["images"]) == 2
    assert synth_main(["sample", "--out", str(tmp_path / "sample"), "--num", "2"]) == 0
    videos = sorted(p.relative_to(tmp_path / "sample").as_posix() for p in (tmp_path / "sample").rglob("*.mp4"))
    assert videos == ["cam1/clip_000.mp4", "cam2/clip_001.mp4", "photos/astronaut.mp4", "photos/camera.mp4"]
    assert all((tmp_path / "sample" / v).with_suffix(".json").exists() for v in videos[:2])  # synthetic: ground truth
    assert synth_main(["sample", "--out", str(tmp_path / "synthetic"), "--num", "1", "--no-photos"]) == 0
    assert not (tmp_path / "synthetic" / "photos").exists()


def test_webm_encodes_when_decord_was_loaded_first(tmp_path):
    """decord's bundled libvpx cannot encode; the writer must notice and encode in a clean subprocess."""
    script = (
        "import decord, sys\n"
        "from pipeline.synthetic import write_video\n"
        "write_video(sys.argv[1], seed=4, num_frames=6, size=(96, 64))\n"
        "print(len(decord.VideoReader(sys.argv[1])))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "late.webm")], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "6"
