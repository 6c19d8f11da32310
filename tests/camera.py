"""Cameras and images made by the tests: JPEGs, a video file, an HTTP MJPEG stream.

Nothing here imports pytest, so scripts can use it too.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MjpegServer", "jpeg_bytes", "numbered_frames", "write_video"]


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small JPEG of random pixels (``seed`` picks which)."""
    import cv2

    image = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def numbered_frames(count: int, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    """``count`` BGR frames; frame i shows the number i in large digits."""
    import cv2

    frames = []
    for index in range(count):
        frame = np.full((size[1], size[0], 3), 40, dtype=np.uint8)
        cv2.putText(frame, str(index), (10, 90), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 255, 255), 4)
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """An MJPEG AVI of ``frames`` at ``fps``, written with OpenCV."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


class MjpegServer:
    """An HTTP MJPEG camera on loopback (``multipart/x-mixed-replace``), as IP cameras serve.

    Each connection gets ``frames`` in turn, as fast as the client reads them,
    and is closed after ``frames_per_connection`` of them, as by a camera that
    drops its stream (``None``: never closed).
    """

    BOUNDARY = "lisframe"

    def __init__(self, frames: list[bytes], frames_per_connection: int | None = None,
                 *, stall: bool = False) -> None:
        self.frames = frames
        self.frames_per_connection = frames_per_connection
        # After its frames, leave the connection open and silent (a camera whose network
        # went away) instead of closing it.
        self.stall = stall
        self._stop = threading.Event()
        self.connections = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/video.mjpg"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> Any:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type",
                                 f"multipart/x-mixed-replace; boundary={server.BOUNDARY}")
                self.end_headers()
                sent = 0
                try:
                    while server.frames_per_connection is None or \
                            sent < server.frames_per_connection:
                        body = server.frames[sent % len(server.frames)]
                        self.wfile.write(
                            f"--{server.BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n".encode() + body + b"\r\n")
                        sent += 1
                    if server.stall:
                        server._stop.wait()  # silent, open, until the test ends
                except (BrokenPipeError, ConnectionResetError, socket.timeout):
                    return

        return Handler
