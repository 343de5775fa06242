"""Synthetic people: articulated 2-D figures, scenes, COCO datasets and videos with ground truth.

Hubs and public datasets are out of reach, so the pose model is trained on these figures and the sample
video archive is made of them. Modules: poses (joint angles), figures (proportions, kinematics,
projection), appearance (palettes, textures), parts (drawing primitives), painter (rasterizing and
visibility), backgrounds, scenes (stills and COCO export), videos (moving people and encoding).
"""

from pipeline.synthetic.backgrounds import BACKGROUND_STYLES, HELDOUT_BACKGROUNDS, TRAIN_BACKGROUNDS
from pipeline.synthetic.scenes import render_scene, render_scene_with_truth, write_coco_dataset
from pipeline.synthetic.videos import (
    SCENARIOS,
    video_ground_truth_to_coco,
    write_sample_archive,
    write_video,
)

__all__ = [
    "BACKGROUND_STYLES", "HELDOUT_BACKGROUNDS", "SCENARIOS", "TRAIN_BACKGROUNDS",
    "render_scene", "render_scene_with_truth", "video_ground_truth_to_coco", "write_coco_dataset",
    "write_sample_archive", "write_video",
]
