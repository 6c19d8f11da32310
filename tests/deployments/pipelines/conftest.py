"""Real parts for the pipeline tests: a classifier, a "camera" (a video file), images, a broker.

* ``classify``: the tiny SageMaker IC classifier of ``tests/conftest.py``, run by lis's
  own inference path, as a pipeline's ``infer`` (what a service replica would answer).
* ``video_file``: a camera made by the test: an MJPEG AVI written with OpenCV whose
  frames each show their own number.
* ``jpeg``: a small JPEG image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from camera import jpeg_bytes, numbered_frames, write_video

VIDEO_FPS = 50.0
VIDEO_FRAMES = 100


@pytest.fixture(scope="session")
def classify(tiny_classifier_artifact: Path) -> Callable[[bytes, str], str]:
    from deployments.inference import InferencePipeline, PipelineOptions

    pipeline = InferencePipeline(tiny_classifier_artifact,
                                 PipelineOptions(algorithm="image-classification"))
    return lambda body, content_type: pipeline.run(body, content_type).body


@pytest.fixture(scope="session")
def classifier_facts(classifier_labels: tuple[str, ...]) -> Callable[[], tuple]:
    return lambda: (classifier_labels, (224, 224))


@pytest.fixture(scope="session")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 50 fps video; frame i shows the number i."""
    folder = tmp_path_factory.mktemp("camera")
    return write_video(folder / "camera.avi", numbered_frames(VIDEO_FRAMES), VIDEO_FPS)


@pytest.fixture
def jpeg() -> bytes:
    return jpeg_bytes()
