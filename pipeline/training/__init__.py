"""Training the bottom-up network: COCO-format data with augmentation and targets, and the Ray Train loop."""
