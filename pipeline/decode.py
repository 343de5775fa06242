"""Decode stage: video references in, bounded batches of letterboxed uint8 frames out.

decord decodes and resizes in one pass (ffmpeg's scaler, so the resize happens on the cheapest side: before any
copy); the letterbox padding is added here and normalisation waits for the inference device, so frames cross Ray's
object store as uint8 (B, S, S, 3). A video streams in batches of `batch_size` frames and is never held whole.

Each video ends with one *end marker* row (`is_end`) that carries how many frames were emitted and, when decoding
failed, the error; downstream stages pass it through so the driver knows when a video is complete and why not.

What goes wrong with real archives, and what this module does about it (tests/test_faults.py builds each case):
- A file that is not a video, is empty, has no video stream or an unknown codec: an `open` error, no frames.
- A frame that does not decode: from its batch on, the video is decoded with PyAV, which skips exactly the broken
  frames; the good frames before and after them are kept (one `CorruptFrames` error row says how many were lost).
- A header that promises more frames than the file holds (a cut copy, a wrong header): every frame that is there
  is kept, and one `MissingFrames` error row says how many were promised.
- A rotated video (display matrix): decord rotates it but stretches it into the coded size (measured, decord 0.6),
  so it is decoded with PyAV and turned upright here; keypoints come out in the displayed orientation.
- A codec or a file decord cannot open (AV1; an mp4 cut short whose index survives): PyAV decodes it instead,
  keeping every frame up to the damage.
- A decoder that blocks (a FIFO, a stalled remote read, an FFmpeg hang): each video decodes in a worker thread
  (decord and PyAV release the GIL in C, measured) feeding a bounded queue; after `timeout_s` of waiting the
  video ends with a `Timeout` error and the actor moves on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import av
import numpy as np

from pipeline.preprocess import Letterbox
from pipeline.storage import is_local, resolve

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # indices (b,), timestamps_s (b,), frames uint8 (b, S, S, 3)


@dataclass(frozen=True)
class VideoInfo:
    width: int           # coded frame size, pixels (before any rotation)
    height: int
    fps: float
    num_frames: int      # as the container reports it; may be wrong, decoding is the truth
    codec: str
    rotation: int = 0    # degrees counter-clockwise that turn a coded frame upright: 0, 90, 180 or 270

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a player shows the video: swapped by a quarter turn."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


class DecodeError(RuntimeError):
    """A video that cannot be opened or decoded; `stage` says how far it got, `kind` names the failure."""

    def __init__(self, stage: str, message: str, kind: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.kind = kind


def short_message(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, without decord's `[hh:mm:ss] /path/file.cc:123:` prefixes."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: ", "", str(exc))
    text = re.sub(r"\s+", " ", text.split("Stack trace")[0]).strip()
    return text[:limit] or type(exc).__name__


def read_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display matrix's rotation, rounded to a quarter turn (0, 90, 180, 270 counter-clockwise).

    PyAV exposes the matrix on decoded frames only, so the first frame is decoded; a video whose first frame does
    not decode counts as upright (the decoder reports the damage later).
    """
    try:
        for frame in container.decode(stream):
            return int(round((frame.rotation or 0) / 90.0)) * 90 % 360
    except av.FFmpegError:
        pass
    return 0


def probe_video(path: str) -> VideoInfo:
    """Read the header of a local video file (and its first frame, for the rotation).

    Raises:
        DecodeError: stage `open`, with kind EmptyFile, NoVideoStream, UnsupportedCodec or the FFmpeg error.
    """
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError("open", "the file is empty (0 bytes); re-upload or re-export it", "EmptyFile")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
                raise DecodeError("open", f"the file has no video stream (streams found: {kinds})", "NoVideoStream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise DecodeError("open", "FFmpeg has no decoder for the video stream's codec (unknown fourcc or "
                                  "codec id); re-encode the video, e.g. to H.264", "UnsupportedCodec")
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            return VideoInfo(int(stream.width), int(stream.height), fps, int(stream.frames or 0),
                             stream.codec_context.name, read_rotation(container, stream))
    except DecodeError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpeg errors; all mean "cannot open"
        raise DecodeError("open", f"cannot open as a video: {short_message(exc)}") from exc


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
        if os.path.isdir(path):
            raise DecodeError("open", f"{path} is a directory, not a video file", "IsADirectory")
        if not os.path.exists(path):
            target = f" (a symlink to the missing {os.readlink(path)})" if os.path.islink(path) else ""
            raise DecodeError("open", f"no such file: {path}{target}; it was listed but is gone", "FileNotFound")
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


class Stream(Protocol):
    """What the decode stage needs from a video backend (decord or PyAV)."""

    info: VideoInfo         # the container's header
    letterbox: Letterbox    # display size -> model input
    num_frames: int         # frames the stream holds (from its packet index)
    fps: float
    lost: list[int]         # sampled frame indices that could not be decoded and were skipped

    def batches(self, indices: np.ndarray, batch_size: int) -> Iterator[Batch]: ...


class DecordStream:
    """A local video opened with decord, resized by decord straight to its letterbox size.

    decord counts frames from the packet index (not the header's frame count, which may lie) and seeks by keyframe,
    so sparse sampling is cheap. When a batch fails, the rest of the video is decoded with PyAV (`PyAVStream`):
    decord's decoder thread reads ahead, so a broken packet's error surfaces on whichever frames are asked for
    next, and retrying frame by frame lost good frames too in 4 of 10 trials (measured); PyAV skips exactly the
    broken frames, which go to `lost`.
    """

    def __init__(self, path: str, size: int, num_threads: int = 1, info: VideoInfo | None = None):
        import decord  # native library: imported where it is used, so the pure helpers above load without it

        info = info or probe_video(path)
        self.path, self.threads, self.info = path, num_threads, info
        self.letterbox = Letterbox.fit(info.width, info.height, size)
        try:
            self.reader = decord.VideoReader(path, ctx=decord.cpu(0), width=self.letterbox.resized_width,
                                             height=self.letterbox.resized_height, num_threads=num_threads)
        except Exception as exc:
            raise DecodeError("open", f"decord cannot open the video: {short_message(exc)}") from exc
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps() or info.fps)
        self.lost: list[int] = []

    def read(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames uint8 (b, h, w, 3) resized, timestamps_s (b,) of the frames `chunk` (b,)."""
        frames = self.reader.get_batch(chunk.tolist()).asnumpy()                 # (b, h, w, 3) uint8
        expected = (len(chunk), self.letterbox.resized_height, self.letterbox.resized_width, 3)
        if frames.shape != expected:
            raise DecodeError("decode", f"decord returned frames of shape {frames.shape}, expected {expected}")
        timestamps = self.reader.get_frame_timestamp(chunk.tolist())[:, 0].astype(np.float64)
        return frames, timestamps

    def batches(self, indices: np.ndarray, batch_size: int) -> Iterator[Batch]:
        """Decode `indices` in batches of at most `batch_size` frames.

        Yields:
            indices (b,), timestamps_s (b,), frames uint8 (b, S, S, 3) letterboxed.
        """
        indices = indices[indices < self.num_frames]
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            try:
                frames, timestamps = self.read(chunk)
            except Exception as exc:
                logger.warning("%s: decord failed on frames %d..%d (%s); decoding the rest with PyAV", self.path,
                               chunk[0], chunk[-1], short_message(exc))
                rest = PyAVStream(self.path, self.letterbox.size, self.threads, self.info)
                rest.lost = self.lost
                yield from rest.batches(indices[start:], batch_size)
                return
            yield chunk, timestamps, self.letterbox.pad(frames)


def packet_times(path: str) -> np.ndarray:
    """Presentation timestamps (pts, stream time base) of the first video stream's packets, sorted: the display
    order of its frames, read without decoding. Stops quietly where the file is damaged (decoding reports it);
    a packet without a pts counts as -1."""
    times = []
    with av.open(path) as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                if packet.size:
                    times.append(-1 if packet.pts is None else packet.pts)
        except av.FFmpegError:
            pass
    return np.sort(np.array(times, np.int64))


class PyAVStream:
    """A local video decoded with PyAV, in order, for what decord gets wrong (see the module docstring).

    Frames are resized by FFmpeg's scaler in their coded orientation, then turned upright by `rotation`, so the
    letterbox, widths and keypoints are those of the displayed video. A frame's index is its pts's rank among the
    packets' pts, so a packet that does not decode leaves a gap at the right place (recorded in `lost`); a file that
    breaks off ends the stream with a DecodeError after the frames before it.
    """

    def __init__(self, path: str, size: int, num_threads: int = 1, info: VideoInfo | None = None):
        self.info = info or probe_video(path)
        self.path, self.threads = path, num_threads
        self.letterbox = Letterbox.fit(*self.info.display_size, size)
        self.pts = packet_times(path)             # (N,) sorted
        self.num_frames = len(self.pts)
        self.fps = self.info.fps
        self.lost: list[int] = []

    def index_of(self, frame: av.VideoFrame, previous: int) -> int:
        """Display index of a decoded frame: the rank of its pts, else the one after `previous`."""
        if frame.pts is not None:
            rank = int(np.searchsorted(self.pts, frame.pts))
            if rank < len(self.pts) and self.pts[rank] == frame.pts and rank > previous:
                return rank
        return previous + 1

    def decoded_frames(self, first: int = 0) -> Iterator[tuple[int, av.VideoFrame]]:
        """(display index, frame) of the frames that decode, in display order, from the keyframe at or before
        frame `first`; broken packets are skipped."""
        index = -1
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            # slice threads only: frame threads report a packet's error several packets late
            stream.thread_type, stream.thread_count = "SLICE", self.threads
            if 0 < first < self.num_frames and self.pts[0] >= 0:  # every packet has a pts: indices survive a seek
                with contextlib.suppress(av.FFmpegError):
                    container.seek(int(self.pts[first]), stream=stream, backward=True, any_frame=False)
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    return
                except av.FFmpegError as exc:
                    raise DecodeError("decode", f"the file breaks off after frame {index} of "
                                      f"{self.num_frames}: {short_message(exc)}") from exc
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    logger.debug("a packet after frame %d does not decode: %s", index, short_message(exc))
                    continue
                for frame in frames:
                    index = self.index_of(frame, index)
                    yield index, frame

    def upright(self, frame: av.VideoFrame) -> np.ndarray:
        """One decoded frame -> uint8 (h, w, 3) RGB at the letterbox's resized size, displayed orientation."""
        width, height = self.letterbox.resized_width, self.letterbox.resized_height
        if self.info.rotation % 180:
            width, height = height, width                                       # coded orientation
        rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()  # (h, w, 3)
        return np.rot90(rgb, k=self.info.rotation // 90)

    def batches(self, indices: np.ndarray, batch_size: int) -> Iterator[Batch]:
        """Same contract as `DecordStream.batches`."""
        wanted = set(indices[indices < self.num_frames].tolist())
        last = max(wanted, default=-1)
        kept: list[tuple[int, float, np.ndarray]] = []
        expected = 0                                   # the next display index; a jump past it is a lost frame
        try:
            for index, frame in self.decoded_frames(first=min(wanted, default=0)):
                self.lost += [i for i in range(expected, min(index, last + 1)) if i in wanted]
                expected = index + 1
                if index > last:
                    break
                if index not in wanted:
                    continue
                timestamp = float(frame.time) if frame.time is not None else index / max(self.fps, 1e-6)
                kept.append((index, timestamp, self.upright(frame)))
                if len(kept) == batch_size:
                    yield self.batch(kept)
                    kept = []
            self.lost += [i for i in range(expected, last + 1) if i in wanted]
        except DecodeError:
            if kept:  # the frames decoded before a break-off are delivered before the error
                yield self.batch(kept)
            raise
        if kept:
            yield self.batch(kept)

    def batch(self, kept: list[tuple[int, float, np.ndarray]]) -> Batch:
        return (np.array([k[0] for k in kept], np.int64), np.array([k[1] for k in kept], np.float64),
                self.letterbox.pad(np.stack([k[2] for k in kept])))


def open_stream(path: str, size: int, num_threads: int = 1) -> Stream:
    """decord where it works, PyAV for rotated videos and for what decord cannot open."""
    info = probe_video(path)
    if info.rotation:
        return PyAVStream(path, size, num_threads, info)
    try:
        return DecordStream(path, size, num_threads, info)
    except DecodeError as exc:
        logger.info("%s: %s; decoding with PyAV instead", path, exc)
        return PyAVStream(path, size, num_threads, info)


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
        "fps": np.zeros(n, dtype=np.float64),
        "duration_s": np.zeros(n, dtype=np.float64),
    }


@dataclass(frozen=True)
class VideoHeader:
    """What the end marker tells about the video itself (zeros when it never opened)."""
    width: int = 0           # display size, pixels
    height: int = 0
    fps: float = 0.0
    duration_s: float = 0.0  # frames in the stream / fps

    @classmethod
    def of(cls, stream: Stream) -> "VideoHeader":
        fps = float(stream.fps or 0.0)
        return cls(stream.letterbox.width, stream.letterbox.height, fps, stream.num_frames / fps if fps > 0 else 0.0)


def end_marker(ref: dict[str, Any], size: int, num_frames: int, error: str = "",
               header: VideoHeader = VideoHeader()) -> dict[str, np.ndarray]:
    """The last row of a video: how many frames were emitted, the error (`stage|type|message`) if any, and the
    video's display size, frame rate and duration."""
    return {
        "video_id": np.array([ref["video_id"]], dtype=object),
        "frame_index": np.array([-1], dtype=np.int64),
        "timestamp_s": np.zeros(1, dtype=np.float64),
        "width": np.array([header.width], dtype=np.int32),
        "height": np.array([header.height], dtype=np.int32),
        "image": np.zeros((1, size, size, 3), dtype=np.uint8),
        "is_end": np.ones(1, dtype=bool),
        "num_frames": np.array([num_frames], dtype=np.int64),
        "error": np.array([error], dtype=object),
        "fps": np.array([header.fps], dtype=np.float64),
        "duration_s": np.array([header.duration_s], dtype=np.float64),
    }


def format_error(stage: str, exc: BaseException) -> str:
    """`stage|type|message`; the type is the DecodeError's kind, else the underlying exception's class."""
    kind = getattr(exc, "kind", None) or type(exc.__cause__ or exc).__name__
    return f"{stage}|{kind}|{str(exc).replace(chr(10), ' ')[:500]}"


def frame_list(indices: list[int] | np.ndarray, limit: int = 10) -> str:
    return ", ".join(map(str, list(indices)[:limit])) + (", ..." if len(indices) > limit else "")


def missing_frames(stream: Stream, sampling: dict[str, Any]) -> np.ndarray:
    """Sampled frames that the header promises and the file does not hold (a truncated file or a lying header).

    Only frames the sampling would have decoded count, and one or two frames of slack allow for encoders whose
    header counts a frame more than they store.
    """
    promised = sample_frame_indices(stream.info.num_frames, stream.fps, **sampling)
    missing = promised[promised >= stream.num_frames]
    return missing if len(missing) > max(2, 0.01 * len(promised)) else missing[:0]


def lost_frames_message(stream: Stream, sampled: int, missing: np.ndarray) -> str:
    """What was lost of one video, for its error row: frames that did not decode and frames that are not there."""
    parts = []
    if len(missing):
        parts.append(f"the container lists {stream.info.num_frames} frames but the file holds {stream.num_frames} "
                     f"(truncated, or a wrong header): {len(missing)} sampled frames are missing")
    if stream.lost:
        parts.append(f"{len(stream.lost)} of {sampled} sampled frames could not be decoded and were skipped "
                     f"(frame {frame_list(stream.lost)})")
    return "; ".join(parts) + "; the frames that decoded are kept"


_DONE = object()


class DecodeWorker(threading.Thread):
    """Decodes one video in a daemon thread into a bounded queue, so that the actor can stop waiting at a deadline.

    decord and PyAV release the GIL while they block in C, so the actor thread keeps running; a worker that never
    returns (a FIFO with no writer, a hung read) is abandoned and stops at its next batch once `cancel` is set.
    """

    def __init__(self, ref: dict[str, Any], size: int, sampling: dict[str, Any], batch_size: int, threads: int,
                 storage_options: dict[str, Any], cache_dir: str | None, depth: int = 2):
        super().__init__(name=f"decode-{ref['video_id']}", daemon=True)
        self.ref, self.size, self.sampling, self.batch_size, self.threads = ref, size, sampling, batch_size, threads
        self.storage_options, self.cache_dir = storage_options, cache_dir
        self.queue: queue.Queue = queue.Queue(maxsize=depth)   # bounds the frames held per actor to `depth` batches
        self.cancel = threading.Event()
        self.stage = "open"                                    # how far it got, for a Timeout's error row
        self.error = ""                                        # `stage|type|message`, set before _DONE is queued
        self.header = VideoHeader()                            # set once the video opened

    def run(self) -> None:
        try:
            self.decode()
        except DecodeError as exc:
            self.error = format_error(exc.stage, exc)
        except Exception as exc:  # anything else from a broken file must not stop the job either
            self.error = format_error(self.stage, exc)
        finally:
            self.put(_DONE)

    def decode(self) -> None:
        stream: Stream | None = None
        indices = missing = np.zeros(0, np.int64)
        try:
            with local_copy(self.ref["uri"], self.storage_options, self.cache_dir) as path:
                stream = open_stream(path, self.size, self.threads)
                self.header = VideoHeader.of(stream)
                self.stage = "decode"
                indices = sample_frame_indices(stream.num_frames, stream.fps, **self.sampling)
                missing = missing_frames(stream, self.sampling)
                if len(indices) == 0:
                    raise DecodeError("decode", "the video has no frames", "NoFrames")
                for chunk, timestamps, frames in stream.batches(indices, self.batch_size):
                    if not self.put((chunk, timestamps, frames, stream.letterbox)):
                        return
        except DecodeError as exc:
            if stream is not None and (stream.lost or len(missing)):
                exc.args = (f"{exc}; also {lost_frames_message(stream, len(indices), missing)}",)
            raise
        if stream.lost or len(missing):
            raise DecodeError("decode", lost_frames_message(stream, len(indices), missing),
                              "MissingFrames" if len(missing) else "CorruptFrames")

    def put(self, item: Any) -> bool:
        """Queue `item`, waiting while the queue is full; False once the video was given up."""
        while not self.cancel.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


class FrameDecoder:
    """Ray Data UDF: a batch of video references -> a stream of frame batches, then one end marker per video.

    Errors never escape: a video that fails to open or decode ends with a marker that carries the error, after
    whatever frames decoded before it (those are kept). `timeout_s` bounds the time one video keeps this actor
    waiting for its decoder (time spent handing batches downstream does not count, so backpressure from a slow
    inference stage never turns into a timeout).
    """

    abandoned: list[DecodeWorker] = []   # workers given up at their deadline, per process

    def __init__(self, size: int, every_nth: int = 1, fps: float | None = None, max_frames: int | None = None,
                 batch_size: int = 32, threads: int = 1, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | None = None, timeout_s: float = 900.0):
        self.size = size
        self.sampling = dict(every_nth=every_nth, target_fps=fps, max_frames=max_frames)
        self.batch_size = batch_size
        self.threads = threads
        self.storage_options = storage_options or {}
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s

    def __call__(self, refs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(refs["uri"])):
            ref = {key: refs[key][i] for key in refs}
            yield from self.decode_video(ref)

    def decode_video(self, ref: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        worker = DecodeWorker(ref, self.size, self.sampling, self.batch_size, self.threads, self.storage_options,
                              self.cache_dir)
        worker.start()
        emitted, waited, error = 0, 0.0, ""
        try:
            while True:
                started = time.monotonic()
                try:
                    item = worker.queue.get(timeout=max(0.0, self.timeout_s - waited))
                except queue.Empty:
                    error = self.give_up(worker, ref, emitted)
                    break
                waited += time.monotonic() - started
                if item is _DONE:
                    error = worker.error
                    break
                chunk, timestamps, frames, letterbox = item
                yield frame_batch(ref, chunk, timestamps, frames, letterbox)
                emitted += len(chunk)
        finally:
            worker.cancel.set()  # also when Ray closes this generator early
        if error:
            logger.warning("video %s: %s", ref["uri"], error)
        yield end_marker(ref, self.size, emitted, error, worker.header)

    def give_up(self, worker: DecodeWorker, ref: dict[str, Any], emitted: int) -> str:
        worker.cancel.set()
        self.abandoned[:] = [w for w in self.abandoned if w.is_alive()] + [worker]
        logger.warning("video %s: no result after %.0f s in stage %s; abandoning its decoder thread "
                       "(%d abandoned threads still running in this actor)", ref["uri"], self.timeout_s,
                       worker.stage, len(self.abandoned))
        doing = "opening the video" if worker.stage == "open" else "decoding"
        return (f"{worker.stage}|Timeout|{doing} took longer than decode.timeout_s={self.timeout_s:g} s "
                f"({emitted} frames decoded before, kept); check that the file is complete and readable, or raise "
                f"decode.timeout_s for very long videos")
