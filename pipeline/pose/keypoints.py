"""COCO-17 keypoints: names, skeleton, flip pairs and OKS sigmas.

The one source of truth for keypoint order. Everything else (model heads, Parquet
columns, COCO export, rendering, training targets) imports from here.
"""

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
KEYPOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# The 19 limbs of the COCO skeleton, 0-based (COCO's own file lists them 1-based).
# Part affinity fields have two channels (x, y) per limb, in this order.
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12),
    (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2),
    (1, 3), (2, 4), (3, 5), (4, 6),
)
NUM_LIMBS = len(SKELETON)

# Horizontal flip swaps left and right: FLIP_INDEX[k] is the keypoint k becomes.
FLIP_INDEX: tuple[int, ...] = tuple(
    KEYPOINT_INDEX[name.replace("left_", "@").replace("right_", "left_").replace("@", "right_")]
    for name in KEYPOINT_NAMES
)


def _flip_limbs() -> tuple[tuple[int, ...], tuple[int, ...]]:
    index, sign = [], []
    for a, b in SKELETON:
        fa, fb = FLIP_INDEX[a], FLIP_INDEX[b]
        same_way = (fa, fb) in SKELETON
        index.append(SKELETON.index((fa, fb) if same_way else (fb, fa)))
        sign.append(1 if same_way else -1)
    return tuple(index), tuple(sign)


# A horizontal flip also swaps limbs: limb l becomes limb FLIP_LIMB_INDEX[l], which runs the other way (start and end
# exchanged) where FLIP_LIMB_SIGN[l] is -1. Part affinity fields follow limbs, so mirrored PAFs are re-indexed with it.
FLIP_LIMB_INDEX, FLIP_LIMB_SIGN = _flip_limbs()

# Per-keypoint falloff of Object Keypoint Similarity, from the COCO evaluation.
OKS_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
     1.07, 1.07, 0.87, 0.87, 0.89, 0.89],
    dtype=np.float64,
) / 10.0

PERSON_CATEGORY_ID = 1


def coco_person_category() -> dict:
    """The COCO `categories` entry for people (keypoint names, 1-based skeleton)."""
    return {
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
    }
