"""Bodies that are not encoded images (``vocabulary.tensors``): raw RGB pixels and model inputs.

The Open Inference Protocol sends them to the replica; each is checked against
its declared shape (and a tensor against the model's input) before anything runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from deployments.imaging import (
    CLASSIFIER_PREPROCESSING,
    decode_image,
    feedback_image,
    prepare_image,
    preprocess,
    tensor_batch,
)
from vocabulary.errors import InvalidArgument, PayloadTooLarge
from vocabulary.tensors import (
    RGB8_CONTENT_TYPE,
    TENSOR_CONTENT_TYPE,
    array_content_type,
    array_shape,
)

IMAGE = np.random.RandomState(1).randint(0, 256, (30, 40, 3), dtype=np.uint8)


def test_raw_pixels_are_preprocessed_as_the_same_decoded_image() -> None:
    content_type = array_content_type(RGB8_CONTENT_TYPE, IMAGE.shape)
    assert content_type == "application/x-lis-rgb8; shape=30,40,3"
    batch = prepare_image(IMAGE.tobytes(), content_type, CLASSIFIER_PREPROCESSING)
    assert np.array_equal(batch, preprocess(IMAGE, CLASSIFIER_PREPROCESSING))


@pytest.mark.parametrize(("body", "content_type", "error", "message"), [
    (IMAGE.tobytes()[:-1], "application/x-lis-rgb8; shape=30,40,3", InvalidArgument,
     "3599 bytes"),
    (IMAGE.tobytes(), "application/x-lis-rgb8; shape=40,30", InvalidArgument,
     "expected [height, width, 3] (RGB)"),
    (IMAGE.tobytes(), "application/x-lis-rgb8", InvalidArgument, "a shape=D1,D2,..."),
    (IMAGE.tobytes(), "application/x-lis-rgb8; shape=30,0,3", InvalidArgument,
     "a shape=D1,D2,..."),
    (b"x", "application/x-lis-rgb8; shape=10000,10000,3", PayloadTooLarge, "pixel count"),
])
def test_raw_pixels_that_do_not_match_their_shape_are_refused(
        body: bytes, content_type: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        prepare_image(body, content_type, CLASSIFIER_PREPROCESSING, max_pixels=50_000_000)


def test_a_tensor_is_the_models_input_as_sent() -> None:
    batch = np.random.RandomState(2).standard_normal((1, 3, 4, 5)).astype("<f4")
    content_type = array_content_type(TENSOR_CONTENT_TYPE, batch.shape)
    assert array_shape(content_type) == (1, 3, 4, 5)
    assert np.array_equal(tensor_batch(batch.tobytes(), content_type, (1, 3, 4, 5)), batch)
    with pytest.raises(InvalidArgument, match=r"the model's input shape \[1, 3, 8, 8\]"):
        tensor_batch(batch.tobytes(), content_type, (1, 3, 8, 8))
    with pytest.raises(InvalidArgument, match="240 bytes"):
        tensor_batch(batch.tobytes() + b"\0" * 4, content_type, (1, 3, 4, 5))
    batch[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgument, match="finite float32 values"):
        tensor_batch(batch.tobytes(), content_type, (1, 3, 4, 5))


def test_ml_feedback_keeps_raw_pixels_as_a_png_and_cannot_keep_a_tensor() -> None:
    png, content_type = feedback_image(IMAGE.tobytes(),
                                       array_content_type(RGB8_CONTENT_TYPE, IMAGE.shape))
    assert content_type == "image/png"
    assert np.array_equal(decode_image(png, "image/png"), IMAGE)  # lossless, RGB kept
    assert feedback_image(b"\0" * 16, "application/x-lis-float32; shape=1,1,2,2") is None
    jpeg = b"\xff\xd8\xff..."
    assert feedback_image(jpeg, "image/jpeg") == (jpeg, "image/jpeg")
