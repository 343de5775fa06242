"""Reading videos: probing a file's header, decoding frames with decord (PyAV where decord cannot: rotated videos,
codecs its FFmpeg lacks, broken packets), resized straight to the letterbox, and fetching remote files to local disk.
Used by the decode stage and by rendering."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Protocol

import av
import numpy as np

from pipeline.pose.letterbox import Letterbox
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


def probe_video(path: str | BinaryIO) -> VideoInfo:
    """Read the header of a local video file, or of an open file object (a remote one: only the bytes the
    container's header spans are read), and its first frame, for the rotation.

    Raises:
        DecodeError: stage `open`, with kind EmptyFile, NoVideoStream, UnsupportedCodec or the FFmpeg error.
    """
    if isinstance(path, str) and os.path.isfile(path) and os.path.getsize(path) == 0:
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

    def __init__(self, path: str, size: int, num_threads: int = 1, info: VideoInfo | None = None, pad: bool = True):
        import decord  # native library: imported where it is used, so the pure helpers above load without it

        info = info or probe_video(path)
        self.path, self.threads, self.info = path, num_threads, info
        self.letterbox = Letterbox.fit(info.width, info.height, size, pad)
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
            indices (b,), timestamps_s (b,), frames uint8 (b, S, S, 3) letterboxed (unpadded: (b, h, w, 3)).
        """
        indices = indices[indices < self.num_frames]
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            try:
                frames, timestamps = self.read(chunk)
            except Exception as exc:
                logger.warning("%s: decord failed on frames %d..%d (%s); decoding the rest with PyAV", self.path,
                               chunk[0], chunk[-1], short_message(exc))
                rest = PyAVStream(self.path, self.letterbox.size, self.threads, self.info, self.letterbox.padded)
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

    def __init__(self, path: str, size: int, num_threads: int = 1, info: VideoInfo | None = None, pad: bool = True):
        self.info = info or probe_video(path)
        self.path, self.threads = path, num_threads
        self.letterbox = Letterbox.fit(*self.info.display_size, size, pad)
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


def open_stream(path: str, size: int, num_threads: int = 1, pad: bool = True) -> Stream:
    """decord where it works, PyAV for rotated videos and for what decord cannot open. Frames are letterboxed into
    (size, size) squares, or with `pad` False only shrunk to fit one (`Letterbox.fit`)."""
    info = probe_video(path)
    if info.rotation:
        return PyAVStream(path, size, num_threads, info, pad)
    try:
        return DecordStream(path, size, num_threads, info, pad)
    except DecodeError as exc:
        logger.info("%s: %s; decoding with PyAV instead", path, exc)
        return PyAVStream(path, size, num_threads, info, pad)
