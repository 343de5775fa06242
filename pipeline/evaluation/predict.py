"""Run a pose model over a COCO image set as a run runs it on video frames: letterboxed uint8 frames, the model on its
device (`pipeline.stages.infer.load_pose_model`), people mapped back to original image pixels as COCO keypoint results.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.evaluation.metrics import people_to_results
from pipeline.models.blazepose.topdown import TopDownConfig
from pipeline.models.pose_model import TopDownModel, load_pose_model
from pipeline.models.runtime import inference_device
from pipeline.pose.grouping import GroupingConfig
from pipeline.pose.letterbox import Letterbox
from pipeline.training.dataset import CocoKeypointDataset


class LetterboxedImages(Dataset):
    """The images of a COCO set, letterboxed to (size, size) uint8, with their labelled people's boxes."""

    def __init__(self, images: CocoKeypointDataset, size: int):
        self.images, self.size = images, size
        self.boxes: dict[int, list] = {}
        for ann in images.coco["annotations"]:
            if not ann.get("iscrowd", 0) and "bbox" in ann:
                self.boxes.setdefault(ann["image_id"], []).append(ann["bbox"])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images.read_image(index)
        height, width = image.shape[:2]
        letterbox = Letterbox.fit(width, height, self.size)
        image_id = self.images.images[index]["id"]
        boxes = np.asarray(self.boxes.get(image_id, []), np.float64).reshape(-1, 4)     # (P, 4) x, y, w, h
        boxes = boxes * [letterbox.scale_x, letterbox.scale_y, letterbox.scale_x, letterbox.scale_y] \
            + [letterbox.pad_x, letterbox.pad_y, 0, 0]                                     # frame corner coordinates
        return {"image": torch.from_numpy(letterbox.apply(image)), "image_id": image_id, "size": (width, height),
                "content": torch.tensor(letterbox.picture_box, dtype=torch.float32),
                "boxes": boxes.astype(np.float32)}


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "content": torch.stack([i["content"] for i in items]),
            "image_id": [i["image_id"] for i in items], "size": [i["size"] for i in items],
            "boxes": [i["boxes"] for i in items]}


def predict_images(model, images: CocoKeypointDataset, size: int, device: torch.device, batch_size: int = 8,
                   gt_boxes: bool = False) -> list[dict]:
    """COCO keypoint results of `model` (a `load_pose_model` model) on every image, in original pixels.

    `gt_boxes` scores keypoints apart from person finding: a top-down model then crops each labelled person's box
    instead of detecting (one prediction per labelled person).
    """
    if gt_boxes and not isinstance(model, TopDownModel):
        raise ValueError("ground-truth boxes apply to top-down models only; a bottom-up model finds people itself")
    results: list[dict] = []
    loader = DataLoader(LetterboxedImages(images, size), batch_size=batch_size, num_workers=1, collate_fn=collate)
    for batch in loader:
        frames = batch["image"].to(device)
        if gt_boxes:
            people = [(p.keypoints, p.scores) for p in model.pose.estimate_in_boxes(frames, batch["boxes"])]
        else:
            people = model.find_people(frames, batch["content"].to(device))
        for (keypoints, scores), image_id, (width, height) in zip(people, batch["image_id"], batch["size"]):
            keypoints = keypoints.astype(np.float64)                                       # (P, K, 3) input pixels
            keypoints[..., :2] = Letterbox.fit(width, height, size).to_image(keypoints[..., :2])
            results.extend(people_to_results(image_id, keypoints, scores))
    return results


def predict_dataset(checkpoint: str, data: str, batch_size: int = 16, limit: int | None = None,
                    grouping: GroupingConfig | None = None, device: str = "cpu", storage_options: dict | None = None,
                    flip_test: bool = False, precision: str | None = None, topdown: TopDownConfig | None = None,
                    frame_size: int | None = None, gt_boxes: bool = False) -> tuple[dict, list[dict]]:
    """Run a checkpoint over a COCO set as `posepipe run` runs it (`precision`, `grouping` and `topdown` default to a
    run's); returns (ground truth of the images used, COCO keypoint results)."""
    from pipeline.config import ModelSettings

    torch_device = inference_device(device)
    model, meta = load_pose_model(checkpoint, torch_device, precision or ModelSettings().precision,
                                  grouping or GroupingConfig(), topdown or TopDownConfig(), flip_test,
                                  storage_options)
    size = frame_size or int(meta["input_size"])
    images = CocoKeypointDataset(data, size, None, storage_options=storage_options, limit=limit)
    return images.ground_truth(), predict_images(model, images, size, torch_device, batch_size, gt_boxes)
