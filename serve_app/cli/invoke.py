"""``lis invoke``: one image to one service, through the SDK client over HTTP."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from serve_app.client import InferenceClient
from serve_app.transport import HttpTransport
from vocabulary.errors import InvalidArgument
from vocabulary.names import CA_FILE_ENV, DEFAULT_ENDPOINT, ENDPOINT_ENV, TOKEN_ENV

_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", help="the LocalInferenceServiceName")
    parser.add_argument("image", type=Path, help="a JPEG or PNG file")
    parser.add_argument("--algo", help="AlgoType (default: as the service reports it)")
    parser.add_argument("--draw", type=Path, metavar="OUT.png",
                        help="write the image with the boxes or top classes drawn on it")
    parser.add_argument("--endpoint", default=os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT))


def run(args: argparse.Namespace) -> int:
    from serve_app.cli.status import fetch_services

    services = {s["name"]: s for s in fetch_services(args.endpoint)}
    service = services.get(args.service, {})
    algo = args.algo or service.get("algorithm") or "image-classification"
    content_type = _CONTENT_TYPES.get(args.image.suffix.lower())
    if content_type is None:
        raise InvalidArgument("IMAGE", str(args.image), "a .jpg, .jpeg or .png file")
    body = args.image.read_bytes()
    transport = HttpTransport(args.endpoint, os.environ.get(TOKEN_ENV) or None,
                               os.environ.get(CA_FILE_ENV) or None)
    response = InferenceClient(transport).invoke_inference_service(
        AlgoType=algo, ServiceName=args.service, ContentType=content_type, Body=body)
    text = response["Body"].read().decode()
    print(text)
    if args.draw:
        from serve_app.cli._draw import draw_prediction

        draw_prediction(body, algo, text, service.get("labels") or [], args.draw)
        print(f"drawn: {args.draw}")
    return 0
