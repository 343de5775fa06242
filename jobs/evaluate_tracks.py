"""`posepipe evaluate-tracks OUTPUT`: score a run's keypoint tracks against ground-truth sidecars.

For every video in the frames table whose source file has a ground-truth JSON beside it (`clip.mp4` ->
`clip.json`, as the synthetic generator writes them), report tracking (MOTA, IDF1, ID switches; motmetrics) and
pose accuracy (OKS AP and PCK@0.2; pycocotools), per video and over all of them.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

from pipeline.coco_export import coco_results
from pipeline.metrics import evaluate_results
from pipeline.mot import evaluate_tracks, load_ground_truth
from pipeline.query import connect, keypoint_array, query
from pipeline.storage import resolve
from pipeline.synthetic.videos import video_ground_truth_to_coco


def predicted_frames(frames: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frames-table rows of one video -> frame_index -> (track ids (P,), keypoints (P, K, 3))."""
    keypoints = keypoint_array(frames)                                            # (N, K, 3)
    out = {}
    for frame_index, rows in frames.groupby("frame_index").indices.items():
        out[int(frame_index)] = (frames["track_id"].to_numpy()[rows], keypoints[rows])
    return out


def read_ground_truth(uri: str) -> dict | None:
    fs, path = resolve(uri.rsplit(".", 1)[0] + ".json")
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def evaluate_video(frames: pd.DataFrame, gt: dict) -> dict:
    tracking = evaluate_tracks(load_ground_truth(gt), predicted_frames(frames))
    # the sidecar's COCO form numbers images frame_index + 1
    pose = evaluate_results(video_ground_truth_to_coco(gt), coco_results(frames, image_id_offset=1))
    return {"mota": tracking["mota"], "idf1": tracking["idf1"], "id_switches": tracking["id_switches"],
            "AP": pose["AP"], "PCK": pose["PCK"]}


def evaluate_output(output: str) -> pd.DataFrame:
    con = connect(output)
    rows = []
    for video_id, uri in query(con, "SELECT DISTINCT video_id, uri FROM frames ORDER BY uri").itertuples(index=False):
        gt = read_ground_truth(uri)
        if gt is None:
            continue
        frames = query(con, "SELECT * FROM frames WHERE video_id = ? ORDER BY frame_index, person_index", [video_id])
        rows.append({"video_id": video_id, "scenario": gt.get("scenario", ""), **evaluate_video(frames, gt)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posepipe evaluate-tracks", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="output root of a `posepipe run` over videos with ground-truth sidecars")
    args = parser.parse_args(argv)
    table = evaluate_output(args.output)
    if table.empty:
        print("no video in the output has a ground-truth sidecar (clip.mp4 -> clip.json)", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nmean over {len(table)} videos: IDF1 {table.idf1.mean():.3f}  MOTA {table.mota.mean():.3f}  "
          f"ID switches {int(table.id_switches.sum())}  OKS AP {table.AP.mean():.3f}  PCK@0.2 {table.PCK.mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
