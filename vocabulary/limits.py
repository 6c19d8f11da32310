"""Limits and defaults of what lis accepts and how much work it takes on, each defined once.

Per-service values are defaults of ``vocabulary.specs.ServiceSpec`` fields, which a
services file may override; the rest hold for every service.
"""

from __future__ import annotations

__all__ = [
    "DECODE_BYTES_PER_PIXEL",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_QUEUED_REQUESTS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_NUM_CPUS",
    "DEFAULT_TARGET_ONGOING_REQUESTS",
    "DEFAULT_TIMEOUT_S",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_FILES",
    "MAX_DRAINED_BODY_BYTES",
    "MAX_FEEDBACK_BODY_BYTES",
    "MAX_ONGOING_REQUESTS",
    "MIN_HTTP_TOKEN_CHARS",
]

# The object detection connector's page: "The default value is 10."
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_NUM_CPUS = 1.0
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
# 50 MP: a 12 MP camera frame fits four times over; beyond it a decoded image
# (3 bytes a pixel, then float32 input) costs more memory than a small board has.
DEFAULT_MAX_PIXELS = 50_000_000
# Decoding one image may take at most this many bytes of memory per pixel of the
# service's max_pixels (400 MB at 50 MP), estimated from the image's header
# before any pixel is decoded (``deployments.imaging``). OpenCV holds two frames
# at once: a 50 MP 8-bit RGB image needs 6 bytes a pixel, an RGBA PNG 8, a
# 16-bit RGBA PNG 16 (so one is refused above 25 MP). A replica runs up to 10
# local requests at once; a service that must stay smaller lowers max_pixels.
DECODE_BYTES_PER_PIXEL = 8
# Beyond this many waiting requests a service answers 503 instead of queueing forever.
DEFAULT_MAX_QUEUED_REQUESTS = 64
DEFAULT_TARGET_ONGOING_REQUESTS = 2.0  # Ray Serve's own default
# Requests a replica takes at once (Ray Serve's default), by either path.
MAX_ONGOING_REQUESTS = 5
# The largest ML Feedback sample body the ingress reads.
MAX_FEEDBACK_BODY_BYTES = 10 * 1024 * 1024
# A body refused as too large is still read (and dropped) up to this many bytes
# before the 413 goes out: a client still sending when the server closes gets a
# TCP reset instead of the answer (``http.client``, the SDK's transport, does).
# Beyond it the connection is closed unread: draining costs the ingress time.
MAX_DRAINED_BODY_BYTES = 64 * 1024 * 1024
# The shortest HTTP bearer token lis accepts (the ones it makes are 43).
MIN_HTTP_TOKEN_CHARS = 16
# A compiled SSD-512 is ~30 MB and a ResNet-152 checkpoint ~240 MB; 4 GiB
# leaves room for any real model while stopping a decompression bomb.
MAX_ARCHIVE_BYTES = 4 * 1024**3
# SageMaker and Neo artifacts hold a handful of files.
MAX_ARCHIVE_FILES = 10_000
