"""Issue #17, door 8: an image within the pixel limit could need gigabytes to decode.

A 50 MP, 16-bit RGBA PNG (1.5 MB on the wire here, a compressible pattern)
passed the pixel check (50 MP is the limit), was decoded unchanged into a
400 MB array, and its alpha was composited on white in float32 full-frame
copies. On the code before this change, measured with its ``imaging.py`` in a
child process (``/proc/self/status`` VmHWM, decode and preprocess): one such
request raised the process's peak memory by 2674 MiB and was answered 200; a
replica runs up to 10 local requests at once. Both tests below fail there
(reasoned from those measurements; the tests themselves import names the old
code lacks): the first gets 200 instead of 413 and a peak 2.6 GiB higher, the
second's 12 MP image raised the peak by 645 MiB, over its 192 MB estimate.

Now ``deployments.imaging`` reads bit depth, colour type (PNG IHDR, tRNS) or
precision, components and mode (JPEG SOF) from the header, estimates the peak
of decoding (two OpenCV frames, the composited result, a progressive JPEG's
coefficients), and refuses with 413 past ``max_pixels x DECODE_BYTES_PER_PIXEL``
before any pixel is decoded; alpha is composited in uint16 integer strips.
Each test runs a real service (lis's HTTP app and server over a real MXNet
model, ``_serving_process.py``) in a process of its own and reads its peak.
"""

from __future__ import annotations

import http.client
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _serving_process import SERVICE, ServingProcess

from deployments.imaging import _png_header
from vocabulary.limits import DECODE_BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS

_TIMEOUT_S = 120
MB = 1024 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _rgba16_png(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG written row by row: never the whole frame in this process."""
    pattern = bytes(range(256)) * (width * 8 // 256 + 1)
    row = b"\x00" + pattern[:width * 8]  # filter type 0, then R G B A, 2 bytes each
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) \
        + _chunk(b"IEND", b"")


def _post(service: ServingProcess, body: bytes) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=_TIMEOUT_S)
    try:
        connection.request("POST", f"/inference/{SERVICE}", body=body,
                           headers={"Content-Type": "image/png"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


@pytest.fixture
def service(tiny_classifier_artifact: Path) -> Iterator[ServingProcess]:
    serving = ServingProcess(tiny_classifier_artifact)
    try:
        yield serving
    finally:
        serving.stop()


def _good_png() -> bytes:
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, :80] = (0, 0, 255)
    return cv2.imencode(".png", frame)[1].tobytes()


def _answers_a_good_request(service: ServingProcess) -> None:
    status, answer = _post(service, _good_png())
    assert status == 200 and isinstance(answer, list) and len(answer) == 3, (status, answer)


def test_a_50_mp_16_bit_rgba_png_is_refused_from_its_header(service: ServingProcess) -> None:
    """Old code: 200, after the process's peak memory grew by 2674 MiB for this one request."""
    width, height = 10_000, 5_000  # 50 MP: exactly the pixel limit
    bomb = _rgba16_png(width, height)
    assert len(bomb) < 2 * MB
    _answers_a_good_request(service)
    before = service.peak_bytes()
    status, answer = _post(service, bomb)
    limit = DEFAULT_MAX_PIXELS * DECODE_BYTES_PER_PIXEL
    needed = 2 * width * height * 4 * 2  # the 16-bit RGBA frame, twice (OpenCV + the copy)
    assert (status, answer) == (413, {"error": {"type": "PayloadTooLarge", "message": (
        f"decode memory bytes for this 10000x5000 PNG (4 channels of 16 bits) {needed} is "
        f"over the limit of {limit} (max_pixels {DEFAULT_MAX_PIXELS} x "
        f"{DECODE_BYTES_PER_PIXEL} bytes a pixel)")}})
    assert service.peak_bytes() - before < 32 * MB  # refused before any pixel was decoded
    _answers_a_good_request(service)  # the service is still there and answers
    assert service.process.poll() is None


def test_an_alpha_png_within_the_bound_is_decoded_within_it(service: ServingProcess) -> None:
    """Old code: the float32 compositing of this 12 MP 16-bit RGBA PNG raised the peak by
    645 MiB (measured), over its 192 MB estimate; now 187 MiB."""
    width, height = 4_000, 3_000  # 16-bit RGBA: 16 bytes a pixel, within 8 x 50 MP
    body = _rgba16_png(width, height)
    estimate = _png_header(body).decode_bytes()
    assert estimate == 2 * width * height * 8 <= DEFAULT_MAX_PIXELS * DECODE_BYTES_PER_PIXEL
    _answers_a_good_request(service)
    before = service.peak_bytes()
    status, answer = _post(service, body)
    assert status == 200 and isinstance(answer, list) and len(answer) == 3, (status, answer)
    # The estimate is of the frames; libpng, zlib and the strips' scratch add a few MB.
    assert service.peak_bytes() - before < estimate + 16 * MB
    _answers_a_good_request(service)
