"""jobs.evaluate on a generated COCO set: ground-truth results score AP = 1.0, shifted ones less, and a checkpoint
is run end to end (its predictions, saved and re-scored through --results, give the same numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.evaluate import main
from pipeline.models.bottomup import ModelConfig, PoseNet
from pipeline.models.checkpoint import checkpoint_metadata, save_checkpoint
from pipeline.synthetic import write_coco_dataset


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("coco")
    write_coco_dataset(root, num_images=4, seed=5, image_size=(128, 96), num_people=(1, 3), person_height=(40, 90))
    return str(root)


def results_from_truth(root: str, shift: float) -> list[dict]:
    """Ground-truth keypoints as predictions, moved `shift` px right."""
    gt = json.loads(open(f"{root}/annotations.json").read())
    results = []
    for ann in gt["annotations"]:
        kp = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, 0] = np.where(kp[:, 2] > 0, kp[:, 0] + shift, 0.0)
        kp[:, 2] = (kp[:, 2] > 0).astype(float)
        results.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                        "score": 1.0})
    return results


def run(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_ground_truth_results_score_one_and_shifted_less(coco_set, tmp_path, capsys):
    scores = []
    for shift in (0.0, 3.0):
        path = tmp_path / f"results-{shift}.json"
        path.write_text(json.dumps(results_from_truth(coco_set, shift)))
        scores.append(run(capsys, "--results", str(path), "--data", coco_set))
    assert scores[0]["AP"] == pytest.approx(1.0) and scores[0]["PCK"] == pytest.approx(1.0)
    assert scores[0]["images"] == 4 and scores[0]["predictions"] == scores[0]["people"] > 0
    assert scores[1]["AP"] < 0.9 and scores[1]["AR"] < scores[0]["AR"]


def test_checkpoint_predictions_round_trip(coco_set, tmp_path, capsys):
    config = ModelConfig(input_size=96, width=8, stage_blocks=(1, 1), feature_channels=16, head_channels=8)
    checkpoint = tmp_path / "random.pt"
    save_checkpoint(PoseNet(config), str(checkpoint), checkpoint_metadata(config))
    saved = tmp_path / "predictions.json"
    direct = run(capsys, "--checkpoint", str(checkpoint), "--data", coco_set, "--save-results", str(saved),
                 "--threads", "1")
    assert {"AP", "AP50", "AR", "PCK"} <= set(direct) and 0.0 <= direct["AP"] <= 1.0
    rescored = run(capsys, "--results", str(saved), "--data", coco_set)
    assert rescored["AP"] == pytest.approx(direct["AP"]) and rescored["predictions"] == direct["predictions"]
    # grouping as a run config sets it: every peak of the random net makes a person, or none reaches 2.0
    def predictions(*grouping: str) -> int:
        args = [arg for item in grouping for arg in ("--grouping", item)]
        return run(capsys, "--checkpoint", str(checkpoint), "--data", coco_set, "--threads", "1", *args)["predictions"]
    assert predictions("peak_threshold=0", "min_aligned_fraction=0", "min_limb_score=-10", "min_keypoints=1",
                       "min_person_score=-1") > 0
    assert predictions("peak_threshold=2.0") == 0
    assert main(["--checkpoint", str(checkpoint), "--data", coco_set, "--grouping", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


def test_bad_inputs_exit_2_with_a_message(coco_set, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--data", coco_set]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "r.json").write_text("{}")
    assert main(["--results", str(tmp_path / "r.json"), "--data", coco_set]) == 2
    assert "JSON list" in capsys.readouterr().err


def test_precision_runs_the_network_as_a_run_does(coco_set):
    """`--precision bf16` autocasts the trained net: most keypoints move by rounding only (a few jump where a
    near-tie between two peaks breaks the other way; jobs.evaluate on the test split scores both alike)."""
    from pipeline.evaluation.predict import predict_dataset

    scored = {precision: predict_dataset("models/posepipe-synthetic.pt", coco_set, precision=precision)[1]
              for precision in ("fp32", "bf16")}
    fp32, bf16 = (np.array([r["keypoints"] for r in scored[p]]) for p in ("fp32", "bf16"))
    assert len(fp32) > 0 and fp32.shape == bf16.shape
    moved = np.abs(fp32 - bf16).reshape(len(fp32), -1, 3)[..., :2]
    assert 0 < np.median(moved) < 0.5  # bf16 really ran, and only rounding changed
