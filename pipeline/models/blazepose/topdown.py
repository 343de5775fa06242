"""Top-down multi-person pose with the BlazePose nets: find people, crop each one, run the landmark net on the crops.

For a batch of frames (already letterboxed to a square, uint8, on the device):

1. **Detect** on the whole frame and on overlapping tiles (small people), all views in one detector batch; decode the
   SSD anchors, then weighted NMS per frame over all views' candidates (`decode_detections`, `weighted_nms`).
2. **Crop** a rotated square per person from the detector's alignment points (mid-hip -> above the head), all people of
   all frames in one sampling call (`roi.sample_rois`), and run the landmark net once on them.
3. **Refine** (optional): re-crop from the landmark net's own alignment points (landmarks 33/34) and run it again.
4. **Decode** landmarks: sub-pixel peaks of the 64x64 heatmaps near them, back to frame pixels, BlazePose-33 -> COCO-17;
   drop crops whose presence is low and duplicates by OKS.

In a video, `estimate` follows people instead of detecting every frame: frames of one video are chained in order, the
detector runs on the first frame of each run of `detect_every` and wherever the previous frame lost someone, and the
other frames are cropped from the previous frame's alignment points (MediaPipe's tracking, for many people). Every
step processes one frame of every chain, so the landmark net still sees all chains' people in one batch.

Outputs are in frame pixels with pixel centres on integers, like the rest of posepipe.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.blazepose import detector as det
from pipeline.models.blazepose.landmarks import INPUT_SIZE as CROP_SIZE
from pipeline.models.blazepose.layers import Float32
from pipeline.models.blazepose.roi import alignment_matrices, crop_matrices, crop_to_frame, sample_rois
from pipeline.models.runtime import to_device
from pipeline.pose.heatmaps import refine_peaks
from pipeline.pose.keypoints import OKS_SIGMAS

# BlazePose landmark for each COCO-17 keypoint (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
COCO_FROM_BLAZEPOSE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
HIP_CENTRE, ABOVE_HEAD = 33, 34      # the landmark net's alignment points (auxiliary landmarks)


@dataclass(frozen=True)
class TopDownConfig:
    detector_threshold: float = 0.5    # detector score (sigmoid) for a candidate person
    nms_threshold: float = 0.3         # IoU of the detector's face boxes above which candidates merge (weighted NMS)
    tiles: tuple[tuple[int, float, float], ...] = ((2, 0.6, 100.0), (3, 0.4, 0.6))  # grids of n x n overlapping
                                       # tiles the detector also runs on, per (n, fraction of the frame, largest): a
                                       # tile keeps the people whose crop is at most `largest` x its side, so the fine
                                       # grid adds small people only (large ones are seen whole by coarser views);
                                       # () for the whole frame only
    max_people: int = 32               # per frame, highest detector scores first
    roi_scale: float = 1.25            # crop side = 2 x alignment distance x roi_scale (MediaPipe's)
    refine: int = 1                    # times to crop again from the landmark net's alignment points and rerun it
    heatmap_refine: bool = True        # move each landmark to its heatmap's sub-pixel peak within a 7x7 window
    presence_threshold: float = 0.5    # landmark net's person presence below which a crop holds no person
    oks_threshold: float = 0.7         # people of one frame whose keypoints overlap more (OKS) are one person
    detect_every: int = 4              # in a video, frames between detector runs (1: every frame)
    carry_over: bool = False           # follow the people the detector misses at a run's first frame on from the run
                                       # before (`TopDownPose.follow_missed`): about 12 % more people found in video,
                                       # IDF1 +0.02, for about 11 % more time per frame (docs/real-people.md)

    def __post_init__(self):
        for name in ("detector_threshold", "nms_threshold", "presence_threshold", "oks_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"expected {name} in [0, 1], got {getattr(self, name)}")
        if any(n < 2 or not 0 < fraction < 1 or largest <= 0 for n, fraction, largest in self.tiles):
            raise ValueError(f"expected tiles as (n >= 2, 0 < fraction < 1, largest > 0), got {self.tiles}")
        if self.max_people < 1 or self.detect_every < 1 or self.refine < 0:
            raise ValueError(f"expected max_people >= 1, detect_every >= 1 and refine >= 0, got "
                             f"{self.max_people}, {self.detect_every}, {self.refine}")


@dataclass
class People:
    """The people found in one frame: P people, K = 17 COCO keypoints, frame pixels (centres on integers)."""

    keypoints: np.ndarray     # (P, K, 3) x, y, score
    scores: np.ndarray        # (P,) landmark net's person presence
    alignment: np.ndarray     # (P, 2, 2) hip centre and above-head points, frame corner coordinates (next crop)

    def __getitem__(self, index) -> "People":
        return People(self.keypoints[index], self.scores[index], self.alignment[index])


def join_people(a: People, b: People) -> People:
    return People(np.concatenate([a.keypoints, b.keypoints]), np.concatenate([a.scores, b.scores]),
                  np.concatenate([a.alignment, b.alignment]))


def view_layout(tiles: tuple[tuple[int, float, float], ...]) -> torch.Tensor:
    """(V, 4) per detector view: its centre as fractions of the picture's width and height, its side as a fraction
    of the picture's longer side, and the largest person crop it keeps (as a fraction of its side)."""
    rows = [(0.5, 0.5, 1.0, float("inf"))]
    for n, fraction, largest in tiles:
        step = (1 - fraction) / (n - 1)
        rows += [(fraction / 2 + j * step, fraction / 2 + i * step, fraction, largest)
                 for i in range(n) for j in range(n)]
    return torch.tensor(rows, dtype=torch.float32)


def detector_views(content: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """The squares the detector looks at in each frame: the whole content, then each grid of n x n overlapping tiles,
    each letterboxed (a square of the longer side, centred).

    Args:
        content: (B, 4) x0, y0, w, h of each frame's picture inside the square frame tensor (corner coordinates).
        layout: (V, 4) `view_layout` of the tiles, on content's device.
    Returns:
        (B, V, 4) x0, y0, side and the largest person crop it keeps, as a fraction of its side (whole view: inf).
    """
    origin, extent = content[:, None, :2], content[:, None, 2:]                # (B, 1, 2)
    side = extent.amax(-1, keepdim=True) * layout[:, 2:3]                      # (B, V, 1)
    corner = origin + extent * layout[:, :2] - side / 2                        # (B, V, 2)
    return torch.cat([corner, side, layout[:, 3:].expand_as(side)], dim=-1)


def decode_detections(scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor, views: torch.Tensor,
                      threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detector outputs of N views -> candidates above `threshold`, in frame corner coordinates.

    Args:
        scores: (N, A, 1) logits; boxes: (N, A, 12); anchors: (A, 2) centres in [0, 1]; views: (N, 3) x0, y0, side.
    Returns:
        view index (M,), score (M,), face box (M, 4) x0, y0, x1, y1, keypoints (M, 4, 2).
    """
    prob = torch.sigmoid(scores[..., 0].float().clamp(-100, 100))           # (N, A)
    view, anchor = torch.nonzero(prob > threshold, as_tuple=True)
    raw = boxes[view, anchor].float() / det.INPUT_SIZE                       # (M, 12), fractions of the view
    centre = anchors[anchor]                                                  # (M, 2)
    x0y0, side = views[view, :2], views[view, 2:3]                            # (M, 2), (M, 1)
    box_centre = x0y0 + (raw[:, 0:2] + centre) * side
    half = raw[:, 2:4] * side / 2
    keypoints = x0y0[:, None] + (raw[:, 4:12].view(-1, 4, 2) + centre[:, None]) * side[:, None]
    return view, prob[view, anchor], torch.cat([box_centre - half, box_centre + half], dim=-1), keypoints


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, threshold: float,
                 limit: int) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression, keeping every cluster (every person), best first.

    Each round takes the best remaining candidate and all candidates whose box overlaps it by IoU > `threshold`,
    and replaces them by their score-weighted mean keypoints, with the best score.

    Args:
        scores: (M,); boxes: (M, 4) x0, y0, x1, y1; keypoints: (M, 4, 2).
    Returns:
        scores (D,), keypoints (D, 4, 2), D <= limit.
    """
    order = np.argsort(-scores, kind="stable")
    kept_scores, kept_keypoints = [], []
    while len(order) and len(kept_scores) < limit:
        top = boxes[order[0]]
        x0, y0 = np.maximum(top[0], boxes[order, 0]), np.maximum(top[1], boxes[order, 1])
        x1, y1 = np.minimum(top[2], boxes[order, 2]), np.minimum(top[3], boxes[order, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (boxes[order, 2] - boxes[order, 0]) * (boxes[order, 3] - boxes[order, 1])
        iou = inter / np.maximum(area + (top[2] - top[0]) * (top[3] - top[1]) - inter, 1e-9)
        cluster = order[iou > threshold]
        weights = scores[cluster] / scores[cluster].sum()
        kept_scores.append(scores[order[0]])
        kept_keypoints.append(np.einsum("m,mkd->kd", weights, keypoints[cluster]))
        order = order[iou <= threshold]
    return np.array(kept_scores, np.float32), np.array(kept_keypoints, np.float32).reshape(-1, 4, 2)


def refine_from_heatmaps(xy: torch.Tensor, heatmaps: torch.Tensor, kernel: int = 7,
                         min_confidence: float = 0.5) -> torch.Tensor:
    """Move each landmark to the sub-pixel peak of its heatmap near it: the highest pixel of the `kernel` x `kernel`
    window around the regressed point, refined by posepipe's own peak decoding (a parabola through the log-heatmap,
    `heatmaps.refine_peaks`), where that peak's confidence (sigmoid) reaches `min_confidence`.

    MediaPipe's RefineLandmarksFromHeatmap takes the window's weighted mean instead; the peak scored higher on
    real-dev (docs/real-people.md). Heatmap pixel j maps to crop pixel stride * j, as MediaPipe maps it.

    Only the window and the peak's neighbours are read, as logits: the sigmoid of whole maps is never computed.

    Args:
        xy: (R, L, 2) crop pixels (0..256); heatmaps: (R, L, h, w) logits.
    Returns:
        (R, L, 2) crop pixels.
    """
    h, w = heatmaps.shape[-2:]
    stride = CROP_SIZE / w
    centre = torch.floor(xy / stride).long()                                   # (R, L, 2) col, row
    cells = centre[..., None, :] + _window(kernel, xy.device)                  # (R, L, k*k, 2), row by row
    cols, rows = cells.unbind(-1)                                              # (R, L, k*k)
    inside = (cells >= 0).all(-1) & (cols < w) & (rows < h)
    logits = heatmaps.float().flatten(2).gather(2, rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1))
    best_logit, best = logits.masked_fill(~inside, -math.inf).max(-1, keepdim=True)   # (R, L, 1)
    ix, iy = cols.gather(2, best).clamp(0, w - 1), rows.gather(2, best).clamp(0, h - 1)
    peak = refine_peaks(heatmaps, ix, iy, logits=True)[:, :, 0] * stride       # (R, L, 2)
    use = torch.sigmoid(best_logit) >= min_confidence
    return torch.where(use, peak, xy)


@functools.lru_cache(maxsize=8)
def _window(kernel: int, device: torch.device) -> torch.Tensor:
    """(k*k, 2) col, row offsets of a kernel x kernel window around a pixel, row by row (a cached constant)."""
    with torch.inference_mode(False):
        offsets = torch.arange(kernel, device=device) - (kernel - 1) // 2
        return torch.cartesian_prod(offsets, offsets).flip(-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the people to keep, best first: a person whose OKS with a kept one exceeds `threshold` is dropped.

    Args:
        keypoints: (P, K, 3) x, y, score; scores: (P,).
    """
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for p in order:
        if kept and oks_similarity(keypoints[kept], keypoints[p:p + 1]).max() > threshold:
            continue
        kept.append(int(p))
    return np.array(kept, np.int64)


def oks_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, Q) OKS between people a (P, K, 3) and b (Q, K, 3), each keypoint weighed by the lower of the two people's
    scores for it, so that two hypotheses of one person that agree where both see the body (the face, say) and part
    where one guesses the hidden rest are one person. The scale is a's extent."""
    xy_a, xy_b = a[..., :2].astype(np.float64), b[..., :2].astype(np.float64)
    extent = xy_a.max(axis=1) - xy_a.min(axis=1)                              # (P, 2)
    area = np.maximum(extent[:, 0] * extent[:, 1], 1.0)
    d2 = ((xy_a[:, None] - xy_b[None]) ** 2).sum(-1)                          # (P, Q, K)
    weight = np.minimum(a[:, None, :, 2], b[None, :, :, 2]).astype(np.float64) + 1e-6
    var = (2.0 * OKS_SIGMAS) ** 2
    return (np.exp(-d2 / var / (area[:, None, None] + np.spacing(1)) / 2) * weight).sum(-1) / weight.sum(-1)


def heads_in_float32(detector: torch.nn.Module, landmarks: torch.nn.Module) -> None:
    """Keep the output convs of both nets in float32 under autocast (their outputs are pixel coordinates)."""
    for head in (detector.head8, detector.head16, detector.head32):
        head.box, head.score = Float32(head.box), Float32(head.score)
    for name in ("landmarks_head", "world_head", "presence_head", "heatmap_head"):
        setattr(landmarks, name, Float32(getattr(landmarks, name)))


class TopDownPose:
    """Detector + landmark net on one device; `estimate` turns frame batches into `People` per frame."""

    def __init__(self, detector, landmarks, config: TopDownConfig = TopDownConfig(), dtype: torch.dtype | None = None,
                 device: torch.device | None = None):
        """`detector` and `landmarks`: torch modules on `device` (default: where the landmark net's weights are), or
        callables like them (`pipeline.models.onnx_net.OnnxNet`)."""
        if dtype is not None:
            heads_in_float32(detector, landmarks)
        self.detector, self.landmarks, self.config, self.dtype = detector, landmarks, config, dtype
        self.device = device or next(landmarks.parameters()).device
        self.channels_last = isinstance(landmarks, torch.nn.Module)  # torch's CPU and GPU kernels want NHWC
        self.anchors = torch.from_numpy(det.ssd_anchors()).to(self.device)
        self.coco = torch.tensor(COCO_FROM_BLAZEPOSE, device=self.device)
        self.layout = view_layout(config.tiles).to(self.device)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(torch.from_numpy(np.ascontiguousarray(array)), self.device)

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @torch.inference_mode()
    def detect(self, frames: torch.Tensor, content: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Detector over every view of every frame; per frame (scores (D,), alignment points (D, 2, 2)).

        Args:
            frames: (B, S, S, 3) uint8; content: (B, 4) picture inside each frame.
        """
        c = self.config
        views = detector_views(content, self.layout)                               # (B, V, 4)
        b, v = views.shape[:2]
        flat = views.reshape(b * v, 4)
        rois = torch.cat([torch.zeros_like(flat[:, :1]), flat[:, :2] + flat[:, 2:3] / 2, flat[:, 2:3],
                          torch.zeros_like(flat[:, :1])], dim=-1)                  # upright squares
        frame = torch.arange(b, device=frames.device).repeat_interleave(v)
        x = sample_rois(frames, frame, crop_matrices(rois, det.INPUT_SIZE), det.INPUT_SIZE) / 127.5 - 1.0
        with self.autocast():
            scores, boxes = self.detector(self.net_input(x))
        view, prob, box, keypoints = decode_detections(scores, boxes, self.anchors, flat[:, :3],
                                                       c.detector_threshold)
        crop_side = 2 * c.roi_scale * torch.linalg.vector_norm(keypoints[:, 1] - keypoints[:, 0], dim=-1)
        fits = crop_side <= flat[view, 3] * flat[view, 2]
        # one copy to the host (a GPU waits once): frame, fits, score, box (4), keypoints (8)
        host = torch.cat([(view // v)[:, None].float(), fits[:, None].float(), prob[:, None], box,
                          keypoints.flatten(1)], dim=1).cpu().numpy()
        host = host[host[:, 1] > 0]
        frame, prob, box = host[:, 0].astype(np.int64), host[:, 2], host[:, 3:7]
        keypoints = host[:, 7:].reshape(-1, 4, 2)
        out = []
        for i in range(b):
            mine = frame == i
            s, kp = weighted_nms(prob[mine], box[mine], keypoints[mine], c.nms_threshold, c.max_people)
            out.append((s, kp[:, :2]))                                            # mid-hip, above the head
        return out

    @torch.inference_mode()
    def run_landmarks(self, frames: torch.Tensor, frame: torch.Tensor, matrices: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
        """Landmark net on crops (R, 2, 3) of frames[frame] (frames (B, S, S, 3) uint8): one crop batch. Returns
        landmarks (R, 39, 3) x, y frame corner coordinates and score, alignment (R, 2, 2) and presence (R,)."""
        crops = sample_rois(frames, frame, matrices, CROP_SIZE, padding_mode="border") / 255.0  # (R, 3, 256, 256)
        with self.autocast():
            out = self.landmarks(self.net_input(crops))
        raw = out["landmarks"].float()                                                 # (R, 39, 5)
        xy = raw[..., :2]
        if self.config.heatmap_refine:
            xy = refine_from_heatmaps(xy, out["heatmaps"])
        xy = crop_to_frame(matrices, xy)                                                # (R, 39, 2)
        score = torch.sigmoid(raw[..., 3])                                              # visibility
        return {"landmarks": torch.cat([xy, score[..., None]], dim=-1),
                "alignment": xy[:, HIP_CENTRE:ABOVE_HEAD + 1], "presence": out["presence"].float()[:, 0]}

    def crops(self, alignment: torch.Tensor) -> torch.Tensor:
        return alignment_matrices(alignment[:, 0], alignment[:, 1], self.config.roi_scale, CROP_SIZE)

    def people_in(self, frames: torch.Tensor, frame: torch.Tensor, alignment: torch.Tensor,
                  refine: int) -> dict[str, torch.Tensor]:
        """Landmarks for people given by alignment points (R, 2, 2) in frames[frame], rerun `refine` times from the
        net's own alignment points."""
        found = self.run_landmarks(frames, frame, self.crops(alignment))
        for _ in range(refine if len(frame) else 0):
            found = self.run_landmarks(frames, frame, self.crops(found["alignment"]))
        return found

    @torch.inference_mode()
    def estimate(self, frames: torch.Tensor, content: torch.Tensor, chains: list[list[int]] | None = None
                 ) -> list[People]:
        """People in each frame.

        Args:
            frames: (B, S, S, 3) uint8 on the device; content: (B, 4) x0, y0, w, h of the picture in each frame
                (corner coordinates; the rest is letterbox padding).
            chains: frame indices of each video in order (a frame is in one chain); None: every frame alone, so every
                frame is detected. A chain is followed in runs of `detect_every` frames, the detector on the first
                of each run and after a frame that lost someone; all runs advance together, one frame per step. With
                `carry_over`, people the detector missed at a run's start are then followed on from the run before.
        """
        c = self.config
        chains = chains if chains is not None else [[i] for i in range(len(frames))]
        runs, follows = [], {}                                                  # follows: run -> the run before it
        for chain in chains:
            for start in range(0, len(chain), c.detect_every):
                if start:
                    follows[len(runs)] = len(runs) - 1
                runs.append(chain[start:start + c.detect_every])
        results: list[People | None] = [None] * len(frames)
        previous: dict[int, tuple[People, bool]] = {}                           # run -> last frame's people, lost
        for step in range(max((len(run) for run in runs), default=0)):
            active = [(k, run[step]) for k, run in enumerate(runs) if step < len(run)]
            detect = [f for k, f in active if k not in previous or previous[k][1]]
            if detect:
                index = self.to_device(np.array(detect))
                detected = dict(zip(detect, self.detect(frames[index], content[index])))
            else:
                detected = {}
            frame_ids, alignment, from_detector = [], [], []
            for k, f in active:
                points = detected[f][1] if f in detected else previous[k][0].alignment
                frame_ids += [f] * len(points)
                alignment.append(points.reshape(-1, 2, 2))
                from_detector += [f in detected] * len(points)
            frame_ids, from_detector = np.array(frame_ids, np.int64), np.array(from_detector, bool)
            on_device = self.to_device(frame_ids)
            points = self.to_device(np.concatenate(alignment))
            found = self.run_landmarks(frames, on_device, self.crops(points))
            if c.refine and from_detector.any():    # followed people were cropped from landmarks already
                again = self.to_device(np.flatnonzero(from_detector))
                refined = self.people_in(frames, on_device[again], found["alignment"][again], refine=c.refine - 1)
                found = {key: value.index_copy(0, again, refined[key]) for key, value in found.items()}
            by_frame = self.split(found, frame_ids, from_detector, [f for _, f in active])
            for k, f in active:
                results[f] = by_frame[f][0]
                previous[k] = by_frame[f]
        if c.carry_over:
            self.follow_missed(frames, runs, follows, results)
        return results

    def follow_missed(self, frames: torch.Tensor, runs: list[list[int]], follows: dict[int, int],
                      results: list[People]) -> None:
        """Follow the people the detector missed at a run's first frame on from the run before it.

        A run starts from the detector's people alone, so a person followed to the last frame of one run and missed
        by the detector on the next run's first frame would be gone for the whole run. Each such person (no one at
        that first frame like them by OKS) is cropped from their last alignment points, frame after frame through
        the run, all of them in one landmark batch per step and one copy to the host at the end, and added to each
        frame while present (and unlike anyone there). A person missed again at the run after is not carried twice.
        """
        c = self.config
        carried_run, carried = [], []
        for k, before in follows.items():
            last, first = results[runs[before][-1]], results[runs[k][0]]
            if not len(last.scores):
                continue
            similar = oks_similarity(last.keypoints, first.keypoints).max(1) if len(first.scores) \
                else np.zeros(len(last.scores))
            for i in np.flatnonzero(similar <= c.oks_threshold):
                carried_run.append(k)
                carried.append(last.alignment[i])
        if not carried:
            return
        lengths = np.array([len(runs[k]) for k in carried_run])
        alignment = self.to_device(np.stack(carried))                            # (M, 2, 2)
        steps = []
        for step in range(int(lengths.max())):
            alive = np.flatnonzero(lengths > step)
            frame_ids = np.array([runs[carried_run[i]][step] for i in alive], np.int64)
            index = self.to_device(alive)
            found = self.run_landmarks(frames, self.to_device(frame_ids), self.crops(alignment[index]))
            alignment = alignment.index_copy(0, index, found["alignment"])
            steps.append((alive, frame_ids, found))
        people = self.to_people({key: torch.cat([out[key] for _, _, out in steps]) for key in steps[0][2]})
        following = np.ones(len(carried), bool)                                  # present at every step so far
        added: dict[int, list[int]] = {}
        row = 0
        for alive, frame_ids, _ in steps:
            rows = np.arange(row, row + len(alive))
            row += len(alive)
            following[alive] &= people.scores[rows] >= c.presence_threshold
            for i, f, r in zip(alive, frame_ids, rows):
                if following[i]:
                    added.setdefault(int(f), []).append(int(r))
        for f, rows in added.items():
            both = join_people(results[f], people[np.array(rows)])
            results[f] = both[oks_nms(both.keypoints, both.scores, c.oks_threshold)]

    @torch.inference_mode()
    def estimate_in_boxes(self, frames: torch.Tensor, boxes: list[np.ndarray]) -> list[People]:
        """One person per given box (e.g. ground truth), no detector: a first upright crop around the box, then
        1 + `refine` crops from the landmark net's own alignment points. Keeps every box, whatever its presence.

        Args:
            frames: (B, S, S, 3) uint8; boxes: per frame (P, 4) x0, y0, w, h in frame corner coordinates.
        """
        frame = torch.from_numpy(np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)])).long()
        b = torch.from_numpy(np.concatenate(boxes).reshape(-1, 4)).float()
        rois = torch.stack([frame.float(), b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2,
                            b[:, 2:].amax(-1) * self.config.roi_scale, torch.zeros(len(b))], dim=-1)
        on_device = frame.to(self.device)
        found = self.run_landmarks(frames, on_device, crop_matrices(rois.to(self.device), CROP_SIZE))
        found = self.to_people(self.people_in(frames, on_device, found["alignment"], refine=self.config.refine))
        return [found[frame.numpy() == i] for i in range(len(boxes))]

    def to_people(self, found: dict[str, torch.Tensor]) -> People:
        """The landmark net's outputs for R crops as People: COCO-17 keypoints, pixel centres on integers."""
        r, k = len(found["presence"]), len(COCO_FROM_BLAZEPOSE)
        host = torch.cat([found["landmarks"][:, self.coco].reshape(r, k * 3), found["presence"][:, None],
                          found["alignment"].reshape(r, 4)], dim=1).cpu().numpy()     # one copy to the host
        landmarks = host[:, :k * 3].reshape(r, k, 3)                              # (R, 17, 3) corner coordinates
        landmarks[..., :2] -= 0.5
        return People(landmarks, host[:, k * 3], host[:, k * 3 + 1:].reshape(r, 2, 2))

    def split(self, found: dict[str, torch.Tensor], frame_ids: np.ndarray, from_detector: np.ndarray,
              frames: list[int]) -> dict[int, tuple[People, bool]]:
        """Per frame: the people kept (presence, then OKS duplicates) and whether a person followed from the
        previous frame was lost (a detector candidate without a person is just a false detection)."""
        people = self.to_people(found)
        out = {}
        for f in frames:
            mine = np.flatnonzero(frame_ids == f)
            absent = people.scores[mine] < self.config.presence_threshold
            present = mine[~absent]
            keep = present[oks_nms(people.keypoints[present], people.scores[present], self.config.oks_threshold)]
            out[f] = (people[keep], bool((absent & ~from_detector[mine]).any()))
        return out
