"""Image decoding and preprocessing: request bytes -> model input.

Decoding turns a JPEG or PNG body into an RGB uint8 array (EXIF orientation
applied, grayscale/alpha/16-bit normalised), refusing anything else with an
``InvalidImage``/``UnsupportedMediaType``/``PayloadTooLarge`` that says why.
Before a pixel is decoded the header bounds what decoding will cost: pixels
(``max_pixels``) and memory (``max_pixels x DECODE_BYTES_PER_PIXEL``, estimated
from bit depth, channels and, for JPEG, progressive mode); 16-bit and alpha
images are reduced to 8-bit BGR in integers, never in a float copy of the frame.
Preprocessing turns that array into the NCHW float32 batch a model expects;
``prepare_image`` does both for a request.

Training, evaluation and serving all go through ``_to_batch`` (``preprocess``
and ``prepare_image``), so a model never sees different pixels in production
than it saw in training.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from vocabulary.errors import InvalidArgument, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from vocabulary.limits import DECODE_BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS
from vocabulary.names import PREPROCESSING_FILE
from vocabulary.tensors import (
    RGB8_CONTENT_TYPE,
    TENSOR_CONTENT_TYPE,
    array_shape,
    expected_bytes,
)

__all__ = [
    "CLASSIFIER_PREPROCESSING",
    "DETECTOR_PREPROCESSING",
    "SUPPORTED_CONTENT_TYPES",
    "Preprocessing",
    "decode_image",
    "feedback_image",
    "mislabelled",
    "prepare_image",
    "preprocess",
    "read_preprocessing",
    "sniff_format",
    "tensor_batch",
]

SUPPORTED_CONTENT_TYPES = ("image/jpeg", "image/png")

# cv2 otherwise starts one thread per core in every replica.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: colour order, size, scaling, layout."""

    width: int
    height: int
    color: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: Literal["linear", "area", "nearest", "cubic"] = "linear"
    extra: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("extra")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocessing:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "extra"}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])  # type: ignore[union-attr]
        return cls(**known)  # type: ignore[arg-type]

    def with_overrides(self, **overrides: object) -> Preprocessing:
        merged = self.to_dict()
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return Preprocessing.from_dict(merged)


# The SageMaker image-classification algorithm's convention: raw 0-255 RGB.
CLASSIFIER_PREPROCESSING = Preprocessing(width=224, height=224)
# GluonCV's detection transform.
DETECTOR_PREPROCESSING = Preprocessing(
    width=512, height=512, scale=1 / 255,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)

_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC,
}


def read_preprocessing(model_dir: Path) -> Preprocessing | None:
    """The preprocessing a model folder documents in ``preprocessing.json``, if any."""
    path = Path(model_dir) / PREPROCESSING_FILE
    if not path.is_file():
        return None
    return Preprocessing.from_dict(json.loads(path.read_text()))


def preprocess(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 1x3xHxW as ``spec`` says."""
    return _to_batch(image, "RGB", spec)


def prepare_image(body: bytes, content_type: str | None, spec: Preprocessing,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Request bytes -> model input: ``preprocess(decode_image(...))``, the same numbers.

    The decoder's own BGR order goes straight into the batch, so a full-size
    frame is never converted to RGB only to be resized. Raw RGB pixels
    (``vocabulary.tensors``) skip the decoder.
    """
    if _declared(content_type) == RGB8_CONTENT_TYPE:
        return _to_batch(_raw_rgb(body, str(content_type), max_pixels), "RGB", spec)
    return _to_batch(_decode_bgr(body, content_type, max_pixels), "BGR", spec)


def _raw_rgb(body: bytes, content_type: str, max_pixels: int) -> np.ndarray:
    shape = array_shape(content_type)
    if len(shape) != 3 or shape[2] != 3:
        raise InvalidArgument("raw pixels shape", list(shape), "[height, width, 3] (RGB)")
    height, width, _ = shape
    if height * width > max_pixels:
        raise PayloadTooLarge(f"pixel count ({width}x{height})", height * width, max_pixels)
    _check_bytes(body, RGB8_CONTENT_TYPE, shape)
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def feedback_image(body: bytes, content_type: str | None) -> tuple[bytes, str | None] | None:
    """A request's image as ML Feedback keeps it: raw pixels become a PNG (lossless); a
    preprocessed tensor has no image (None); an encoded image is kept as it came."""
    declared = _declared(content_type)
    if declared == TENSOR_CONTENT_TYPE:
        return None
    if declared == RGB8_CONTENT_TYPE:
        pixels = _raw_rgb(body, str(content_type), max_pixels=2**62)
        encoded = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1]
        return encoded.tobytes(), "image/png"
    return body, content_type


def tensor_batch(body: bytes, content_type: str, input_shape: tuple[int, ...]) -> np.ndarray:
    """An already preprocessed float32 batch, checked against the model's input shape."""
    shape = array_shape(content_type)
    if shape != tuple(input_shape):
        raise InvalidArgument("tensor shape", list(shape),
                              f"the model's input shape {list(input_shape)}")
    _check_bytes(body, TENSOR_CONTENT_TYPE, shape)
    batch = np.frombuffer(body, dtype="<f4").reshape(shape)
    if not np.isfinite(batch).all():
        raise InvalidArgument("tensor", "a NaN or infinite value", "finite float32 values")
    return batch


def _check_bytes(body: bytes, kind: str, shape: tuple[int, ...]) -> None:
    if len(body) != expected_bytes(kind, shape):
        raise InvalidArgument(f"{kind} body of shape {list(shape)}", f"{len(body)} bytes",
                              f"{expected_bytes(kind, shape)} bytes")


def _to_batch(image: np.ndarray, order: Literal["RGB", "BGR"],
              spec: Preprocessing) -> np.ndarray:
    # Resize, then one pass per output channel: the plane's scale, mean and std
    # as a single multiply-add written straight into the NCHW batch. Five
    # numpy passes over the float array (cast, scale, mean, std, transpose)
    # took about 4 ms of a 512x512 detector's request; this takes about 1.5.
    resized = cv2.resize(image, (spec.width, spec.height),
                         interpolation=_INTERPOLATION[spec.interpolation])
    planes = cv2.split(resized)
    batch = np.empty((1, 3, spec.height, spec.width), dtype=np.float32)
    for channel, name in enumerate(spec.color):
        plane = planes[order.index(name)]
        factor = spec.scale / spec.std[channel]
        cv2.addWeighted(plane, factor, plane, 0.0, -spec.mean[channel] / spec.std[channel],
                        dst=batch[0, channel], dtype=cv2.CV_32F)
    return batch


# --- decoding ---------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_OTHER_SIGNATURES = {
    b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}
# PNG colour types (IHDR byte 25) -> samples per pixel; 4 and 6 carry alpha.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# SOF markers of progressive JPEGs: libjpeg keeps every DCT coefficient of the
# whole image (2 bytes a sample) until the last scan.
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# Segments before the frame header looked through; real files have a dozen.
_JPEG_SEGMENTS_SCANNED = 1024
_JPEG_FILL = re.compile(rb"\xff+")
# Chunks before IDAT looked through for tRNS; real files have a handful.
_PNG_CHUNKS_SCANNED = 256
# Rows composited at once when an alpha image is reduced: a few MB of scratch.
_STRIP_PIXELS = 1 << 20


def sniff_format(body: bytes) -> str:
    """'image/jpeg', 'image/png', or a short name of what the bytes really are."""
    if body.startswith(_PNG_SIGNATURE):
        return "image/png"
    if body.startswith(_JPEG_SIGNATURE):
        return "image/jpeg"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "WebP"
    for signature, name in _OTHER_SIGNATURES.items():
        if body.startswith(signature):
            return name
    return "unknown"


@dataclass(frozen=True)
class _Header:
    """What the image header says, before any pixel is decoded: enough to bound memory."""

    kind: str            # "PNG" or "JPEG", for messages
    width: int
    height: int
    channels: int        # of the array OpenCV decodes into
    sample_bytes: int    # 1, or 2 for a 16-bit PNG decoded unchanged
    alpha: bool          # decoded with alpha, then composited in strips
    coefficient_bytes: int = 0  # a progressive JPEG's DCT coefficient buffers

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def decode_bytes(self) -> int:
        """Peak memory of ``_decode_bgr`` for this image, measured for OpenCV 4.11.

        OpenCV decodes into a buffer of its own and the Python binding copies it
        into the returned array: two frames at once. Compositing an alpha image
        adds the 8-bit BGR result while the decoded frame is still held; a
        progressive JPEG holds its coefficients alongside the first frame.
        """
        decoded = self.pixels * self.channels * self.sample_bytes
        result = self.pixels * 3 if self.alpha else 0
        return max(2 * decoded, decoded + result, decoded + self.coefficient_bytes)

    def describe(self) -> str:
        progressive = ", progressive" if self.coefficient_bytes else ""
        return f"{self.width}x{self.height} {self.kind} ({self.channels} channels of " \
               f"{8 * self.sample_bytes} bits{progressive})"


def _png_header(body: bytes) -> _Header:
    if len(body) < 33 or body[12:16] != b"IHDR":
        raise InvalidImage("PNG has no IHDR header")
    width, height, depth, colour = struct.unpack(">IIBB", body[16:26])
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise InvalidImage(f"PNG has an invalid IHDR (bit depth {depth}, colour type {colour})")
    alpha = colour in (4, 6) or _png_has_transparency(body)
    # Without alpha OpenCV's libpng strips 16-bit samples to 8 and expands grey
    # and palette to BGR as it reads rows: the array is 8-bit BGR from the start.
    if not alpha:
        return _Header("PNG", width, height, 3, 1, False)
    return _Header("PNG", width, height, 4, 2 if depth == 16 else 1, True)


def _png_has_transparency(body: bytes) -> bool:
    """Whether a tRNS chunk comes before the image data (it turns into alpha).

    At most ``_PNG_CHUNKS_SCANNED`` chunks are looked at: a body of tiny chunks
    costs no more than that. One missed only drops the alpha (decoded as BGR,
    the cheaper way), never the memory bound.
    """
    pos = 8
    for _ in range(_PNG_CHUNKS_SCANNED):
        if pos + 8 > len(body):
            break
        length, kind = struct.unpack(">I4s", body[pos:pos + 8])
        if kind == b"tRNS":
            return True
        if kind == b"IDAT":
            return False
        pos += 12 + length
    return False


def _jpeg_header(body: bytes) -> _Header:
    """Size, components and mode from the first SOF marker, without decoding pixels.

    Fill bytes are skipped a run at a time and at most ``_JPEG_SEGMENTS_SCANNED``
    segments are looked at: a body of padding costs microseconds, not seconds.
    """
    pos = 2
    for _ in range(_JPEG_SEGMENTS_SCANNED):
        if pos + 4 > len(body):
            break
        if body[pos] != 0xFF:
            raise InvalidImage("JPEG marker structure is corrupt")
        pos = _JPEG_FILL.match(body, pos).end() - 1  # type: ignore[union-attr]  # the last 0xFF
        if pos + 4 > len(body):
            break
        marker = body[pos + 1]
        length = struct.unpack(">H", body[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _jpeg_frame(body[pos + 4:pos + 2 + length], marker)
        pos += 2 + length
    else:
        raise InvalidImage(f"JPEG has more than {_JPEG_SEGMENTS_SCANNED} segments before its "
                           "frame header")
    raise InvalidImage("JPEG is truncated before its frame header")


def _jpeg_frame(frame: bytes, marker: int) -> _Header:
    if len(frame) < 6:
        raise InvalidImage("JPEG is truncated in its frame header")
    height, width, components = struct.unpack(">HHB", frame[1:6])
    coefficients = 0
    if marker in _PROGRESSIVE_SOF:
        coefficients = _coefficient_bytes(frame[6:6 + 3 * components], width, height)
    # IMREAD_COLOR: libjpeg converts grey, YCbCr and CMYK (and 12-bit samples)
    # to 8-bit BGR row by row.
    return _Header("JPEG", width, height, 3, 1, False, coefficients)


def _coefficient_bytes(specs: bytes, width: int, height: int) -> int:
    """One 2-byte coefficient per sample of each component, at its subsampled size.

    ``specs`` holds 3 bytes per component: id, sampling factors (H << 4 | V), table.
    The precision (8 or 12 bits) does not matter: a coefficient is 2 bytes either way.
    """
    factors = [(specs[i + 1] >> 4, specs[i + 1] & 0x0F) for i in range(0, len(specs) - 2, 3)]
    max_h = max((h for h, _ in factors), default=1) or 1
    max_v = max((v for _, v in factors), default=1) or 1
    return sum(2 * 64 * _blocks(width * h, max_h) * _blocks(height * v, max_v)
               for h, v in factors)


def _blocks(scaled: int, factor: int) -> int:
    """Samples of a component along one axis, in whole 8x8 blocks."""
    samples = _ceil_div(scaled, factor)
    return _ceil_div(samples, 8)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _check_complete(body: bytes, actual: str) -> None:
    # libjpeg returns a grey-padded picture for a truncated JPEG instead of an
    # error, so completeness is checked on the container: EOI / IEND present.
    if actual == "image/jpeg" and body.rfind(b"\xff\xd9") < body.find(b"\xff\xda"):
        raise InvalidImage("JPEG is truncated (no end-of-image marker after its scan)")
    if actual == "image/png" and b"IEND" not in body[-64:]:
        raise InvalidImage("PNG is truncated (no IEND chunk)")


def _check_size(header: _Header, max_pixels: int) -> None:
    width, height = header.width, header.height
    if width == 0 or height == 0:
        raise InvalidImage(f"image has zero size ({width}x{height})")
    if header.pixels > max_pixels:
        raise PayloadTooLarge(f"pixel count ({width}x{height})", header.pixels, max_pixels)
    limit = max_pixels * DECODE_BYTES_PER_PIXEL
    if header.decode_bytes() > limit:
        raise PayloadTooLarge(
            f"decode memory bytes for this {header.describe()}", header.decode_bytes(),
            limit, limit_name=f"max_pixels {max_pixels} x {DECODE_BYTES_PER_PIXEL} bytes a pixel")


def _composite_on_white(decoded: np.ndarray) -> np.ndarray:
    """BGRA (8 or 16-bit) -> BGR uint8, alpha composited on white, a strip at a time.

    Integers only: 16-bit samples keep their most significant byte (the way
    viewers show them), then ``(c*a + 255*(255-a)) // 255`` in uint16, which
    cannot overflow. Scratch memory is a strip's, never a float copy of the frame.
    """
    height, width = decoded.shape[:2]
    result = np.empty((height, width, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        strip = decoded[top:top + rows]
        strip = strip >> 8 if strip.dtype == np.uint16 else strip.astype(np.uint16)
        alpha = strip[:, :, 3:4]
        mixed = strip[:, :, :3] * alpha
        mixed += 255 * (255 - alpha)
        np.floor_divide(mixed, 255, out=result[top:top + rows], casting="unsafe")
    return result


def _to_bgr8(decoded: np.ndarray) -> np.ndarray:
    """What OpenCV decoded unchanged -> BGR uint8, without a full-frame temporary."""
    if decoded.ndim == 3 and decoded.shape[2] == 4:
        return _composite_on_white(decoded)
    if decoded.dtype == np.uint16:
        # Keep the most significant byte, the way viewers show 16-bit images.
        # Written straight into uint8: numpy shifts in small buffers.
        reduced = np.empty(decoded.shape, np.uint8)
        np.right_shift(decoded, 8, out=reduced, casting="unsafe")
        decoded = reduced
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2BGR)
    return decoded


def decode_image(body: bytes, content_type: str | None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 HxWx3, EXIF orientation applied.

    The bytes decide the format: a declared ``content_type`` must be one of
    ``SUPPORTED_CONTENT_TYPES``, but a PNG declared ``image/jpeg`` (or the
    reverse) is decoded as what it is. The Greengrass seed pages' Lambda code
    always declares ``image/jpeg``; ``mislabelled`` tells a caller to count it.
    """
    return cv2.cvtColor(_decode_bgr(body, content_type, max_pixels), cv2.COLOR_BGR2RGB)


def mislabelled(body: bytes, content_type: str | None) -> bool:
    """Whether a supported image was declared as the other supported format.

    Cheap (the first bytes only): for the replica's access line, which counts
    such requests; they are decoded as what they are.
    """
    declared = _declared(content_type)
    actual = sniff_format(body)
    return declared in SUPPORTED_CONTENT_TYPES and actual in SUPPORTED_CONTENT_TYPES \
        and declared != actual


def _declared(content_type: str | None) -> str | None:
    return (content_type or "").split(";")[0].strip().lower() or None


def _decode_bgr(body: bytes, content_type: str | None, max_pixels: int) -> np.ndarray:
    if not body:
        raise InvalidImage("the request body is empty")
    declared = _declared(content_type)
    if declared is not None and declared not in SUPPORTED_CONTENT_TYPES:
        raise UnsupportedMediaType(declared, SUPPORTED_CONTENT_TYPES)
    actual = sniff_format(body)
    if actual not in SUPPORTED_CONTENT_TYPES:
        if actual == "unknown":
            raise InvalidImage("the body is neither a JPEG nor a PNG")
        raise UnsupportedMediaType(f"{actual} image", SUPPORTED_CONTENT_TYPES)
    header = _png_header(body) if actual == "image/png" else _jpeg_header(body)
    _check_size(header, max_pixels)
    _check_complete(body, actual)
    decoded = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), _decode_flags(header))
    if decoded is None:
        raise InvalidImage(f"{actual} data is corrupt or truncated")
    return _to_bgr8(decoded)


def _decode_flags(header: _Header) -> int:
    if header.kind == "JPEG":
        return cv2.IMREAD_COLOR  # EXIF orientation applied
    if header.alpha:
        return cv2.IMREAD_UNCHANGED  # alpha kept, composited in _to_bgr8
    # 8-bit BGR straight from libpng; PNGs were never rotated by EXIF here.
    return cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
