import pytest

from pipeline.stages.read import InputError, list_videos, make_video_id

from conftest import encode_video


def test_lists_videos_with_sources(tmp_path):
    for rel in ["cam1/a.mp4", "cam1/deep/b.MOV", "cam2/c.mkv", "top.avi"]:
        encode_video(tmp_path / rel, num_frames=2, codec="mpeg4" if rel.endswith(".avi") else "libx264")
    (tmp_path / "cam2" / "notes.txt").write_text("not a video")
    (tmp_path / "cam2" / ".partial.mp4").write_text("hidden temp file")
    refs = list_videos(str(tmp_path))
    assert [(r["uri"].split(str(tmp_path))[1], r["source"]) for r in refs] == [
        ("/cam1/a.mp4", "cam1"), ("/cam1/deep/b.MOV", "cam1"), ("/cam2/c.mkv", "cam2"), ("/top.avi", tmp_path.name)]
    assert all(r["size"] > 0 and r["version"] for r in refs)
    assert len({r["video_id"] for r in refs}) == 4


def test_single_file_and_missing_input(tmp_path):
    path = encode_video(tmp_path / "x" / "one.mp4", num_frames=2)
    assert [r["uri"] for r in list_videos(str(path))] == [str(path)]
    with pytest.raises(InputError, match="does not exist"):
        list_videos(str(tmp_path / "missing"))


def test_video_id_is_stable_and_readable():
    assert make_video_id("s3://b/cam 1/walk.mp4") == make_video_id("s3://b/cam 1/walk.mp4")
    assert make_video_id("s3://b/cam 1/walk.mp4").startswith("walk-")
    assert make_video_id("s3://b/a/walk.mp4") != make_video_id("s3://b/b/walk.mp4")


def test_dangling_links_are_listed_so_they_get_an_error_row(tmp_path):
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    assert [r["uri"] for r in list_videos(str(tmp_path))] == [str(tmp_path / "gone.mp4")]


def test_a_source_folder_that_is_not_a_plain_name_is_renamed_with_a_warning(tmp_path, caplog):
    encode_video(tmp_path / "cam 1" / "a.mp4", num_frames=2)
    encode_video(tmp_path / "cam 1" / "b.mp4", num_frames=2)
    with caplog.at_level("WARNING", logger="pipeline.stages.read"):
        refs = list_videos(str(tmp_path))
    assert [r["source"] for r in refs] == ["cam_1", "cam_1"] and refs[0]["uri"].endswith("/cam 1/a.mp4")
    assert [r.getMessage() for r in caplog.records] == [
        "source folder 'cam 1' is written as source=cam_1 (letters, digits, '.', '_' and '-' are kept; the uri "
        "column keeps the real path)"]
