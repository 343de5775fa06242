"""The stages of a run, in order: read (list videos), decode (CPU actors), infer (model actors), assemble
(per video, on the driver), write (Parquet), with the manifest of incremental runs and the plan that wires them on Ray."""
