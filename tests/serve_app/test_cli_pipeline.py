"""``lis pipeline run``: what a command-line SOURCE stands for."""

from __future__ import annotations

from pathlib import Path

from serve_app.cli.pipeline import source_of


def test_a_source_is_a_camera_a_stream_a_folder_an_image_or_a_video(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "in").mkdir()
    assert source_of("0", state) == {"type": "camera", "device": 0}
    assert source_of("/dev/video2", state) == {"type": "camera", "device": "/dev/video2"}
    assert source_of("rtsp://cam/1", state) == {"type": "stream", "url": "rtsp://cam/1"}
    assert source_of(str(tmp_path / "in"), state) == {
        "type": "folder", "path": str(tmp_path / "in"), "record_file": str(state / "seen")}
    assert source_of(str(tmp_path / "a.JPG"), state) == {"type": "image",
                                                         "path": str(tmp_path / "a.JPG")}
    assert source_of(str(tmp_path / "clip.mp4"), state) == {"type": "stream",
                                                            "url": str(tmp_path / "clip.mp4")}
