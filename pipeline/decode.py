"""Decode stage: video references in, bounded batches of letterboxed uint8 frames out.

decord decodes and resizes in one pass (ffmpeg's scaler, so the resize happens on the cheapest side: before any
copy); the letterbox padding is added here and normalisation waits for the inference device, so frames cross Ray's
object store as uint8 (B, S, S, 3). A video streams in batches of `batch_size` frames and is never held whole.

Each video ends with one *end marker* row (`is_end`) that carries how many frames were emitted and, when decoding
failed, the error; downstream stages pass it through so the driver knows when a video is complete and why not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import av
import numpy as np

from pipeline.preprocess import Letterbox
from pipeline.storage import is_local, resolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int      # as the container reports it; may be wrong, decoding is the truth
    codec: str


class DecodeError(RuntimeError):
    """A video that cannot be opened or decoded; `stage` says how far it got."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def probe_video(path: str) -> VideoInfo:
    """Read the header of a local video file (no decoding)."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError("open", "the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            return VideoInfo(int(stream.width), int(stream.height), fps, int(stream.frames or 0),
                             stream.codec_context.name)
    except DecodeError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpeg errors; all mean "cannot open"
        raise DecodeError("open", f"cannot open video: {exc}") from exc


def sample_frame_indices(num_frames: int, fps: float, every_nth: int = 1, target_fps: float | None = None,
                         max_frames: int | None = None) -> np.ndarray:
    """Indices of the frames to decode.

    `target_fps` (when set and below the video's rate) picks the frame nearest each tick of the target clock;
    otherwise every `every_nth` frame. `max_frames` caps the count (the first ones are kept).
    """
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if target_fps and fps > 0 and target_fps < fps:
        ticks = np.arange(0.0, num_frames / fps, 1.0 / target_fps)
        indices = np.unique(np.minimum(np.round(ticks * fps).astype(np.int64), num_frames - 1))
    else:
        indices = np.arange(0, num_frames, max(1, every_nth), dtype=np.int64)
    return indices[:max_frames] if max_frames else indices


@contextlib.contextmanager
def local_copy(uri: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> Iterator[str]:
    """A local path for `uri`: the file itself when local, else a temporary download removed afterwards.

    decord needs a seekable file; remote objects are fetched once into `cache_dir` (one video per decode actor at a
    time, so the cache is bounded by the number of actors times the largest video) and always cleaned up.
    """
    fs, path = resolve(uri, storage_options)
    if is_local(fs):
        if not os.path.isfile(path):
            raise DecodeError("open", f"no such file: {path}")
        yield path
        return
    tmp_dir = tempfile.mkdtemp(prefix="posepipe-", dir=cache_dir)
    try:
        local = os.path.join(tmp_dir, os.path.basename(path) or "video")
        try:
            fs.get_file(path, local)
        except Exception as exc:
            raise DecodeError("open", f"cannot read {uri}: {type(exc).__name__}: {exc}") from exc
        yield local
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


class VideoStream:
    """A local video opened for decoding, resized by decord straight to its letterbox size."""

    def __init__(self, path: str, size: int, num_threads: int = 1):
        import decord  # native library: imported where it is used, so the pure helpers above load without it

        info = probe_video(path)
        self.letterbox = Letterbox.fit(info.width, info.height, size)
        try:
            self.reader = decord.VideoReader(path, ctx=decord.cpu(0), width=self.letterbox.resized_width,
                                             height=self.letterbox.resized_height, num_threads=num_threads)
        except Exception as exc:
            raise DecodeError("open", f"decord cannot open the video: {exc}") from exc
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps() or info.fps)

    def batches(self, indices: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Decode `indices` in batches of at most `batch_size` frames.

        Yields:
            indices (b,), timestamps_s (b,), frames uint8 (b, S, S, 3) letterboxed.
        """
        indices = indices[indices < self.num_frames]
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            try:
                frames = self.reader.get_batch(chunk.tolist()).asnumpy()  # (b, h, w, 3) uint8
                timestamps = self.reader.get_frame_timestamp(chunk.tolist())[:, 0].astype(np.float64)
            except Exception as exc:
                raise DecodeError("decode", f"decoding frames {chunk[0]}..{chunk[-1]} failed: {exc}") from exc
            yield chunk, timestamps, self.letterbox.pad(frames)


def frame_batch(ref: dict[str, Any], indices: np.ndarray, timestamps: np.ndarray, frames: np.ndarray,
                letterbox: Letterbox) -> dict[str, np.ndarray]:
    """Columns of a decoded batch (one row per frame) as they travel to the inference stage."""
    n = len(indices)
    return {
        "video_id": np.full(n, ref["video_id"], dtype=object),
        "frame_index": indices.astype(np.int64),
        "timestamp_s": timestamps.astype(np.float64),
        "width": np.full(n, letterbox.width, dtype=np.int32),
        "height": np.full(n, letterbox.height, dtype=np.int32),
        "image": frames,                                   # (n, S, S, 3) uint8
        "is_end": np.zeros(n, dtype=bool),
        "num_frames": np.zeros(n, dtype=np.int64),
        "error": np.full(n, "", dtype=object),
    }


def end_marker(ref: dict[str, Any], size: int, num_frames: int, error: str = "") -> dict[str, np.ndarray]:
    """The last row of a video: how many frames were emitted, and the error (`stage|type|message`) if any."""
    return {
        "video_id": np.array([ref["video_id"]], dtype=object),
        "frame_index": np.array([-1], dtype=np.int64),
        "timestamp_s": np.zeros(1, dtype=np.float64),
        "width": np.zeros(1, dtype=np.int32),
        "height": np.zeros(1, dtype=np.int32),
        "image": np.zeros((1, size, size, 3), dtype=np.uint8),
        "is_end": np.ones(1, dtype=bool),
        "num_frames": np.array([num_frames], dtype=np.int64),
        "error": np.array([error], dtype=object),
    }


def format_error(stage: str, exc: BaseException) -> str:
    """`stage|type|message`, the type being the underlying exception's class (e.g. InvalidDataError)."""
    kind = type(exc.__cause__ or exc).__name__
    return f"{stage}|{kind}|{str(exc).replace(chr(10), ' ')[:500]}"


class FrameDecoder:
    """Ray Data UDF: a batch of video references -> a stream of frame batches, then one end marker per video.

    Errors never escape: a video that fails to open or decode ends with a marker that carries the error, after
    whatever frames decoded before it (those are kept).
    """

    def __init__(self, size: int, every_nth: int = 1, fps: float | None = None, max_frames: int | None = None,
                 batch_size: int = 32, threads: int = 1, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | None = None):
        self.size = size
        self.sampling = dict(every_nth=every_nth, target_fps=fps, max_frames=max_frames)
        self.batch_size = batch_size
        self.threads = threads
        self.storage_options = storage_options or {}
        self.cache_dir = cache_dir

    def __call__(self, refs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(refs["uri"])):
            ref = {key: refs[key][i] for key in refs}
            yield from self.decode_video(ref)

    def decode_video(self, ref: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        emitted, error = 0, ""
        try:
            with local_copy(ref["uri"], self.storage_options, self.cache_dir) as path:
                stream = VideoStream(path, self.size, self.threads)
                indices = sample_frame_indices(stream.num_frames, stream.fps, **self.sampling)
                if len(indices) == 0:
                    raise DecodeError("decode", "the video has no frames")
                for chunk, timestamps, frames in stream.batches(indices, self.batch_size):
                    yield frame_batch(ref, chunk, timestamps, frames, stream.letterbox)
                    emitted += len(chunk)
        except DecodeError as exc:
            error = format_error(exc.stage, exc)
        except Exception as exc:  # anything else from a broken file must not stop the job either
            error = format_error("decode", exc)
        if error:
            logger.warning("video %s: %s", ref["uri"], error)
        yield end_marker(ref, self.size, emitted, error)
