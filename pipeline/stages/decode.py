"""Decode stage: video references in, bounded batches of uint8 frames out.

decord decodes and resizes in one pass (ffmpeg's scaler, so the resize happens on the cheapest side: before any
copy) and normalisation waits for the inference device, so frames cross Ray's object store as uint8. For a
top-down model (the default) frames keep their aspect and are only shrunk to fit `model.frame_size`, never enlarged:
(B, h, w, 3), the source's pixels at most, since its crops are cut on the device. For the bottom-up net they are
letterboxed here into its square input, (B, S, S, 3). A video streams in batches of `batch_size` frames and is never
held whole.

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

import logging
import queue
import threading
import time
from typing import Any, Iterator

import numpy as np

from pipeline.stages.batch import VideoHeader, end_marker, frame_batch, pack
from pipeline.video import DecodeError, Stream, local_copy, open_stream, sample_frame_indices

logger = logging.getLogger(__name__)


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
                 storage_options: dict[str, Any], cache_dir: str | None, depth: int = 2, pad: bool = True):
        super().__init__(name=f"decode-{ref['video_id']}", daemon=True)
        self.ref, self.size, self.sampling, self.batch_size, self.threads = ref, size, sampling, batch_size, threads
        self.pad = pad
        self.frame_shape = (size, size) if pad else (1, 1)    # of its frames, once the video opened
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
                stream = open_stream(path, self.size, self.threads, self.pad)
                self.header, self.frame_shape = VideoHeader.of(stream), stream.letterbox.frame_shape
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
    """Ray Data UDF: a batch of video references -> a stream of frame batches, then one end marker per video, each
    packed into one row (`decode_video` yields them unpacked).

    Errors never escape: a video that fails to open or decode ends with a marker that carries the error, after
    whatever frames decoded before it (those are kept). `timeout_s` bounds the time one video keeps this actor
    waiting for its decoder (time spent handing batches downstream does not count, so backpressure from a slow
    inference stage never turns into a timeout).
    """

    abandoned: list[DecodeWorker] = []   # workers given up at their deadline, per process

    def __init__(self, size: int, every_nth: int = 1, fps: float | None = None, max_frames: int | None = None,
                 batch_size: int = 32, threads: int = 1, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | None = None, timeout_s: float = 900.0, pad: bool = True):
        """`pad`: letterbox frames into (size, size) squares (the bottom-up net's input); False: frames keep their
        aspect and are only shrunk to fit that square, never enlarged (a top-down model crops them on its device)."""
        self.size, self.pad = size, pad
        self.sampling = dict(every_nth=every_nth, target_fps=fps, max_frames=max_frames)
        self.batch_size = batch_size
        self.threads = threads
        self.storage_options = storage_options or {}
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s

    def __call__(self, refs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(refs["uri"])):
            ref = {key: value.item() if isinstance(value, np.generic) else value
                   for key, value in ((key, refs[key][i]) for key in refs)}
            for batch in self.decode_video(ref):
                yield pack(batch)       # one row: Ray Data never cuts it (pipeline.stages.batch.pack)

    def decode_video(self, ref: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        worker = DecodeWorker(ref, self.size, self.sampling, self.batch_size, self.threads, self.storage_options,
                              self.cache_dir, pad=self.pad)
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
                yield frame_batch(ref["video_id"], chunk, timestamps, frames, letterbox.width, letterbox.height)
                emitted += len(chunk)
        finally:
            worker.cancel.set()  # also when Ray closes this generator early
        if error:
            logger.warning("video %s: %s", ref["uri"], error)
        yield end_marker(ref["video_id"], worker.frame_shape, emitted, error, worker.header, ref)

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
