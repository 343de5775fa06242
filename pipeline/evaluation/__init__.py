"""Scoring: COCO keypoint OKS AP / PCK, MOT metrics of tracks, and predictions on COCO image sets."""
