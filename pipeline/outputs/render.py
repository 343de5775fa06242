"""Visual QA: a video's frames with its people drawn on them, as an mp4 clip or a contact sheet (grid of frames).

Limbs come from `pipeline.pose.keypoints.SKELETON`, joints are dots, and each track keeps one colour (from its id, so
the same person has the same colour in every clip and sheet) with an `id N` label. Source frames are decoded with
decord, the decoder the pipeline itself uses, so `frame_index` in the tables names the same frame here; clips are
encoded with PyAV (libx264). Images are RGB uint8 (H, W, 3); keypoints (P, K, 3) [x, y, score] in image pixels,
NaN x/y where not found, P = people in a frame, K = 17.
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import logging
import os
import tempfile
from fractions import Fraction
from typing import Any, Iterator

import av
import cv2
import duckdb
import numpy as np
import pandas as pd

from pipeline.outputs.query import keypoint_array
from pipeline.pose.keypoints import KEYPOINT_NAMES, SKELETON
from pipeline.pose.tracking import UNTRACKED
from pipeline.storage import is_local, resolve, write_bytes_atomic
from pipeline.video import PyAVStream, local_copy, probe_video

logger = logging.getLogger(__name__)

GOLDEN = 0.618033988749895
SHEET_TILE_MAX_WIDTH = 960   # a contact sheet tile is the video's own width up to this: people stay big enough to judge


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per track id; neighbouring ids get far-apart hues (golden-ratio steps).
    Untracked people (UNTRACKED) are grey."""
    if track_id == UNTRACKED:
        return 160, 160, 160
    hue = (0.07 + GOLDEN * int(track_id)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.7, 1.0)   # light enough to read on a black label
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def draw_people(image: np.ndarray, keypoints: np.ndarray, track_ids: np.ndarray, scale: float = 1.0,
                min_score: float = 0.0) -> np.ndarray:
    """Draw skeletons on a copy of `image`.

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints: (P, K, 3) [x, y, score] in the pixels of the frame the rows were made on.
        track_ids: (P,) ints; the colour and label of each person.
        scale: image pixels per keypoint pixel (a contact sheet tile is smaller than the frame).
        min_score: keypoints scoring at or below this are not drawn.
    """
    out = np.ascontiguousarray(image).copy()
    size = min(out.shape[:2])
    thickness = max(1, int(round(size / 240)))
    radius = thickness + 2
    font_scale = max(0.35, size / 700)
    for kp, track_id in zip(np.asarray(keypoints, np.float32), np.asarray(track_ids)):
        colour = track_colour(int(track_id))
        xy = kp[:, :2] * scale                                                  # (K, 2)
        found = np.isfinite(xy).all(axis=1) & (kp[:, 2] > min_score)            # (K,)
        pts = np.round(np.where(found[:, None], xy, 0)).astype(np.int32)
        for a, b in SKELETON:
            if found[a] and found[b]:
                cv2.line(out, tuple(pts[a]), tuple(pts[b]), colour, thickness, cv2.LINE_AA)
        for k in np.flatnonzero(found):
            cv2.circle(out, tuple(pts[k]), radius, colour, -1, cv2.LINE_AA)
        if found.any():
            x0, y0 = pts[found, 0].min(), pts[found, 1].min()
            label = f"id {int(track_id)}" if track_id != UNTRACKED else "?"
            _draw_label(out, label, (int(x0), int(y0) - radius - 3), colour, font_scale)
    return out


def _draw_label(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
                font_scale: float) -> None:
    """Text on a black box (readable on any background), kept inside the image; origin is the baseline's left."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    x = int(np.clip(origin[0], 0, max(0, image.shape[1] - w - 2)))
    y = int(np.clip(origin[1], h + 2, image.shape[0] - base - 1))
    cv2.rectangle(image, (x - 1, y - h - 2), (x + w + 1, y + base), (0, 0, 0), -1)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, 1, cv2.LINE_AA)


def people_by_frame(frames: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Frames rows of one video -> {frame_index: (keypoints (P, K, 3), track_ids (P,))}."""
    if frames.empty:
        return {}
    frames = frames.sort_values(["frame_index", "person_index"], kind="stable")
    keypoints = keypoint_array(frames)                                          # (N, K, 3)
    index = frames["frame_index"].to_numpy()
    ids = frames["track_id"].to_numpy(np.int64)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    ends = np.r_[starts[1:], len(index)]
    return {int(index[s]): (keypoints[s:e], ids[s:e]) for s, e in zip(starts, ends)}


class SourceVideo:
    """A local video file at full resolution, in its displayed orientation (the pixels keypoints are in).

    decord decodes it, as in the pipeline; a rotated video (display matrix) is decoded with PyAV and turned upright,
    as the decode stage does, since decord stretches it into the coded size.
    """

    def __init__(self, path: str):
        info = probe_video(path)
        self.width, self.height = info.display_size
        if info.rotation:
            self.upright_stream = PyAVStream(path, max(info.display_size), info=info)  # letterbox scale 1
            self.num_frames, self.fps = self.upright_stream.num_frames, info.fps or 25.0
            return
        import decord  # native library, imported where used

        self.upright_stream = None
        self.reader = decord.VideoReader(path, ctx=decord.cpu(0))
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps() or info.fps or 25.0)

    def frames(self, indices: np.ndarray, batch_size: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """(frame_index, (H, W, 3) uint8 RGB) for each index (ascending), decoded in batches of `batch_size`."""
        if self.upright_stream is not None:
            wanted = {int(i) for i in indices}
            first, last = min(wanted, default=0), max(wanted, default=-1)
            for index, frame in self.upright_stream.decoded_frames(first=first):
                if index > last:
                    return
                if index in wanted:
                    yield index, self.upright_stream.upright(frame)
            return
        for start in range(0, len(indices), batch_size):
            chunk = [int(i) for i in indices[start:start + batch_size]]
            yield from zip(chunk, self.reader.get_batch(chunk).asnumpy())


@contextlib.contextmanager
def open_source(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[SourceVideo]:
    """The source video of `uri` (local path or fsspec URI; remote ones are copied to a temporary file first)."""
    with local_copy(uri, storage_options) as path:
        yield SourceVideo(path)


def render_clip(frames: pd.DataFrame, source_uri: str, out_uri: str, max_frames: int | None = None,
                storage_options: dict[str, Any] | None = None) -> int:
    """Encode the source video with the people of `frames` drawn on every frame that has rows; returns frames written.

    Frames without rows (no people, or skipped by the run's sampling) are written as they are, so the clip keeps
    the source's length and timing.
    """
    people = people_by_frame(frames)
    with open_source(source_uri, storage_options) as video, _local_output(out_uri, storage_options) as path:
        count = min(video.num_frames, max_frames or video.num_frames)
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(video.fps).limit_denominator(1001))
            stream.pix_fmt, stream.options = "yuv420p", {"crf": "18"}
            stream.width, stream.height = video.width + video.width % 2, video.height + video.height % 2
            for frame_index, image in video.frames(np.arange(count)):
                if frame_index in people:
                    image = draw_people(image, *people[frame_index])
                image = _even_size(image)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    logger.info("rendered %d frames (%d with people) to %s", count, sum(i < count for i in people), out_uri)
    return count


def sheet_indices(num_frames: int, rows_at: np.ndarray, count: int) -> np.ndarray:
    """`count` evenly spaced frame indices of a video; each moves to the nearest frame that has rows when one is
    within half a step, so a run that sampled every n-th frame still shows its people."""
    picks = np.unique(np.round(np.linspace(0, num_frames - 1, min(count, num_frames))).astype(np.int64))
    if len(rows_at) == 0 or len(picks) == 0:
        return picks
    half_step = max(0.5, (num_frames - 1) / max(1, len(picks) - 1) / 2)
    nearest = rows_at[np.abs(rows_at[None, :] - picks[:, None]).argmin(axis=1)]   # (n,)
    return np.where(np.abs(nearest - picks) <= half_step, nearest, picks)


def render_contact_sheet(frames: pd.DataFrame, source_uri: str, out_uri: str, count: int = 12,
                         columns: int | None = None, tile_width: int | None = None,
                         storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """A PNG grid of `count` evenly spaced frames with people drawn, captioned `frame N  t=S.s  P people`.

    Tiles are `tile_width` wide (default: the video's own width, at most SHEET_TILE_MAX_WIDTH) with the video's
    aspect ratio, `columns` per row (default ceil(sqrt(count))), no gaps, so the sheet is exactly
    (rows * tile_h, columns * tile_w). Returns the sheet's (height, width).
    """
    people = people_by_frame(frames)
    with open_source(source_uri, storage_options) as video:
        tile_width = tile_width or min(video.width, SHEET_TILE_MAX_WIDTH)
        indices = sheet_indices(video.num_frames, np.array(sorted(people), np.int64), count)
        tiles = []
        for frame_index, image in video.frames(indices):
            scale = tile_width / image.shape[1]
            tile_h = max(1, int(round(image.shape[0] * scale)))
            tile = cv2.resize(image, (tile_width, tile_h), interpolation=cv2.INTER_AREA)
            keypoints, ids = people.get(frame_index, (np.zeros((0, 1, 3), np.float32), np.zeros(0, np.int64)))
            tile = draw_people(tile, keypoints, ids, scale=scale)
            caption = f"frame {frame_index}  t={frame_index / video.fps:.1f}s  {len(ids)} people"
            _draw_label(tile, caption, (4, tile_h - 6), (255, 255, 255), max(0.35, tile_width / 700))
            tiles.append(tile)
    sheet = tile_grid(tiles, columns)
    _write_image(sheet, out_uri, storage_options)
    return sheet.shape[0], sheet.shape[1]


def tile_grid(tiles: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Same-size (h, w, 3) tiles -> one (rows * h, columns * w, 3) image, row-major, black where none is left."""
    if not tiles:
        raise ValueError("no frames to put on the sheet: the video decoded to 0 frames")
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return sheet


NICE_BINS_S = (1, 2, 5, 10, 15, 30, 60)


def summary_bin_seconds(span_s: float) -> float:
    """Time bin of the summary plot: a minute for footage of 10 minutes or more, else a nice bin giving >= 10 bins."""
    if span_s >= 600:
        return 60.0
    return float(max([b for b in NICE_BINS_S if b <= span_s / 10] or [NICE_BINS_S[0]]))


def summary_by_time(con: duckdb.DuckDBPyConnection, bin_s: float | None = None) -> tuple[pd.DataFrame, float]:
    """People and mean keypoint score per source and time bin, aggregated in DuckDB.

    Time is the position in the video (`timestamp_s`; the tables hold no wall-clock capture time), so the videos
    of a source add up bin by bin. people = distinct (video, track) seen in the bin, untracked rows left out;
    mean_score = mean over rows of the mean score of the keypoints found in the row.
    Returns (DataFrame source, t_s, people, mean_score, rows; bin_s).
    """
    span = con.execute("SELECT coalesce(max(timestamp_s), 0) FROM frames").fetchone()[0]
    bin_s = float(bin_s or summary_bin_seconds(float(span)))
    scores = [f"{name}_score" for name in KEYPOINT_NAMES]
    found = " + ".join(f"({c} > 0)::INT" for c in scores)
    table = con.execute(f"""
        SELECT source, floor(timestamp_s / $bin) * $bin AS t_s,
               count(DISTINCT (video_id, track_id)) FILTER (WHERE track_id >= 0) AS people,
               avg(({" + ".join(scores)}) / nullif({found}, 0)) AS mean_score,
               count(*) AS rows
        FROM frames GROUP BY ALL ORDER BY source, t_s""", {"bin": bin_s}).df()
    return table, bin_s


def footage_by_source(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Seconds of footage per source: the longest video (`videos.duration_s`), or the last frame with people."""
    rows = con.execute("""
        SELECT source, max(span) FROM (
            SELECT source, duration_s AS span FROM videos WHERE duration_s IS NOT NULL
            UNION ALL SELECT source, max(timestamp_s) FROM frames GROUP BY source)
        GROUP BY source ORDER BY source""").fetchall()
    return {str(source): float(span) for source, span in rows}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def plot_summary(con: duckdb.DuckDBPyConnection, out_uri: str, bin_s: float | None = None,
                 storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """PNG of people per time bin and mean keypoint score over video time, one line per source, titled with the
    runs and errors tables' totals. Returns the plotted table (see `summary_by_time`)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    table, bin_s = summary_by_time(con, bin_s)
    footage = footage_by_source(con)
    runs = con.execute("SELECT count(*), coalesce(sum(videos_ok), 0), coalesce(sum(videos_failed), 0), "
                       "coalesce(sum(frames), 0), string_agg(DISTINCT status, '/') FROM runs").fetchone()
    errors = con.execute("SELECT count(*) FROM errors").fetchone()[0]
    fig = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    ax_people, ax_score = fig.subplots(2, 1, sharex=True)
    unit_s = 60.0 if bin_s >= 60 else 1.0
    last = max([table["t_s"].max() if len(table) else 0.0] + list(footage.values()))
    num_bins = int(last // bin_s) + 1
    edges = np.arange(num_bins + 1) * bin_s / unit_s                         # (num_bins + 1,)
    starts = np.arange(num_bins) * bin_s
    for source, span in footage.items():
        group = table[table["source"] == source]
        bins = np.round(group["t_s"].to_numpy() / bin_s).astype(int)
        # a bin of footage without people is 0; past the end of a source's footage nothing is drawn
        people = np.where((starts < span) | (starts == 0), 0.0, np.nan)
        score = np.full(num_bins, np.nan)
        people[bins], score[bins] = group["people"], group["mean_score"]
        ax_people.stairs(people, edges, baseline=None, label=str(source), linewidth=1.5)
        ax_score.plot((edges[:-1] + edges[1:]) / 2, score, marker=".", label=str(source))
    ax_people.set_ylabel(f"people per {bin_s:g} s\n(distinct tracks)")
    ax_score.set_ylabel("mean keypoint score")
    ax_score.set_xlabel(f"time into video ({'min' if unit_s == 60 else 's'})")
    ax_score.set_ylim(0, 1.05)
    ax_people.set_ylim(0, max(1, int(table["people"].max()) if len(table) else 1) * 1.15)
    if table.empty:
        ax_people.text(0.5, 0.5, "no people in the frames table", ha="center", va="center",
                       transform=ax_people.transAxes)
    if footage:
        ax_people.legend(title="source", fontsize="small", loc="upper right")
    rows = int(table["rows"].sum()) if len(table) else 0
    fig.suptitle(f"{plural(runs[0], 'run')} [{runs[4] or 'none'}]: {plural(runs[1], 'video')} ok, {runs[2]} failed, "
                 f"{plural(runs[3], 'frame')}; {plural(rows, 'person row')}; {plural(errors, 'error row')}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    fs, path = resolve(out_uri, storage_options)
    write_bytes_atomic(fs, path, buffer.getvalue())
    return table


def _even_size(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad odd ones by one edge pixel."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_image(image: np.ndarray, out_uri: str, storage_options: dict[str, Any] | None) -> None:
    ok, data = cv2.imencode(os.path.splitext(out_uri)[1] or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image for {out_uri!r}: use a .png or .jpg name")
    fs, path = resolve(out_uri, storage_options)
    write_bytes_atomic(fs, path, data.tobytes())


@contextlib.contextmanager
def _local_output(uri: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    """A local path to write `uri` through: the path itself, or for a remote URI a temporary file that is uploaded
    when the block succeeds and removed either way."""
    fs, path = resolve(uri, storage_options)
    if is_local(fs):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield path
        return
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1] or ".mp4")
    os.close(fd)
    try:
        yield tmp
        fs.put_file(tmp, path)
    finally:
        os.remove(tmp)
