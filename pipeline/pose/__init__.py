"""Pose math on arrays (numpy, torch, scipy; no Ray, decord or pyarrow): keypoints, the letterbox, heatmap
peaks, part affinity fields, grouping people, tracking them."""
