"""Keypoint accuracy: COCO OKS AP/AR (pycocotools) and PCK, for multi-person predictions in image pixels.

Ground truth is a COCO keypoint dict (`images`, `annotations`, `categories`); predictions are COCO keypoint results
(`{"image_id", "category_id", "keypoints": [x, y, s] * K, "score"}`), as written by `people_to_results`.

PCK@t counts a labelled ground-truth keypoint as correct when the matched prediction lies within t * ref_size of it,
where ref_size is the person's bounding-box size max(w, h) (the `bbox` normaliser of MMPose's PCKAccuracy; for a
standing person that is their height, so PCK@0.2 allows 20% of body height). Each ground-truth person is matched to
at most one predicted person by maximum total OKS (Hungarian); an unmatched person counts all keypoints as misses.

Shape letters: N people, K keypoints, G ground-truth people and P predicted people in one image.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import defaultdict

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pipeline.pose.grouping import GroupingConfig, group_people_batch
from pipeline.pose.heatmaps import heatmap_to_input
from pipeline.pose.keypoints import NUM_KEYPOINTS, OKS_SIGMAS, PERSON_CATEGORY_ID
from pipeline.pose.letterbox import Letterbox

logger = logging.getLogger(__name__)

AP_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")  # order of COCOeval.stats


def pck(pred: np.ndarray, gt: np.ndarray, ref_size: np.ndarray, threshold: float = 0.2) -> float:
    """Fraction of labelled ground-truth keypoints within `threshold * ref_size` of the prediction.

    Args:
        pred: (N, K, 3) [x, y, score], the prediction matched to each ground-truth person; a missing keypoint has
            score 0 or NaN coordinates and counts as a miss.
        gt: (N, K, 3) [x, y, v]; keypoints with v > 0 are scored.
        ref_size: (N,) normaliser per person, e.g. bounding-box max(w, h) in the same pixels.
    Returns:
        PCK in [0, 1], or NaN when no keypoint is labelled.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    ref_size = np.asarray(ref_size, dtype=np.float64).reshape(-1)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3 or ref_size.shape[0] != gt.shape[0]:
        raise ValueError(f"expected pred and gt of shape (N, K, 3) and ref_size (N,), got {pred.shape}, "
                         f"{gt.shape}, {ref_size.shape}")
    labelled = gt[..., 2] > 0  # (N, K)
    if not labelled.any():
        return float("nan")
    dist = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1)  # (N, K), NaN where the prediction is missing
    present = (pred[..., 2] > 0) & np.isfinite(dist)
    hit = present & (dist <= threshold * ref_size[:, None])
    return float(hit[labelled].mean())


def oks(gt: np.ndarray, area: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """COCO Object Keypoint Similarity between every ground-truth and every predicted person.

    Args:
        gt: (G, K, 3) [x, y, v]; area: (G,) segment/bbox area in pixels^2; pred: (P, K, 3), NaN for missing.
    Returns:
        (G, P) in [0, 1]; a missing predicted keypoint contributes 0.
    """
    gt, pred = np.asarray(gt, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    var = (2.0 * OKS_SIGMAS) ** 2  # (K,)
    d2 = ((gt[:, None, :, :2] - pred[None, :, :, :2]) ** 2).sum(-1)  # (G, P, K)
    e = d2 / var / (np.asarray(area, dtype=np.float64)[:, None, None] + np.spacing(1)) / 2.0
    sim = np.where(np.isfinite(e), np.exp(-np.nan_to_num(e, nan=np.inf)), 0.0)  # (G, P, K)
    visible = gt[:, None, :, 2] > 0  # (G, 1, K)
    count = visible.sum(-1)  # (G, 1)
    return np.where(count > 0, (sim * visible).sum(-1) / np.maximum(count, 1), 0.0)


def match_people(gt: np.ndarray, area: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Align predictions to ground-truth people by maximum total OKS.

    Returns:
        (G, K, 3): the prediction matched to each ground-truth person; NaN coordinates and score 0 where unmatched.
    """
    matched = np.full(np.shape(gt)[:1] + (NUM_KEYPOINTS, 3), np.nan)
    matched[..., 2] = 0.0
    if len(gt) == 0 or len(pred) == 0:
        return matched
    sim = oks(gt, area, pred)  # (G, P)
    rows, cols = linear_sum_assignment(-sim)
    for g, p in zip(rows, cols):
        if sim[g, p] > 0:
            matched[g] = pred[p]
    return matched


def complete_ground_truth(gt_coco: dict) -> dict:
    """A copy of a COCO keypoint dict with the fields COCOeval needs (area, bbox, num_keypoints, iscrowd, id)."""
    gt = copy.deepcopy(gt_coco)
    gt.setdefault("categories", [{"id": PERSON_CATEGORY_ID, "name": "person"}])
    for i, ann in enumerate(gt.get("annotations", [])):
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        visible = kp[kp[:, 2] > 0, :2]
        if "bbox" not in ann:
            lo, hi = (visible.min(0), visible.max(0)) if len(visible) else (np.zeros(2), np.zeros(2))
            ann["bbox"] = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("num_keypoints", int(len(visible)))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", PERSON_CATEGORY_ID)
        ann.setdefault("id", i + 1)
    return gt


def oks_ap(gt_coco: dict, results: list[dict]) -> dict[str, float]:
    """COCO keypoint AP/AR of `results` against `gt_coco` (COCOeval with iouType="keypoints", prints silenced).

    Returns:
        {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}; COCO's -1 means undefined (no
        ground truth in that size range). With no results at all every value is 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = complete_ground_truth(gt_coco)
    if not results:
        return {key: 0.0 for key in AP_KEYS}
    known = {img["id"] for img in gt["images"]}
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise ValueError(f"results name {len(unknown)} image ids not in the ground truth (e.g. "
                         f"{sorted(unknown)[:3]}); score predictions against the set they were made on")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(value) for key, value in zip(AP_KEYS, evaluator.stats)}


def pck_coco(gt_coco: dict, results: list[dict], threshold: float = 0.2) -> float:
    """PCK@threshold over a COCO set: per image, match results to ground truth by OKS, then `pck`."""
    gt = complete_ground_truth(gt_coco)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    gts, preds, sizes = [], [], []
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0) and ann["num_keypoints"] > 0:
            anns_by_image[ann["image_id"]].append(ann)
    for image_id, anns in anns_by_image.items():
        g = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)  # (G, K, 3)
        area = np.array([a["area"] for a in anns], dtype=np.float64)
        p = results_to_array(by_image.get(image_id, []))  # (P, K, 3)
        gts.append(g)
        preds.append(match_people(g, area, p))
        sizes.append([max(a["bbox"][2], a["bbox"][3]) for a in anns])
    if not gts:
        return float("nan")
    return pck(np.concatenate(preds), np.concatenate(gts), np.concatenate(sizes), threshold)


def evaluate_results(gt_coco: dict, results: list[dict], pck_threshold: float = 0.2) -> dict[str, float]:
    """OKS AP/AR plus PCK@threshold (key "PCK") of COCO keypoint results."""
    return {**oks_ap(gt_coco, results), "PCK": pck_coco(gt_coco, results, pck_threshold)}


def evaluate_by(gt_coco: dict, results: list[dict], key: str, pck_threshold: float = 0.2) -> dict[str, dict]:
    """`evaluate_results` per value of an image field (e.g. "dataset": the source of each image), with "people"."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for image in gt_coco["images"]:
        groups[str(image.get(key))].append(image)
    out = {}
    for value, images in sorted(groups.items()):
        ids = {image["id"] for image in images}
        gt = {**gt_coco, "images": images, "annotations": [a for a in gt_coco["annotations"] if a["image_id"] in ids]}
        out[value] = {"people": len(gt["annotations"]),
                      **evaluate_results(gt, [r for r in results if r["image_id"] in ids], pck_threshold)}
    return out


def results_to_array(results: list[dict]) -> np.ndarray:
    """COCO results of one image -> (P, K, 3) [x, y, score]; keypoints scored 0 become NaN coordinates."""
    if not results:
        return np.zeros((0, NUM_KEYPOINTS, 3))
    kp = np.array([r["keypoints"] for r in results], dtype=np.float64)  # (P, 3K)
    if kp.ndim != 2 or kp.shape[1] != 3 * NUM_KEYPOINTS:
        raise ValueError(f"expected {NUM_KEYPOINTS} keypoints ([x, y, s] * {NUM_KEYPOINTS}) per result, "
                         f"got an array of shape {kp.shape}")
    kp = kp.reshape(len(results), NUM_KEYPOINTS, 3)
    kp[kp[..., 2] <= 0, :2] = np.nan
    return kp


def people_to_results(image_id: int, keypoints: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Predicted people of one image, (P, K, 3) image pixels with NaN for missing, -> COCO keypoint results."""
    out = []
    for kp, score in zip(np.asarray(keypoints, dtype=np.float64), np.asarray(scores, dtype=np.float64)):
        flat = np.where(np.isfinite(kp), kp, 0.0)
        flat[~np.isfinite(kp[:, 0]) | ~np.isfinite(kp[:, 1]), :] = 0.0
        out.append({"image_id": int(image_id), "category_id": PERSON_CATEGORY_ID,
                    "keypoints": [round(float(v), 2) for v in flat.reshape(-1)], "score": float(score)})
    return out


@torch.no_grad()
def predict_coco_results(heatmaps: torch.Tensor, pafs: torch.Tensor, batch: dict,
                         grouping: GroupingConfig = GroupingConfig()) -> dict[int, list[dict]]:
    """Group the network outputs of a letterboxed eval batch into people, in original image pixels.

    Args:
        heatmaps: (B, K, h, w), pafs: (B, 2L, h, w) raw outputs for batch["image"] (B, 3, S, S);
        batch: from `CocoKeypointDataset` without augmentation ("image_id" (B,), "orig_size" (B, 2) [W, H]).
    Returns:
        {image_id: COCO keypoint results}, an empty list for an image without people.
    """
    size = batch["image"].shape[-1]
    stride = size // heatmaps.shape[-1]
    out = {}
    people = group_people_batch(heatmaps, pafs, grouping)
    for (keypoints, scores), image_id, (width, height) in zip(people, batch["image_id"].tolist(),
                                                              batch["orig_size"].tolist()):
        keypoints = keypoints.astype(np.float64)  # (P, K, 3) heatmap pixels
        box = Letterbox.fit(int(width), int(height), size)
        keypoints[..., :2] = box.to_image(heatmap_to_input(keypoints[..., :2], stride))
        out[int(image_id)] = people_to_results(image_id, keypoints, scores)
    return out
