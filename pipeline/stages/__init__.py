"""The stages of a run, in order: read (list videos, plan what is new), decode (CPU actors), infer (model actors),
assemble (the driver indexes the streamed rows per video), write (workers track and write data files), commit (the
driver commits them to the Delta tables in waves), with the plan that wires them on Ray."""
