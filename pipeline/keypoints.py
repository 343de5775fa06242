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
