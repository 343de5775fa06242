"""`posepipe evaluate-tracks OUTPUT`: score a run's keypoint tracks against ground-truth sidecars.

For every video in the frames table whose source file has a ground-truth JSON beside it (`clip.mp4` ->
`clip.json`, as the synthetic generator writes them), report tracking (MOTA, IDF1, ID switches; motmetrics) and
pose accuracy (OKS AP and PCK@0.2; pycocotools), per video and over all of them.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from jobs.cli import ArgumentParser, UsageError, fail

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def predicted_frames(frames: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frames-table rows of one video -> frame_index -> (track ids (P,), keypoints (P, K, 3))."""
    from pipeline.outputs.query import keypoint_array

    keypoints = keypoint_array(frames)                                            # (N, K, 3)
    out = {}
    for frame_index, rows in frames.groupby("frame_index").indices.items():
        out[int(frame_index)] = (frames["track_id"].to_numpy()[rows], keypoints[rows])
    return out


def read_ground_truth(uri: str) -> dict | None:
    from pipeline.storage import resolve

    fs, path = resolve(uri.rsplit(".", 1)[0] + ".json")
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def evaluate_video(frames: pd.DataFrame, gt: dict) -> dict:
    from pipeline.evaluation.metrics import evaluate_results
    from pipeline.evaluation.mot import evaluate_tracks, load_ground_truth
    from pipeline.outputs.coco_export import coco_results
    from pipeline.synthetic.videos import video_ground_truth_to_coco

    tracking = evaluate_tracks(load_ground_truth(gt), predicted_frames(frames))
    # the sidecar's COCO form numbers images frame_index + 1
    pose = evaluate_results(video_ground_truth_to_coco(gt), coco_results(frames, image_id_offset=1))
    return {"mota": tracking["mota"], "idf1": tracking["idf1"], "id_switches": tracking["id_switches"],
            "AP": pose["AP"], "PCK": pose["PCK"]}


def evaluate_output(output: str) -> pd.DataFrame:
    import pandas as pd

    from pipeline.outputs.query import connect, query

    try:
        con = connect(output)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    rows = []
    for video_id, uri in query(con, "SELECT DISTINCT video_id, uri FROM frames ORDER BY uri").itertuples(index=False):
        gt = read_ground_truth(uri)
        if gt is None:
            continue
        frames = query(con, "SELECT * FROM frames WHERE video_id = ? ORDER BY frame_index, person_index", [video_id])
        rows.append({"video_id": video_id, "scenario": gt.get("scenario", ""), **evaluate_video(frames, gt)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser("evaluate-tracks", __doc__)
    parser.add_argument("output", help="output root of a `posepipe run` over videos with ground-truth sidecars")
    args = parser.parse_args(argv)
    try:
        table = evaluate_output(args.output)
    except UsageError as exc:
        return fail(exc)
    if table.empty:
        return fail(f"no video in {args.output} has a ground-truth sidecar beside its source (clip.mp4 -> clip.json, "
                    f"as `posepipe synth videos` writes them)")
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nmean over {len(table)} videos: IDF1 {table.idf1.mean():.3f}  MOTA {table.mota.mean():.3f}  "
          f"ID switches {int(table.id_switches.sum())}  OKS AP {table.AP.mean():.3f}  PCK@0.2 {table.PCK.mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
