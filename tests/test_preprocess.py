import cv2
import numpy as np
import pytest
import torch

from pipeline.pose.heatmaps import decode_heatmaps, encode_heatmaps, heatmap_to_input, input_to_heatmap
from pipeline.pose.letterbox import IMAGE_MEAN, IMAGE_STD, Letterbox, letterbox_frames, normalize


@pytest.mark.parametrize("width,height", [(320, 240), (240, 320), (1920, 1080), (101, 37), (16, 16), (256, 256)])
def test_letterbox_round_trip(width, height):
    lb = Letterbox.fit(width, height, 256)
    assert max(lb.resized_width, lb.resized_height) == 256
    points = np.array([[0.0, 0.0], [width - 1.0, height - 1.0], [width / 3.3, height / 1.7]])
    np.testing.assert_allclose(lb.to_image(lb.to_input(points)), points, atol=1e-9)
    uv = lb.to_input(points)
    assert (uv >= -0.5).all() and (uv <= 255.5).all()


def test_letterbox_places_a_pixel_where_the_transform_says():
    width, height = 200, 100
    frame = np.zeros((height, width, 3), np.uint8)
    frame[40:60, 120:140] = 255                      # a block centred at x = 129.5, y = 49.5
    lb = Letterbox.fit(width, height, 128)
    out = lb.apply(frame)
    assert out.shape == (128, 128, 3)
    ys, xs = np.nonzero(out[..., 0] > 127)
    centre = lb.to_input(np.array([129.5, 49.5]))
    assert abs(xs.mean() - centre[0]) < 0.6 and abs(ys.mean() - centre[1]) < 0.6
    assert out[: lb.pad_y].max() == 0 and out[lb.pad_y + lb.resized_height:].max() == 0  # padding rows


@pytest.mark.parametrize("width,height", [(320, 240), (90, 300), (1280, 720)])
def test_gaussian_peak_maps_back_to_original_pixel(width, height):
    """Keypoint in the original frame -> input -> heatmap Gaussian -> decoded peak -> original frame."""
    lb = Letterbox.fit(width, height, 256)
    truth = np.array([width * 0.37 + 0.21, height * 0.61 - 0.33])
    hm_xy = input_to_heatmap(lb.to_input(truth), 4)
    heatmaps = encode_heatmaps(np.array([[[hm_xy[0], hm_xy[1], 2.0]]]), (64, 64), sigma=2.0)[None]  # (1, 1, 64, 64)
    xy, score = decode_heatmaps(heatmaps)
    back = lb.to_image(heatmap_to_input(xy[0, 0], 4))
    stride_in_pixels = 4 / min(lb.scale_x, lb.scale_y)
    assert score[0, 0] > 0.9
    assert np.abs(back - truth).max() < 0.05 * stride_in_pixels   # sub-pixel: 1/20 of a heatmap cell


def test_an_unpadded_letterbox_only_shrinks_and_maps_back():
    small, large = Letterbox.fit(640, 360, 1024, pad=False), Letterbox.fit(1920, 1080, 1024, pad=False)
    assert small.frame_shape == (360, 640) and small.picture_box == (0, 0, 640, 360)
    assert large.frame_shape == (576, 1024) and (large.pad_x, large.pad_y) == (0, 0)
    xy = np.array([[100.0, 50.0], [1900.0, 1000.0]])
    np.testing.assert_allclose(large.to_image(large.to_input(xy)), xy)


@pytest.mark.parametrize("width,height", [(640, 360), (1920, 1080), (300, 500)])
def test_frames_letterboxed_on_the_device_equal_the_decode_stages_letterbox(width, height):
    """Frames that travel unpadded (shrunk only when larger) letterboxed where the model runs: the same square as
    letterboxing the original, to the rounding of a second resize where the frame was shrunk in transit."""
    rng = np.random.default_rng(0)
    original = cv2.resize(rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8), (width, height))
    travelled = Letterbox.fit(width, height, 1024, pad=False).apply(original)
    square = Letterbox.fit(width, height, 1024)
    got = letterbox_frames(torch.from_numpy(travelled[None]), square)[0].numpy()
    expected = square.apply(original)
    assert got.shape == expected.shape == (1024, 1024, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 1.0
    x0, y0, w, h = square.picture_box
    outside = np.ones(got.shape[:2], bool)
    outside[y0:y0 + h, x0:x0 + w] = False
    assert got[outside].max(initial=0) == 0 and got[~outside].max() > 0


def test_normalize_matches_the_formula():
    frames = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    out = normalize(frames)
    assert out.shape == (2, 3, 8, 8)
    expected = (frames[0, 3, 5].float() / 255 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    torch.testing.assert_close(out[0, :, 3, 5], expected)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        normalize(frames.permute(0, 3, 1, 2))
