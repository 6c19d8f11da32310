"""Issue #17: the seed pages' Lambda code declares ``image/jpeg`` for every file.

On the code before this change a PNG sent with ``Content-Type: image/jpeg``
(what the Greengrass v1 seed pages' Lambda code always sends) was refused with
``InvalidImage`` (400, "Content-Type is image/jpeg but the body is
image/png"), as was a JPEG declared ``image/png``. Both supported formats are
now decoded whatever the declared one of the two; ``mislabelled`` lets the
replica count the mismatch. Anything else is still 415.
"""

from __future__ import annotations

from http import HTTPStatus

import cv2
import numpy as np
import pytest

from deployments import imaging
from deployments.imaging import CLASSIFIER_PREPROCESSING, decode_image, prepare_image
from vocabulary.errors import LisError

RED_BGR = np.zeros((40, 60, 3), np.uint8)
RED_BGR[:, :, 2] = 255


def _encode(extension: str) -> bytes:
    return cv2.imencode(extension, RED_BGR)[1].tobytes()


JPEG, PNG = _encode(".jpg"), _encode(".png")


@pytest.mark.parametrize(("body", "declared", "actual"), [
    (PNG, "image/jpeg", "image/png"), (JPEG, "image/png", "image/jpeg")],
    ids=["PNG declared JPEG", "JPEG declared PNG"])
def test_the_other_supported_format_is_decoded_as_what_it_is(body: bytes, declared: str,
                                                             actual: str) -> None:
    """Old code: ``InvalidImage: Content-Type is image/jpeg but the body is image/png`` (400)."""
    image = decode_image(body, declared)
    assert image.shape == (40, 60, 3) and image[5, 5, 0] > 240 and image[5, 5, 2] < 15
    # What a replica's InferencePipeline.prepare calls: the same batch as correctly declared.
    np.testing.assert_array_equal(prepare_image(body, declared, CLASSIFIER_PREPROCESSING),
                                  prepare_image(body, actual, CLASSIFIER_PREPROCESSING))
    assert imaging.mislabelled(body, declared) is True
    assert imaging.mislabelled(body, actual) is False
    assert imaging.mislabelled(body, None) is False


@pytest.mark.parametrize(("body", "declared"), [
    (_encode(".bmp"), "image/jpeg"), (_encode(".webp"), "image/png"),
    (PNG, "image/gif"), (JPEG, "application/octet-stream")],
    ids=["BMP declared JPEG", "WebP declared PNG", "PNG declared GIF", "JPEG declared bytes"])
def test_unsupported_formats_are_still_415(body: bytes, declared: str) -> None:
    with pytest.raises(LisError) as refused:
        prepare_image(body, declared, CLASSIFIER_PREPROCESSING)
    assert refused.value.status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert imaging.mislabelled(body, declared) is False
