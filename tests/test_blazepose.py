"""The imported BlazePose nets: fidelity to the reference runtime (LiteRT) on real images, the converter's refusals,
the weights import and its cache, and the top-down pieces (anchors, NMS, crops, heatmap refinement, OKS)."""

from __future__ import annotations

import math
import os
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from pipeline.models.blazepose import weights
from pipeline.models.blazepose.convert import ConversionError, load_graph_weights
from pipeline.models.blazepose.detector import NUM_ANCHORS, ssd_anchors
from pipeline.models.blazepose.landmarks import VARIANTS, LandmarkNet
from pipeline.models.blazepose.roi import alignment_matrices, crop_matrices, crop_to_frame, sample_rois
from pipeline.models.blazepose.tflite_graph import UnsupportedGraph, read_graph
from pipeline.models.blazepose.topdown import decode_detections, oks_nms, refine_from_heatmaps, weighted_nms
from pipeline.models.checkpoint import CheckpointError, read_metadata, resolve_checkpoint

PHOTOS = Path(__file__).resolve().parent.parent / "pipeline" / "photos"


@pytest.fixture(scope="module")
def graphs() -> dict[str, bytes]:
    """The original .tflite graphs, from the package tarball `make install` fetched (downloaded if missing)."""
    return weights.read_graphs(weights.read_archive(), list(weights.GRAPHS))


def photo(name: str, size: int) -> np.ndarray:
    """A shipped photo of a real person, RGB, resized to (size, size)."""
    image = cv2.cvtColor(cv2.imread(str(PHOTOS / name)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def litert(graph: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """The reference runtime's outputs by name for one (1, H, W, 3) float input."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=graph, num_threads=2)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


# Tolerances of torch against LiteRT. Both compute in float32 through nets of up to ~200 layers, with different
# kernels (oneDNN, ATen, XNNPACK) that sum in different orders, so outputs differ by rounding. The largest relative
# error measured on the outputs posepipe uses (detector scores and boxes, landmarks, heatmaps, world landmarks) was
# 2.2e-5 with AVX2 kernels and with SSE4.1 kernels (ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41), and
# below 2e-4 with AVX-512 (docs/performance.md); landmarks moved at most 0.0008 px (AVX2, SSE4.1) and 0.004 px
# (AVX-512). The tolerances are 5x the largest of these. The segmentation mask is not used downstream and its logits
# are unbounded (|logit| up to 1,700, errors up to 2e-3 of that on some CPUs), so only its mask is compared.
RELATIVE_TOLERANCE = 1e-3
LANDMARK_TOLERANCE_PX = 0.02
PRESENCE_TOLERANCE = 1e-3
MASK_AGREEMENT = 0.999          # measured: 1.0 on every net and photo, AVX2 and SSE4.1


def assert_relative(got: torch.Tensor, expected: np.ndarray, tolerance: float = RELATIVE_TOLERANCE) -> None:
    """Largest difference within `tolerance` of the reference's largest magnitude."""
    got = got.detach().numpy().reshape(expected.shape)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < tolerance, f"relative error {error:.2e}"


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png"])
def test_detector_matches_litert_on_real_photos(graphs, name):
    detector = weights.convert_detector(graphs["detector"])
    x = (photo(name, 224).astype(np.float32) / 127.5 - 1.0)[None]           # (1, 224, 224, 3) in [-1, 1]
    expected = litert(graphs["detector"], x)
    with torch.inference_mode():
        scores, boxes = detector(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert scores.shape == (1, NUM_ANCHORS, 1) and boxes.shape == (1, NUM_ANCHORS, 12)
    assert_relative(scores, expected["Identity_1"])
    assert_relative(boxes, expected["Identity"])
    assert torch.sigmoid(scores).max() > 0.5                                   # the photo's person is found


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", ["astronaut.png", "camera.png"])
def test_landmark_nets_match_litert_on_real_photos(graphs, variant, name):
    net = weights.convert_landmarks(graphs[variant], variant)
    x = (photo(name, 256).astype(np.float32) / 255.0)[None]                 # (1, 256, 256, 3) in [0, 1]
    expected = litert(graphs[variant], x)
    with torch.inference_mode():
        out = net(torch.from_numpy(x).permute(0, 3, 1, 2), segmentation=True)
    landmarks = out["landmarks"].numpy().reshape(1, -1)
    xy_error = np.abs(landmarks - expected["Identity"]).reshape(39, 5)[:, :2].max()    # x, y in crop pixels
    assert xy_error < LANDMARK_TOLERANCE_PX, f"landmarks {xy_error:.4f} px from LiteRT's"
    assert_relative(out["landmarks"], expected["Identity"])
    assert_relative(out["heatmaps"].permute(0, 2, 3, 1), expected["Identity_3"])
    assert_relative(out["world"], expected["Identity_4"])
    mask = out["segmentation"].permute(0, 2, 3, 1).numpy().reshape(expected["Identity_2"].shape) > 0
    assert (mask == (expected["Identity_2"] > 0)).mean() >= MASK_AGREEMENT       # wired right: the same person
    presence = float(out["presence"].reshape(()))
    assert abs(presence - float(expected["Identity_1"].reshape(()))) < PRESENCE_TOLERANCE and presence > 0.5


def test_the_detector_runs_the_graphs_function_in_fewer_operations(graphs):
    """The inference form (lateral convs before the upsampling, no depth-to-space) against the graph's own order of
    ops, on a real photo and on noise (every anchor's output, not only the confident ones)."""
    detector = weights.convert_detector(graphs["detector"]).double()
    rng = np.random.default_rng(0)
    photo_input = torch.from_numpy(photo("astronaut.png", 224).astype(np.float64) / 127.5 - 1.0).permute(2, 0, 1)
    x = torch.stack([photo_input, torch.from_numpy(rng.uniform(-1, 1, (3, 224, 224)))])
    with torch.inference_mode():
        for fast, graph in zip(detector(x), detector(x, graph_order=True)):
            assert torch.allclose(fast, graph, rtol=0, atol=1e-9 * graph.abs().max())


@pytest.mark.parametrize("size", [(7, 7), (6, 9)])
def test_a_depthwise_conv_on_a_depth_to_space_reads_the_blocks_in_place(size):
    from pipeline.models.blazepose.detector import depthwise_on_depth_to_space
    from pipeline.models.blazepose.layers import depth_to_space

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5).double()
    x = torch.randn(2, 20, *size, dtype=torch.float64)
    with torch.inference_mode():
        assert torch.allclose(depthwise_on_depth_to_space(x, conv), conv(depth_to_space(x, 2)), rtol=0, atol=1e-12)


def test_an_onnx_export_is_not_reused_once_the_code_changes(tmp_path, monkeypatch):
    import importlib.util

    from pipeline.models.onnx_net import export_key

    def net_from(name: str, forward: str) -> torch.nn.Module:
        path = tmp_path / f"{name}.py"
        path.write_text("import torch\n\n\nclass Net(torch.nn.Module):\n"
                        "    def __init__(self):\n        super().__init__()\n"
                        "        self.conv = torch.nn.Conv2d(3, 4, 1)\n\n"
                        f"    def forward(self, x):\n        return {forward}\n")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        return module.Net()

    before, again = net_from("a", "self.conv(x)"), net_from("b", "self.conv(x)")
    after = net_from("c", "self.conv(x).relu()")                       # same weights, same class name, other code
    assert export_key(before, (3, 8, 8)) == export_key(again, (3, 8, 8)) != export_key(after, (3, 8, 8))
    assert export_key(before, (3, 8, 8)) != export_key(before, (3, 16, 16))


@pytest.mark.parametrize("variant", ["detector", *VARIANTS])
def test_onnx_runtime_nets_match_litert_on_real_photos(graphs, variant, tmp_path):
    """The CPU runtime (the torch modules exported to ONNX, batch dynamic) holds the same tolerances against LiteRT,
    for a batch of two photos; the second construction reads the exported graph from the cache."""
    from pipeline.models.onnx_net import OnnxNet

    size = 224 if variant == "detector" else 256
    module = weights.convert_detector(graphs["detector"]) if variant == "detector" \
        else weights.convert_landmarks(graphs[variant], variant)
    scale = (127.5, -1.0) if variant == "detector" else (255.0, 0.0)
    x = np.stack([photo(name, size).astype(np.float32) / scale[0] + scale[1] for name in ("astronaut.png",
                                                                                        "camera.png")])
    OnnxNet(module, (3, size, size), threads=2, cache=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    net = OnnxNet(module, (3, size, size), threads=2, cache=tmp_path)
    out = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    for i in range(2):
        expected = litert(graphs["detector" if variant == "detector" else variant], x[i:i + 1])
        if variant == "detector":
            assert_relative(out[0][i], expected["Identity_1"])
            assert_relative(out[1][i], expected["Identity"])
            continue
        xy_error = np.abs(out["landmarks"][i].numpy().reshape(1, -1) - expected["Identity"]).reshape(39, 5)[:, :2]
        assert xy_error.max() < LANDMARK_TOLERANCE_PX, f"landmarks {xy_error.max():.4f} px from LiteRT's"
        assert_relative(out["heatmaps"][i].permute(1, 2, 0), expected["Identity_3"])
        assert abs(float(out["presence"][i]) - float(expected["Identity_1"].reshape(()))) < PRESENCE_TOLERANCE


def test_the_runtime_is_picked_by_device_precision_and_compile():
    from pipeline.models.runtime import pick_runtime

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_runtime("auto", cpu, None) == "onnxruntime"
    assert pick_runtime("auto", cpu, torch.bfloat16) == pick_runtime("auto", cuda, None) == "torch"
    assert pick_runtime("auto", cpu, None, compile_model=True) == "torch"
    assert pick_runtime("torch", cpu, None) == "torch"
    with pytest.raises(ValueError, match="model.runtime=onnxruntime runs fp32 nets on a CPU"):
        pick_runtime("onnxruntime", cuda, None)
    with pytest.raises(ValueError, match="expected model.runtime"):
        pick_runtime("tensorrt", cpu, None)


def test_another_models_graph_is_refused_naming_what_was_expected(graphs):
    with pytest.raises(weights.WeightsError, match="not the BlazePose landmark net heavy"):
        weights.convert_landmarks(graphs["detector"], "heavy")
    with pytest.raises(weights.WeightsError, match="not the BlazePose person detector"):
        weights.convert_detector(graphs["lite"])
    with pytest.raises(weights.WeightsError, match="TFLite flatbuffer"):
        weights.convert_detector(b"not a graph at all")


def test_a_module_that_differs_from_the_graph_fails_loudly(graphs):
    graph = read_graph(graphs["full"])
    with pytest.raises(ConversionError):                      # right architecture, wrong widths and depths
        load_graph_weights(LandmarkNet(VARIANTS["lite"]), graph, lambda m, x: m(x, segmentation=True))
    with pytest.raises(ConversionError, match="not the graph's"):  # the segmentation output left out
        load_graph_weights(LandmarkNet(VARIANTS["full"]), graph)


def test_ops_the_converter_does_not_know_are_refused(graphs):
    data = bytearray(graphs["detector"])
    with pytest.raises(UnsupportedGraph, match="TFL3"):
        read_graph(bytes(data[:4]) + b"XXXX" + bytes(data[8:]))
    from pipeline.models.blazepose import tflite_graph

    with pytest.raises(UnsupportedGraph, match="SOFTMAX is not supported"):
        tflite_graph.read_options("SOFTMAX", SimpleNamespace(BuiltinOptions=lambda: None))


def test_fetch_imports_checks_and_caches(tmp_path, monkeypatch):
    source = tmp_path / "pose.tgz"
    source.write_bytes(weights.read_archive())                  # this machine's cached copy: no download here
    monkeypatch.setenv("POSEPIPE_CACHE", str(tmp_path / "cache"))
    uris = weights.fetch_models(("lite",), archive=str(source))
    assert uris == [str(tmp_path / "cache" / "models" / "blazepose-lite.pt")]
    meta = read_metadata(uris[0])
    assert meta["kind"] == "topdown" and meta["variant"] == "lite" and meta["license"] == "Apache-2.0"
    assert meta["source"]["package"] == "@mediapipe/pose" and meta["source"]["archive_sha256"] == \
        weights.ARCHIVE_SHA256
    assert meta["keypoint_mapping"]["coco_from_source"][:3] == [0, 2, 5] and len(meta["keypoint_names"]) == 17
    assert resolve_checkpoint("blazepose-lite") == uris[0]
    assert weights.cached_archive().is_file()                     # kept for offline re-imports and these tests
    written = os.stat(uris[0]).st_mtime_ns
    assert weights.fetch_models(("lite",)) == uris and os.stat(uris[0]).st_mtime_ns == written  # current: kept

    Path(uris[0]).write_bytes(Path(uris[0]).read_bytes()[:1000])    # a corrupt cache names the command that fixes it
    with pytest.raises(CheckpointError, match="posepipe models fetch --force"):
        read_metadata(uris[0])
    weights.fetch_models(("lite",))                                 # unreadable counts as not current
    assert read_metadata(uris[0])["variant"] == "lite"
    with pytest.raises(CheckpointError, match="posepipe models fetch"):
        resolve_checkpoint("blazepose-heavy")                       # not imported into this cache
    weights.cached_archive().write_bytes(b"damaged")                # a damaged cached archive is replaced
    weights.fetch_models(("lite",), archive=str(source), force=True)
    assert weights.sha256(weights.cached_archive().read_bytes()) == weights.ARCHIVE_SHA256


def test_a_wrong_archive_is_refused(tmp_path, monkeypatch, capsys):
    from jobs.models import main

    monkeypatch.setenv("POSEPIPE_CACHE", str(tmp_path / "cache"))
    wrong = tmp_path / "pose.tgz"
    with tarfile.open(wrong, "w:gz") as tar:
        tar.add(str(PHOTOS / "astronaut.png"), arcname="package/pose_landmark_lite.tflite")
    assert main(["fetch", "--archive", str(wrong)]) == 1
    assert "expected sha256 " + weights.ARCHIVE_SHA256 in capsys.readouterr().err
    assert not (tmp_path / "cache" / "models" / "blazepose-heavy.pt").exists()


def test_checkpoints_load_from_object_storage(tmp_path):
    import boto3

    from pipeline.models.pose_model import TopDownModel, load_pose_model

    from conftest import s3_server

    with s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        options = {"endpoint_url": endpoint}
        weights.fetch_models(("lite",), out="s3://models/posepipe", archive=str(weights.cached_archive()),
                             storage_options=options)
        model, meta = load_pose_model("s3://models/posepipe/blazepose-lite.pt", torch.device("cpu"), "fp32",
                                      storage_options=options)
    assert isinstance(model, TopDownModel) and meta["variant"] == "lite"


def test_anchors_follow_mediapipes_ssd_layout():
    anchors = ssd_anchors()
    assert anchors.shape == (2254, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 28, 0.5 / 28])              # stride 8: 28x28 cells, 2 anchors
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 28, 0.5 / 28])
    np.testing.assert_allclose(anchors[1568], [0.5 / 14, 0.5 / 14])          # stride 16: 14x14 cells, 2 anchors
    np.testing.assert_allclose(anchors[1960:1966], [[0.5 / 7, 0.5 / 7]] * 6)  # stride 32 x3 layers: 6 per cell
    np.testing.assert_allclose(anchors[-1], [6.5 / 7, 6.5 / 7])


def test_detections_decode_into_frame_pixels_of_their_view():
    anchors = torch.from_numpy(ssd_anchors())
    scores = torch.full((1, NUM_ANCHORS, 1), -10.0)
    boxes = torch.zeros((1, NUM_ANCHORS, 12))
    scores[0, 100] = 3.0
    boxes[0, 100] = torch.tensor([11.2, -22.4, 44.8, 44.8, 0, 0, 0, -56, 0, 0, 0, 0])  # pixels of the 224 input
    view = torch.tensor([[100.0, 50.0, 448.0]])                                # x0, y0, side: 2 frame px per input px
    index, prob, box, keypoints = decode_detections(scores, boxes, anchors, view, threshold=0.5)
    ax, ay = anchors[100].tolist()
    assert index.tolist() == [0] and abs(float(prob) - 1 / (1 + math.exp(-3))) < 1e-6
    centre = (100 + (0.05 + ax) * 448, 50 + (-0.1 + ay) * 448)
    np.testing.assert_allclose(box[0], [centre[0] - 44.8, centre[1] - 44.8, centre[0] + 44.8, centre[1] + 44.8],
                               atol=1e-3)
    np.testing.assert_allclose(keypoints[0, 0], [100 + ax * 448, 50 + ay * 448], atol=1e-3)
    np.testing.assert_allclose(keypoints[0, 1], [100 + ax * 448, 50 + (ay - 0.25) * 448], atol=1e-3)


def test_weighted_nms_keeps_every_person_and_averages_each_cluster():
    scores = np.array([0.9, 0.6, 0.8, 0.55], np.float32)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [200, 0, 210, 10]], np.float32)
    keypoints = np.stack([np.full((4, 2), v, np.float32) for v in (0.0, 15.0, 100.0, 300.0)])
    kept, points = weighted_nms(scores, boxes, keypoints, threshold=0.3, limit=10)
    np.testing.assert_allclose(kept, [0.9, 0.8, 0.55])
    np.testing.assert_allclose(points[:, 0, 0], [15.0 * 0.6 / 1.5, 100.0, 300.0], rtol=1e-6)
    assert len(weighted_nms(scores, boxes, keypoints, threshold=0.3, limit=2)[0]) == 2


def test_crops_and_their_points_map_back_to_the_frame():
    """A bright dot sampled into a rotated crop appears where crop_to_frame maps it back."""
    frames = torch.zeros((2, 200, 300, 3), dtype=torch.uint8)
    frames[1, 119:122, 179:182] = 255                                          # dot centred on pixel (180, 120)
    start, end = torch.tensor([[150.5, 100.5]]), torch.tensor([[190.5, 70.5]])  # 50 px apart, tilted
    matrices = alignment_matrices(start, end, scale=1.0, size=128)             # side 100
    crop = sample_rois(frames, torch.tensor([1]), matrices, 128)[0, 0]         # (128, 128)
    row, col = np.unravel_index(int(crop.argmax()), crop.shape)
    back = crop_to_frame(matrices, torch.tensor([[[col + 0.5, row + 0.5]]], dtype=torch.float32))[0, 0]
    assert torch.linalg.vector_norm(back - torch.tensor([180.5, 120.5])) < 1.5  # corner coordinates of the dot
    corners = crop_to_frame(matrices, torch.tensor([[[64.0, 64.0], [64.0, 0.0], [0.0, 0.0], [128.0, 128.0]]]))[0]
    torch.testing.assert_close(corners[0], start[0])                            # centred on the start point,
    torch.testing.assert_close(corners[1], end[0])                              # the end point straight up (scale 1)
    assert abs(float(torch.linalg.vector_norm(corners[3] - corners[2])) - 100 * 2 ** 0.5) < 1e-3   # side 100


def test_alignment_crops_are_mediapipes_rotated_rectangles():
    """The matrix form of the alignment crop equals the ROI MediaPipe defines: centre at the start point, side
    2 |end - start| scale, rotated by pi/2 - atan2(-dy, dx)."""
    rng = np.random.default_rng(0)
    start, end = torch.from_numpy(rng.uniform(0, 640, (50, 2))), torch.from_numpy(rng.uniform(0, 640, (50, 2)))
    delta = end - start
    angle = math.pi / 2 - torch.atan2(-delta[:, 1], delta[:, 0])
    rois = torch.stack([torch.zeros(50, dtype=torch.float64), start[:, 0], start[:, 1],
                        2 * torch.linalg.vector_norm(delta, dim=-1) * 1.25, angle], dim=-1)
    torch.testing.assert_close(alignment_matrices(start, end, 1.25, 256), crop_matrices(rois, 256))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_both_crop_samplers_match_torchs_grid_sample(padding_mode):
    """OpenCV's warps (the CPU path) and the one-gather sampler (the GPU path, run here on the CPU) cut the same
    crops as grid_sample(align_corners=False), within rounding (OpenCV interpolates at 1/32 pixel)."""
    from pipeline.models.blazepose.roi import gather_rois, warp_rois

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, 45, 80, 3), dtype=np.uint8)
    frames = torch.from_numpy(np.ascontiguousarray(blocks.repeat(8, 1).repeat(8, 2)))     # (3, 360, 640, 3)
    rois = torch.tensor([[0, 100.3, 50.7, 200, 0.3], [1, 600, 340, 300, -2.0], [2, 320, 180, 90, 3.1],
                         [0, 5, 5, 400, 0.0]])
    expected = []
    for f, cx, cy, side, angle in rois.tolist():
        cos, sin, (h, w) = math.cos(angle), math.sin(angle), frames.shape[1:3]
        theta = torch.tensor([[[side * cos / w, -side * sin / w, 2 * cx / w - 1],
                               [side * sin / h, side * cos / h, 2 * cy / h - 1]]])
        grid = torch.nn.functional.affine_grid(theta, [1, 3, 64, 64], align_corners=False)
        image = frames[int(f)].permute(2, 0, 1).float()[None]
        expected.append(torch.nn.functional.grid_sample(image, grid, padding_mode=padding_mode, align_corners=False))
    expected = torch.cat(expected)
    frame, matrices = rois[:, 0].long(), crop_matrices(rois, 64)
    assert (warp_rois(frames, frame, matrices, 64, padding_mode) - expected).abs().max() < 0.1
    assert (gather_rois(frames, frame, matrices, 64, padding_mode) - expected).abs().max() < 0.05
    assert torch.equal(sample_rois(frames, frame, matrices, 64, padding_mode),
                       warp_rois(frames, frame, matrices, 64, padding_mode))


def test_heatmap_refinement_moves_a_landmark_to_the_heatmap_peak():
    h = w = 64
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    peak = (20.3, 33.6)                                                        # col, row in heatmap pixels
    blob = torch.exp(-((xx - peak[0]) ** 2 + (yy - peak[1]) ** 2) / 2)
    heatmaps = torch.logit(blob.clamp(1e-4, 1 - 1e-4))[None, None]             # (1, 1, 64, 64) logits
    xy = torch.tensor([[[21.0 * 4, 34.0 * 4]]])                                # regressed, crop pixels
    refined = refine_from_heatmaps(xy, heatmaps)[0, 0] / 4
    assert abs(float(refined[0]) - peak[0]) < 0.1 and abs(float(refined[1]) - peak[1]) < 0.1
    flat = torch.full((1, 1, 64, 64), -10.0)                                   # no confident heatmap: unchanged
    assert torch.equal(refine_from_heatmaps(xy, flat), xy)


def test_oks_nms_drops_a_second_hypothesis_of_the_same_person_only():
    rng = np.random.default_rng(0)
    person = np.concatenate([rng.uniform(0, 200, (17, 2)), np.ones((17, 1))], axis=-1)
    same_face_other_guess = person.copy()
    same_face_other_guess[5:, :2] += 80                                        # body guessed elsewhere...
    same_face_other_guess[5:, 2] = 0.05                                        # ...where it is not seen
    stranger = person.copy()
    stranger[:, 0] += 400
    keep = oks_nms(np.stack([person, same_face_other_guess, stranger]), np.array([0.9, 0.95, 0.8]), 0.7)
    assert keep.tolist() == [1, 2]


def test_config_rejects_values_out_of_range():
    from pipeline.models.blazepose.topdown import TopDownConfig

    with pytest.raises(ValueError, match="tiles"):
        TopDownConfig(tiles=((1, 0.5, 1.0),))
    with pytest.raises(ValueError, match="presence_threshold"):
        TopDownConfig(presence_threshold=2.0)
