"""Decoding: every bad input is refused with a status and a reason; good ones normalised."""

from __future__ import annotations

import io
import struct
import zlib
from http import HTTPStatus

import cv2
import numpy as np
import pytest
from PIL import Image

from deployments.imaging import (
    CLASSIFIER_PREPROCESSING,
    DETECTOR_PREPROCESSING,
    Preprocessing,
    decode_image,
    prepare_image,
    preprocess,
)
from vocabulary.errors import LisError


def _encode(image_bgr: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image_bgr)
    assert ok
    return data.tobytes()


def _pil(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00") + \
        chunk(b"IEND", b"")


RED_BGR = np.zeros((40, 60, 3), np.uint8)
RED_BGR[:, :, 2] = 255
JPEG = _encode(RED_BGR, ".jpg")
PNG = _encode(RED_BGR, ".png")


BAD_INPUTS = {
    "empty body": (b"", "image/jpeg", HTTPStatus.BAD_REQUEST, "empty"),
    "random bytes": (np.random.default_rng(0).bytes(5000), "image/jpeg",
                     HTTPStatus.BAD_REQUEST, "neither a JPEG nor a PNG"),
    "truncated JPEG": (JPEG[: len(JPEG) // 2], "image/jpeg", HTTPStatus.BAD_REQUEST,
                       "truncated"),
    "truncated PNG": (PNG[: len(PNG) - 20], "image/png", HTTPStatus.BAD_REQUEST, "truncated"),
    "GIF": (_pil(Image.new("RGB", (8, 8)), "GIF"), "image/gif",
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "image/gif"),
    "GIF labelled PNG": (_pil(Image.new("RGB", (8, 8)), "GIF"), "image/png",
                         HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "GIF"),
    "BMP": (_encode(RED_BGR, ".bmp"), "image/png", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "BMP"),
    "WebP": (_encode(RED_BGR, ".webp"), "image/jpeg", HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
             "WebP"),
    "30000x30000 PNG header": (_png_header_only(30000, 30000), "image/png",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "30000x30000"),
    "zero-size PNG": (_png_header_only(0, 10), "image/png", HTTPStatus.BAD_REQUEST, "zero size"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_with_status_and_reason(case: str) -> None:
    body, content_type, status, reason = BAD_INPUTS[case]
    with pytest.raises(LisError) as caught:
        decode_image(body, content_type)
    assert caught.value.status == status
    assert reason in str(caught.value)


def test_jpeg_and_png_decode_to_rgb() -> None:
    for body, content_type in ((JPEG, "image/jpeg"), (PNG, "image/png"), (PNG, None)):
        image = decode_image(body, content_type)
        assert image.shape == (40, 60, 3) and image.dtype == np.uint8
        assert image[5, 5, 0] > 240 and image[5, 5, 2] < 15  # red is channel 0: RGB


def test_grayscale_16bit_and_alpha_pngs_become_rgb8() -> None:
    gray16 = np.full((10, 12), 40000, np.uint16)
    image = decode_image(_encode(gray16, ".png"), "image/png")
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [40000 >> 8] * 3

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[:, :6] = (255, 0, 0, 255)  # opaque blue (BGRA) on the left, transparent right
    image = decode_image(_encode(rgba, ".png"), "image/png")
    assert image[0, 0].tolist() == [0, 0, 255]
    assert image[0, 11].tolist() == [255, 255, 255]  # transparent = white background


def test_cmyk_jpeg_is_converted() -> None:
    body = _pil(Image.new("RGB", (64, 48), (200, 30, 40)).convert("CMYK"), "JPEG")
    image = decode_image(body, "image/jpeg")
    assert np.abs(image[10, 10].astype(int) - [200, 30, 40]).max() < 10


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    body = _pil(Image.new("RGB", (64, 32), (0, 0, 255)), "JPEG", exif=exif.tobytes())
    assert decode_image(body, "image/jpeg").shape == (64, 32, 3)


def test_preprocess_layouts() -> None:
    image = np.full((100, 50, 3), (255, 0, 0), np.uint8)
    raw = preprocess(image, CLASSIFIER_PREPROCESSING)
    assert raw.shape == (1, 3, 224, 224) and raw.dtype == np.float32
    assert raw[0, 0, 0, 0] == 255 and raw[0, 2, 0, 0] == 0  # RGB, raw 0-255

    normalised = preprocess(image, DETECTOR_PREPROCESSING)
    assert normalised.shape == (1, 3, 512, 512)
    assert normalised[0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)

    bgr = preprocess(image, Preprocessing(width=8, height=8, color="BGR"))
    assert bgr[0, 2, 0, 0] == 255 and bgr[0, 0, 0, 0] == 0


def _numpy_preprocess(image_rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The reference's steps one by one (section 2): resize, order, scale, mean, std, NCHW."""
    resized = cv2.resize(image_rgb, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
    if spec.color == "BGR":
        resized = resized[:, :, ::-1]
    pixels = resized.astype(np.float32) * np.float32(spec.scale)
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return pixels.transpose(2, 0, 1)[np.newaxis]


def _photo(height: int = 90, width: int = 160) -> np.ndarray:
    """An RGB image whose three channels all differ, so a swapped channel shows."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[:, :, 0] //= 2
    return image


@pytest.mark.parametrize("spec", [CLASSIFIER_PREPROCESSING, DETECTOR_PREPROCESSING,
                                  Preprocessing(width=33, height=17, color="BGR", scale=2.0,
                                                mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0))],
                         ids=["classifier", "detector", "bgr-odd-size"])
def test_preprocess_equals_the_step_by_step_reference(spec: Preprocessing) -> None:
    image = _photo()
    got = preprocess(image, spec)
    assert got.shape == (1, 3, spec.height, spec.width) and got.dtype == np.float32
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, _numpy_preprocess(image, spec), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("spec", [DETECTOR_PREPROCESSING,
                                  Preprocessing(width=64, height=48, color="BGR")],
                         ids=["rgb-detector", "bgr"])
def test_a_request_is_prepared_exactly_as_decode_then_preprocess(ext: str,
                                                                 spec: Preprocessing) -> None:
    body = _encode(cv2.cvtColor(_photo(), cv2.COLOR_RGB2BGR), ext)
    content_type = "image/jpeg" if ext == ".jpg" else "image/png"
    expected = preprocess(decode_image(body, content_type), spec)
    np.testing.assert_array_equal(prepare_image(body, content_type, spec), expected)


def test_gray_and_alpha_requests_are_prepared_like_their_decoded_images() -> None:
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[:, :6] = (255, 0, 0, 255)
    for body in (_encode(np.full((10, 12), 40000, np.uint16), ".png"), _encode(rgba, ".png")):
        expected = preprocess(decode_image(body, "image/png"), CLASSIFIER_PREPROCESSING)
        np.testing.assert_array_equal(prepare_image(body, "image/png", CLASSIFIER_PREPROCESSING),
                                      expected)


def test_preprocessing_round_trips_through_dict() -> None:
    spec = DETECTOR_PREPROCESSING.with_overrides(width=320, color="BGR")
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    assert spec.width == 320 and spec.height == 512 and spec.color == "BGR"


# --- the decode-memory bound (issue #17, door 8) ------------------------------

def test_16_bit_alpha_is_composited_in_integers_exactly() -> None:
    """c*a/255 + 255*(1 - a/255) on the high bytes, floored: the float formula, exactly."""
    from deployments.imaging import _composite_on_white

    bgra = np.random.default_rng(3).integers(0, 65536, (33, 47, 4), dtype=np.uint16)
    high = (bgra >> 8).astype(np.int64)
    expected = (high[:, :, :3] * high[:, :, 3:] + 255 * (255 - high[:, :, 3:])) // 255
    np.testing.assert_array_equal(_composite_on_white(bgra), expected.astype(np.uint8))


def test_the_header_says_what_decoding_will_hold() -> None:
    from deployments.imaging import _jpeg_header, _png_header

    rgba16 = _png_header(_encode(np.zeros((10, 12, 4), np.uint16), ".png"))
    assert (rgba16.channels, rgba16.sample_bytes, rgba16.alpha) == (4, 2, True)
    assert rgba16.decode_bytes() == 2 * 120 * 4 * 2  # the frame twice: OpenCV's, then the copy
    gray16 = _png_header(_encode(np.zeros((10, 12), np.uint16), ".png"))
    assert (gray16.channels, gray16.sample_bytes, gray16.alpha) == (3, 1, False)  # 8-bit BGR
    palette = Image.new("P", (12, 10))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    with_transparency = _png_header(_pil(palette, "PNG", transparency=1))
    assert with_transparency.alpha and with_transparency.channels == 4

    frame = np.zeros((64, 96, 3), np.uint8)
    baseline = _jpeg_header(_encode(frame, ".jpg"))
    assert baseline.coefficient_bytes == 0 and baseline.decode_bytes() == 2 * 64 * 96 * 3
    progressive = _jpeg_header(_encode_with(frame, ".jpg", [
        cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]))
    # Y at full size, Cb and Cr at half each way: 1.5 samples a pixel, 2 bytes each.
    assert progressive.coefficient_bytes == 2 * (64 * 96 + 2 * 32 * 48)
    assert "progressive" in progressive.describe()


def test_an_image_past_the_decode_bound_is_413_before_decoding() -> None:
    body = _encode(np.zeros((100, 100, 4), np.uint16), ".png")  # 16 bytes a pixel
    with pytest.raises(LisError) as refused:
        decode_image(body, "image/png", max_pixels=15_000)  # the bound: 8 x 15000 bytes
    assert refused.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert refused.value.message == (
        "decode memory bytes for this 100x100 PNG (4 channels of 16 bits) 160000 is over the "
        "limit of 120000 (max_pixels 15000 x 8 bytes a pixel)")
    assert decode_image(body, "image/png", max_pixels=20_000).shape == (100, 100, 3)


def _encode_with(image_bgr: np.ndarray, ext: str, params: list[int]) -> bytes:
    ok, data = cv2.imencode(ext, image_bgr, params)
    assert ok
    return data.tobytes()


def test_padding_before_the_jpeg_frame_header_is_refused_cheaply() -> None:
    """A body of empty segments was walked one by one (old code: 0.6 s of the replica's CPU
    for 10 MiB, then 'truncated'); now at most 1024 are looked at, then 400 saying so."""
    body = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 5000 + _encode(np.zeros((8, 8, 3), np.uint8),
                                                              ".jpg")[2:]
    with pytest.raises(LisError) as refused:
        decode_image(body, "image/jpeg")
    assert refused.value.status == HTTPStatus.BAD_REQUEST
    assert "more than 1024 segments before its frame header" in refused.value.message
    padded = b"\xff\xd8" + b"\xff" * 1000 + _encode(np.zeros((8, 8, 3), np.uint8), ".jpg")[2:]
    assert decode_image(padded, "image/jpeg").shape == (8, 8, 3)  # fill bytes are allowed
