"""Real people for the demo: two freely licensed photos shipped in this folder, animated into short clips.

    astronaut.png  Eileen Collins, NASA (public domain), via scikit-image's data folder (`skimage.data.astronaut`)
    camera.png     a man with a camera, photograph by Lav Varshney (CC0), via scikit-image (`skimage.data.camera`)

Sources and licences are in SOURCES.md beside them. `write_photo_clips` turns each photo into an H.264 clip with a
slow pan and zoom (the camera moves, the person stays put), so a run has real people to find and follow.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic.videos import encode_video

PHOTOS = ("astronaut.png", "camera.png")
FOLDER = Path(__file__).resolve().parent


def pan_and_zoom_matrices(shape: tuple[int, int], num_frames: int, size: tuple[int, int],
                          zoom: tuple[float, float] = (1.0, 1.25)) -> list[np.ndarray]:
    """Per frame, the (2, 3) affine map from photo pixels to frame pixels of a window sliding and zooming over a
    photo of `shape` (H, W): from the whole width at zoom[0] to a closer view at zoom[1], drifting left to right."""
    h, w = shape
    width, height = size
    matrices = []
    for t in np.linspace(0.0, 1.0, num_frames):
        zoom_t = zoom[0] + (zoom[1] - zoom[0]) * t
        view_w = min(w, h * width / height) / zoom_t                     # window keeping the output's aspect
        cx, cy = view_w / 2 + (w - view_w) * t, h / 2
        scale = width / view_w
        matrices.append(np.array([[scale, 0, width / 2 - cx * scale], [0, scale, height / 2 - cy * scale]]))
    return matrices


def pan_and_zoom(photo: np.ndarray, num_frames: int, size: tuple[int, int],
                 zoom: tuple[float, float] = (1.0, 1.25)) -> list[np.ndarray]:
    """The frames (H, W, 3) of `pan_and_zoom_matrices` over `photo`."""
    return [cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for matrix in pan_and_zoom_matrices(photo.shape[:2], num_frames, size, zoom)]


def write_photo_clips(out_dir: str | Path, num_frames: int = 48, fps: float = 24.0,
                      size: tuple[int, int] = (480, 360)) -> list[Path]:
    """One clip per photo, out_dir/<photo stem>.mp4; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        photo = cv2.imread(str(FOLDER / name), cv2.IMREAD_COLOR)
        photo = cv2.cvtColor(photo, cv2.COLOR_BGR2RGB)                   # the grey camera photo becomes 3 channels
        paths.append(encode_video(out / f"{Path(name).stem}.mp4", pan_and_zoom(photo, num_frames, size), fps, size))
    return paths


def group_frames(num_frames: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Frames of real people side by side: the photos and their mirror images in a row (order by `seed`), seen by a
    camera panning along it, about two people in view at 16:9, for benchmarks of multi-person footage."""
    rng = np.random.default_rng(seed)
    photos = [cv2.cvtColor(cv2.imread(str(FOLDER / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for name in PHOTOS]
    tiles = [p[:, ::-1] if mirrored else p for p in photos for mirrored in (False, True)]
    strip = np.concatenate([tiles[i] for i in rng.permutation(len(tiles))], axis=1)   # (512, 2048, 3)
    return pan_and_zoom(np.ascontiguousarray(strip), num_frames, size, zoom=(1.0, 1.0))


def write_group_clip(path: str | Path, seconds: float, size: tuple[int, int], fps: int = 30, seed: int = 0) -> Path:
    """An H.264 clip of `group_frames`."""
    return encode_video(path, group_frames(max(1, round(seconds * fps)), size, seed), fps, size)
