"""Training samples from a real COCO folder: targets decode back to the annotations, augmentation keeps image and
keypoints together, and a flip swaps left and right."""

from __future__ import annotations

import json

import cv2
import fsspec
import numpy as np
import pytest
import torch

from pipeline.pose.heatmaps import decode_heatmaps, heatmap_to_input
from pipeline.pose.keypoints import FLIP_INDEX, KEYPOINT_INDEX, NUM_KEYPOINTS, SKELETON, coco_person_category
from pipeline.pose.letterbox import IMAGE_MEAN, IMAGE_STD, Letterbox
from pipeline.training.dataset import AugmentConfig, CocoKeypointDataset, sample_affine

NO_AUGMENT = AugmentConfig(scale=0, rotation=0, translate=0, flip=0, brightness=0, contrast=0, saturation=0)


def person(x0: float, y0: float, seed: int) -> np.ndarray:
    """(K, 3) keypoints of one figure inside a 60x120 box, all labelled."""
    rng = np.random.default_rng(seed)
    kp = np.column_stack([x0 + rng.uniform(0, 60, NUM_KEYPOINTS), y0 + rng.uniform(0, 120, NUM_KEYPOINTS),
                          np.full(NUM_KEYPOINTS, 2.0)])
    return kp.round(1)


def write_set(root, people_per_image: list[list[np.ndarray]], width: int = 200, height: int = 150,
              marker: int | None = None) -> str:
    """A COCO folder; each image is dark with a white 3x3 dot on keypoint `marker` of every person (if given)."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i, people in enumerate(people_per_image):
        image = np.full((height, width, 3), 40, np.uint8)
        for kp in people:
            if marker is not None:
                x, y = np.round(kp[marker, :2]).astype(int)
                image[y - 1:y + 2, x - 1:x + 2] = 255
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "keypoints": kp.reshape(-1).tolist()})
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), image)
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": width, "height": height})
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [coco_person_category()]}))
    return str(root)


def denormalise(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) model input -> (H, W, 3) 0..255 float."""
    mean, std = np.array(IMAGE_MEAN), np.array(IMAGE_STD)
    return (image.permute(1, 2, 0).numpy() * std + mean) * 255


def test_eval_targets_decode_back_to_original_pixels(tmp_path):
    kp = person(60, 10, seed=0)
    root = write_set(tmp_path, [[kp]])
    sample = CocoKeypointDataset(root, input_size=128)[0]
    assert sample["image"].shape == (3, 128, 128) and sample["heatmaps"].shape == (NUM_KEYPOINTS, 32, 32)
    assert sample["pafs"].shape == (2 * len(SKELETON), 32, 32) and sample["keypoints"].shape == (20, NUM_KEYPOINTS, 3)
    xy, score = decode_heatmaps(sample["heatmaps"][None].numpy())  # (1, K, 2) heatmap pixels
    box = Letterbox.fit(200, 150, 128)
    back = box.to_image(heatmap_to_input(xy[0].astype(np.float64), 4))  # original pixels
    np.testing.assert_allclose(back, kp[:, :2], atol=0.05)
    assert (score > 0.93).all()  # value at the nearest pixel centre, <= 0.5 px off per axis
    assert sample["orig_size"].tolist() == [200, 150] and int(sample["image_id"]) == 1


def test_paf_targets_point_along_each_limb(tmp_path):
    kp = person(60, 10, seed=1)
    sample = CocoKeypointDataset(write_set(tmp_path, [[kp]]), input_size=128)[0]
    inputs = sample["keypoints"][0].numpy()  # (K, 3) input pixels
    for limb, (a, b) in enumerate(SKELETON):
        mid = (inputs[a, :2] + inputs[b, :2]) / 2 / 4 - 0.375  # heatmap pixels (input_to_heatmap)
        x, y = np.round(mid).astype(int)
        direction = (inputs[b, :2] - inputs[a, :2]) / np.linalg.norm(inputs[b, :2] - inputs[a, :2])
        field = sample["pafs"][2 * limb:2 * limb + 2, y, x].numpy()
        if np.linalg.norm(field) > 0.99:  # pixels where two limbs of this person overlap hold their average
            np.testing.assert_allclose(field, direction, atol=1e-5)


def test_random_augmentation_keeps_keypoints_on_the_image(tmp_path):
    wrist = KEYPOINT_INDEX["left_wrist"]
    root = write_set(tmp_path, [[person(70, 15, seed=s)] for s in range(6)], marker=wrist)
    augment = AugmentConfig(scale=0.3, rotation=40, translate=0.1, flip=0.5, brightness=0.1, contrast=0.1,
                            saturation=0.1)
    dataset = CocoKeypointDataset(root, input_size=128, augment=augment)
    torch.manual_seed(0)
    checked = 0
    for i in range(len(dataset)):
        for _ in range(3):
            sample = dataset[i]
            brightness = denormalise(sample["image"]).mean(axis=-1)
            kp = sample["keypoints"][0].numpy()
            # after a flip the marked (left) wrist is the right wrist of the mirrored figure
            marked = kp[wrist] if np.isfinite(kp[wrist, 0]) and brightness[tuple(np.round(kp[wrist, 1::-1]).astype(int))] > 150 \
                else kp[FLIP_INDEX[wrist]]
            if not np.isfinite(marked[0]):
                continue  # pushed out of the input
            y, x = np.unravel_index(brightness.argmax(), brightness.shape)
            assert np.hypot(x - marked[0], y - marked[1]) <= 1.5
            checked += 1
    assert checked >= 12


def test_flip_mirrors_and_swaps_left_and_right(tmp_path):
    kp = person(70, 15, seed=2)
    root = write_set(tmp_path, [[kp]], marker=KEYPOINT_INDEX["left_wrist"])
    plain = CocoKeypointDataset(root, 128, augment=NO_AUGMENT)[0]
    flipped = CocoKeypointDataset(root, 128, augment=AugmentConfig(**{**NO_AUGMENT.to_dict(), "flip": 1.0}))[0]
    a, b = plain["keypoints"][0].numpy(), flipped["keypoints"][0].numpy()
    for k in range(NUM_KEYPOINTS):
        np.testing.assert_allclose(b[k, :2], [127 - a[FLIP_INDEX[k], 0], a[FLIP_INDEX[k], 1]], atol=1e-4)
    left, right = KEYPOINT_INDEX["left_wrist"], KEYPOINT_INDEX["right_wrist"]
    torch.testing.assert_close(flipped["heatmaps"][right], plain["heatmaps"][left].flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1), atol=0.05, rtol=0)
    # the marker (original left wrist) now sits on the right wrist's target
    brightness = denormalise(flipped["image"]).mean(axis=-1)
    y, x = np.unravel_index(brightness.argmax(), brightness.shape)
    assert np.hypot(x - b[right, 0], y - b[right, 1]) <= 1.5
    # PAF of the mirrored left forearm is the mirrored right forearm: x component negated
    limb_l, limb_r = SKELETON.index((7, 9)), SKELETON.index((8, 10))
    torch.testing.assert_close(flipped["pafs"][2 * limb_r], -plain["pafs"][2 * limb_l].flip(-1), atol=1e-4, rtol=0)


def test_no_augmentation_matches_the_letterbox(tmp_path):
    kp = person(60, 10, seed=3)
    root = write_set(tmp_path, [[kp]])
    train = CocoKeypointDataset(root, 128, augment=NO_AUGMENT)[0]
    test = CocoKeypointDataset(root, 128)[0]
    torch.testing.assert_close(train["keypoints"], test["keypoints"], atol=1e-4, rtol=0, equal_nan=True)
    matrix, _ = sample_affine(np.random.default_rng(0), 200, 150, 96, NO_AUGMENT, fit_size=128)
    np.testing.assert_allclose(matrix[:2, 2], Letterbox.fit(200, 150, 128).to_input(np.zeros(2)) - 16)


def test_fsspec_uri_and_missing_data(tmp_path):
    root = write_set(tmp_path / "set", [[person(60, 10, seed=4)], []])
    fs = fsspec.filesystem("memory")
    fs.pipe("/ds-test/annotations.json", (tmp_path / "set" / "annotations.json").read_bytes())
    for name in ("0000.png", "0001.png"):
        fs.pipe(f"/ds-test/images/{name}", (tmp_path / "set" / "images" / name).read_bytes())
    remote, local = CocoKeypointDataset("memory://ds-test", 64), CocoKeypointDataset(root, 64)
    torch.testing.assert_close(remote[0]["image"], local[0]["image"])
    assert remote[1]["heatmaps"].abs().sum() == 0 and torch.isnan(remote[1]["keypoints"][..., 0]).all()
    assert len(CocoKeypointDataset(root, 64, limit=1)) == 1 and len(local.ground_truth()["annotations"]) == 1
    with pytest.raises(FileNotFoundError, match="no COCO annotations"):
        CocoKeypointDataset(str(tmp_path / "nothing"), 64)
