"""Request bodies that are not encoded images: raw pixels and preprocessed tensors.

The Open Inference Protocol (``serve_app.open_inference``) lets a client send
an image as raw ``UINT8`` pixels or as the model's own ``FP32`` input; the
ingress passes either to the replica as the body of an ordinary request, with
one of these content types saying what the bytes are and their shape:

    application/x-lis-rgb8; shape=H,W,3        H*W*3 bytes, RGB, row-major
    application/x-lis-float32; shape=N,C,H,W   N*C*H*W little-endian float32s

The replica (``deployments.imaging``) checks the byte count against the shape,
and a tensor's shape against its model's input, before anything runs.
"""

from __future__ import annotations

import math

from vocabulary.errors import InvalidArgument

__all__ = [
    "RGB8_CONTENT_TYPE",
    "TENSOR_CONTENT_TYPE",
    "array_content_type",
    "array_shape",
    "expected_bytes",
]

RGB8_CONTENT_TYPE = "application/x-lis-rgb8"
TENSOR_CONTENT_TYPE = "application/x-lis-float32"
_ITEM_BYTES = {RGB8_CONTENT_TYPE: 1, TENSOR_CONTENT_TYPE: 4}


def array_content_type(kind: str, shape: tuple[int, ...]) -> str:
    """``kind; shape=...`` for a body of raw pixels or a tensor."""
    return f"{kind}; shape={','.join(str(d) for d in shape)}"


def array_shape(content_type: str) -> tuple[int, ...]:
    """The ``shape=`` parameter of an array content type."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "shape":
            try:
                shape = tuple(int(d) for d in value.strip().split(","))
            except ValueError:
                break
            if shape and min(shape) > 0:
                return shape
            break
    raise InvalidArgument("content type", content_type, "a shape=D1,D2,... of positive sizes")


def expected_bytes(kind: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * _ITEM_BYTES[kind]
