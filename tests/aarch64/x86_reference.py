"""x86's answers on fixed inputs, for the emulated aarch64 suite to compare with.

Run on the x86_64 host by ``scripts/aarch64/test.sh`` (not a test module):

    python -m tests.aarch64.x86_reference --out build/aarch64-reference

For each demo model, as this host serves it (``build/models/``: the classifier
on MXNet, the detectors on DLR), it writes the input image (PNG, lossless, so
both machines decode the same pixels), the preprocessed batch (``.npy``), the
runtime's raw outputs on that batch and the connector's answer, all listed in
``reference.json``. A JPEG of the detection scene is written for the seed
pages' Lambda code, which sends ``image/jpeg``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REFERENCE_FILE = "reference.json"
SEED_IMAGE = "seed-test.jpg"
# Demo model -> (algorithm, its service in configs/demo.yaml).
DEMO_SERVICES = {
    "shapes-classifier": ("image-classification", "imageClassification"),
    "shapes-ssd": ("object-detection", "objectDetection"),
    "shapes-yolo3": ("object-detection", "objectDetectionYolo"),
}
# The scene `lis up` offers as its sample (serve_app/cli/up.py), and a held-out shape.
_SCENE = (2026, 0)
_SHAPE = (1000, 0)


def _images() -> dict[str, np.ndarray]:
    from modelkit.shapes import classification_sample, detection_sample

    scene = detection_sample(*_SCENE).image
    return {"shapes-classifier": classification_sample(*_SHAPE).image,
            "shapes-ssd": scene, "shapes-yolo3": scene}


def _encode(image: np.ndarray, extension: str) -> bytes:
    ok, data = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok, f"cv2 could not encode {extension}"
    return data.tobytes()


def _reference(model: str, image: np.ndarray, models: Path, out: Path) -> dict[str, Any]:
    from deployments.inference import InferencePipeline, PipelineOptions

    algorithm, service = DEMO_SERVICES[model]
    png = _encode(image, ".png")
    (out / f"{model}.png").write_bytes(png)
    pipeline = InferencePipeline(models / model, PipelineOptions(algorithm=algorithm))
    batch = pipeline.prepare(png, "image/png")
    np.save(out / f"{model}-input.npy", batch)
    outputs = pipeline.runtime.predict(batch)
    return {"algorithm": algorithm, "service": service, "image": f"{model}.png",
            "input": f"{model}-input.npy", "runtime": type(pipeline.runtime).__name__,
            "outputs": [o.tolist() for o in outputs],
            "answer": json.loads(pipeline.run_batch(batch).body)}


def write_reference(models: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    images = _images()
    entries = {name: _reference(name, images[name], models, out) for name in DEMO_SERVICES}
    (out / SEED_IMAGE).write_bytes(_encode(images["shapes-ssd"], ".jpg"))
    path = out / REFERENCE_FILE
    path.write_text(json.dumps({"machine": "x86_64", "models": entries}))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = write_reference(args.models, args.out)
    for name, entry in json.loads(path.read_text())["models"].items():
        print(f"{name}: {entry['runtime']} -> {json.dumps(entry['answer'])[:120]}")
    print(f"x86 reference: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
