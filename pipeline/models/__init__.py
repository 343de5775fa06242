"""The pose models: the bottom-up network (`bottomup`), the imported top-down BlazePose nets (`blazepose/`),
checkpoints, and what running a model on a device takes."""
