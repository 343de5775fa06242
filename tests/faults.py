"""Builders of bad and unusual video inputs, made with real tools: PyAV encoders, truncation, byte edits, FIFOs.

Each builder writes one file (or file-system object) at `path` and returns the path. Frames show a bright bar that
moves 4 px per frame (as `conftest.encode_video`), so decoded frames can be told apart.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from conftest import encode_video


def bar_frame(t: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: grey with a bright vertical bar at x = 4 t."""
    image = np.full((height, width, 3), 60, np.uint8)
    x = (4 * t) % max(1, width - 8)
    image[:, x:x + 8] = 250
    return image


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_zero_byte(path: str | Path) -> Path:
    path = _prepare(path)
    path.write_bytes(b"")
    return path


def write_text_file(path: str | Path) -> Path:
    """A text file with a video's name."""
    path = _prepare(path)
    path.write_text("camera 3 was offline, no recording\n" * 20)
    return path


def write_truncated(path: str | Path, num_frames: int = 24, faststart: bool = False) -> Path:
    """The first half of a good mp4's bytes, as an interrupted copy leaves it.

    Without `faststart` the index (moov) sits at the end and is cut off; with it, the index survives and promises
    every frame while only the first half of the data is there (the header over-reports the frames).
    """
    path = _prepare(path)
    full = path.with_name(path.stem + ".full.tmp")
    with av.open(str(full), "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        rng = np.random.default_rng(0)                       # texture: frames of similar size, so half is half
        for t in range(num_frames):
            image = rng.integers(0, 120, (64, 96, 3), dtype=np.uint8) + bar_frame(t, 96, 64) // 2
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[:len(data) // 2])
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, codec: str = "aac") -> Path:
    """A valid container with one audio stream (a 440 Hz tone) and no video stream."""
    path = _prepare(path)
    rate = 44100
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]   # (1, N)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], frame_size):
            chunk = np.ascontiguousarray(samples[:, start:start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_unknown_fourcc(path: str | Path, num_frames: int = 12) -> Path:
    """A valid AVI whose codec fourcc is edited from FMP4 (MPEG-4 part 2) to ZZZZ, which no decoder claims."""
    path = _prepare(path)
    good = encode_video(path.with_suffix(".good.avi"), num_frames=num_frames, width=64, height=48, codec="mpeg4")
    data = good.read_bytes()
    good.unlink()
    if data.count(b"FMP4") != 2:  # the stream header's handler and the bitmap header's compression
        raise RuntimeError(f"expected the fourcc FMP4 twice in the AVI header, found {data.count(b'FMP4')}")
    path.write_bytes(data.replace(b"FMP4", b"ZZZZ"))
    return path


def write_av1(path: str | Path, num_frames: int = 8, width: int = 96, height: int = 64) -> Path:
    """AV1 in Matroska (SVT-AV1 encoder): decodable by PyAV (dav1d) but not by decord 0.6's bundled FFmpeg."""
    return encode_video(path, num_frames=num_frames, width=width, height=height, codec="libsvtav1")


def write_overreported_avi(path: str | Path, num_frames: int = 12, claimed: int = 200) -> Path:
    """An AVI whose headers (avih dwTotalFrames, strh dwLength) claim `claimed` frames and whose idx1 index is
    renamed to JUNK, so FFmpeg has only the header to go by (PyAV reports `claimed` frames)."""
    path = _prepare(path)
    good = encode_video(path.with_suffix(".good.avi"), num_frames=num_frames, width=64, height=48, codec="mpeg4")
    data = bytearray(good.read_bytes())
    good.unlink()
    avih, strh, idx1 = data.find(b"avih"), data.find(b"strh"), data.find(b"idx1")
    if min(avih, strh, idx1) < 0:
        raise RuntimeError("expected avih, strh and idx1 chunks in the AVI")
    data[avih + 24:avih + 28] = struct.pack("<I", claimed)     # MainAVIHeader.dwTotalFrames
    data[strh + 40:strh + 44] = struct.pack("<I", claimed)     # AVIStreamHeader.dwLength
    data[idx1:idx1 + 4] = b"JUNK"
    path.write_bytes(bytes(data))
    return path


def write_vfr(path: str | Path, times_s: list[float], width: int = 96, height: int = 64) -> Path:
    """Variable frame rate: frame t is shown at `times_s[t]` seconds (millisecond time base)."""
    path = _prepare(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, time_s in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(bar_frame(t, width, height), format="rgb24")
            frame.pts, frame.time_base = int(round(time_s * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_rotated(path: str | Path, degrees: int, num_frames: int = 6, width: int = 96, height: int = 64) -> Path:
    """A video stored `width` x `height` with a display matrix that turns it `degrees` counter-clockwise, as
    phones record portrait video. Frame content: a bright square in the stored top-left corner plus the bar."""
    path = _prepare(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(degrees)
        for t in range(num_frames):
            image = bar_frame(t, width, height)
            image[:16, :16] = (250, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt_frame(path: str | Path, num_frames: int = 20, broken: tuple[int, ...] = (10,)) -> Path:
    """An MJPEG AVI (every frame a keyframe) whose frames `broken` have their JPEG data overwritten with zeros
    after the first quarter, as a bad disk sector leaves it; the other frames are intact."""
    path = _prepare(path)
    good = path.with_suffix(".good.avi")
    with av.open(str(good), "w") as container:
        stream = container.add_stream("mjpeg", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuvj420p"
        for t in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(bar_frame(t, 96, 64), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(good)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(good.read_bytes())
    good.unlink()
    for k in broken:
        pos, size = spans[k]
        data[pos + size // 4:pos + size] = bytes(size - size // 4)
    path.write_bytes(bytes(data))
    return path


def make_fifo(path: str | Path) -> Path:
    """A named pipe with a video's name: opening it for reading blocks until a writer comes (none does)."""
    path = _prepare(path)
    os.mkfifo(path)
    return path


def make_dangling_symlink(path: str | Path) -> Path:
    """A symlink with a video's name whose target does not exist (a dead mount, a moved file)."""
    path = _prepare(path)
    os.symlink(path.with_name("gone-" + path.name), path)
    return path
