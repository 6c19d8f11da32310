"""Measure the demo models on held-out generated images, through the served artifacts.

``python -m modelkit.evaluate`` (what ``make eval-models`` runs) builds the
demo artifacts if needed (``modelkit.demo.demo_models``), then:

- the classifier: accuracy of the SageMaker IC artifact run by
  ``MXNetClassifierRuntime``;
- the SSD and the YOLOv3: VOC-style mAP@0.5 (all-point interpolated average
  precision, averaged over the three classes) of the compiled Neo/DLR
  artifacts run by ``DLRRuntime``.

Each model sees ``--count`` (default 300) images of the held-out generator
stream, which training never reads, decoded and preprocessed exactly as lis
serves them. The report, a Markdown table with the machine it ran on, is
printed and written to ``build/eval-report.md``.

Each runtime runs in its own child process: DLR and MXNet are never loaded
into the same interpreter, and the CPU threads each uses stay predictable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deployments.imaging import (
    Preprocessing,
    decode_image,
    preprocess,
    read_preprocessing,
)
from modelkit.shapes import (
    SHAPE_CLASSES,
    Sample,
    Shape,
    box_iou,
    classification_sample,
    detection_sample,
)
from vocabulary.names import PREPROCESSING_FILE

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_REPORT",
    "HELD_OUT_SEED",
    "IOU_THRESHOLD",
    "MIN_SCORE",
    "TARGETS",
    "Detection",
    "accuracy",
    "average_precision",
    "evaluate_classifier",
    "evaluate_detector",
    "evaluate_model",
    "machine_info",
    "main",
    "mean_average_precision",
    "recall",
    "render_report",
    "valid_detections",
]

DEFAULT_REPORT = Path("build/eval-report.md")
DEFAULT_COUNT = 300
# The generator stream evaluation reads; training reads another (modelkit.train).
HELD_OUT_SEED = 1000
IOU_THRESHOLD = 0.5
# A detection counts as "found" from this score up: the threshold the Greengrass
# v2 DLR object-detection component publishes at.
MIN_SCORE = 0.3
# What the demo models must reach (issue 3).
TARGETS = {"shapes-classifier": 0.97, "shapes-ssd": 0.85, "shapes-yolo3": 0.85}
# class_id, score, (xmin, ymin, xmax, ymax) in pixels
Detection = tuple[int, float, tuple[float, float, float, float]]


# --- metrics ---------------------------------------------------------------------

def accuracy(predicted: Sequence[int], truth: Sequence[int]) -> float:
    assert len(predicted) == len(truth) > 0
    return float(np.mean(np.asarray(predicted) == np.asarray(truth)))


def valid_detections(ids: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> list[Detection]:
    """A GluonCV detector's (1,N,1), (1,N,1), (1,N,4) outputs, padding rows (id -1) dropped."""
    ids, scores, boxes = ids.reshape(-1), scores.reshape(-1), boxes.reshape(-1, 4)
    return [(int(c), float(s), tuple(float(v) for v in b))  # type: ignore[misc]
            for c, s, b in zip(ids, scores, boxes) if c >= 0]


def average_precision(hits: Sequence[tuple[float, bool]], positives: int) -> float:
    """VOC (2010+) average precision: area under the interpolated precision/recall curve."""
    if positives == 0:
        return float("nan")
    if not hits:
        return 0.0
    ordered = sorted(hits, key=lambda hit: -hit[0])
    true_pos = np.cumsum([1.0 if hit else 0.0 for _, hit in ordered])
    precision = true_pos / np.arange(1, len(ordered) + 1)
    recall = true_pos / positives
    # Make precision monotone (the envelope), then integrate over recall steps.
    envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope[:-1]))


def _match(detections: Sequence[Detection], truths: Sequence[Shape],
           class_id: int) -> list[tuple[float, bool]]:
    """Greedy by score: a detection hits the best-overlapping unclaimed shape (IoU >= 0.5)."""
    boxes = [s.box for s in truths if s.class_id == class_id]
    claimed = [False] * len(boxes)
    hits = []
    for _, score, box in sorted((d for d in detections if d[0] == class_id), key=lambda d: -d[1]):
        overlaps = [box_iou(box, gt) for gt in boxes]
        best = int(np.argmax(overlaps)) if overlaps else -1
        hit = best >= 0 and overlaps[best] >= IOU_THRESHOLD and not claimed[best]
        if hit:
            claimed[best] = True
        hits.append((score, hit))
    return hits


def mean_average_precision(predictions: Sequence[Sequence[Detection]],
                           truths: Sequence[Sequence[Shape]]) -> tuple[dict[str, float], float]:
    """Per-class AP at IoU 0.5 and their mean, over a set of images."""
    per_class = {}
    for class_id, name in enumerate(SHAPE_CLASSES):
        hits = [hit for dets, gts in zip(predictions, truths) for hit in _match(dets, gts, class_id)]
        positives = sum(1 for gts in truths for s in gts if s.class_id == class_id)
        per_class[name] = average_precision(hits, positives)
    return per_class, float(np.nanmean(list(per_class.values())))


def recall(predictions: Sequence[Sequence[Detection]], truths: Sequence[Sequence[Shape]],
           min_score: float = MIN_SCORE) -> float:
    """Share of shapes found: a detection scoring >= ``min_score``, right class, IoU >= 0.5."""
    found = total = 0
    for dets, gts in zip(predictions, truths):
        confident = [d for d in dets if d[1] >= min_score]
        for shape in gts:
            total += 1
            found += any(d[0] == shape.class_id and box_iou(d[2], shape.box) >= IOU_THRESHOLD
                         for d in confident)
    return found / max(total, 1)


# --- running the served artifacts ------------------------------------------------

def _runtime(kind: str, artifact: Path, threads: int) -> Any:
    if kind == "classifier":
        from deployments.mxnet_runtime import MXNetClassifierRuntime
        runtime = MXNetClassifierRuntime(artifact, threads=threads)
    else:
        from deployments.dlr_runtime import DLRRuntime
        runtime = DLRRuntime(artifact, threads=threads)
    runtime.load()
    return runtime


def _spec(artifact: Path, override: Preprocessing | None) -> Preprocessing:
    if override is not None:
        return override
    spec = read_preprocessing(artifact)
    assert spec is not None, f"{artifact} has no {PREPROCESSING_FILE}"
    return spec


def _samples(kind: str, count: int, seed: int, progress: bool) -> Iterator[Sample]:
    make = classification_sample if kind == "classifier" else detection_sample
    indices: Iterable[int] = range(count)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=f"held-out {kind}", unit="img", file=sys.stderr)
    for index in indices:
        yield make(seed, index)


def evaluate_classifier(artifact: Path, count: int = DEFAULT_COUNT, *,
                        preprocessing: Preprocessing | None = None, seed: int = HELD_OUT_SEED,
                        threads: int = 2, progress: bool = False) -> dict[str, float]:
    """Accuracy of a SageMaker IC artifact (MXNet) on held-out images, served as lis serves."""
    runtime, spec = _runtime("classifier", artifact, threads), _spec(artifact, preprocessing)
    predicted, truth, elapsed = [], [], 0.0
    for sample in _samples("classifier", count, seed, progress):
        batch = preprocess(decode_image(sample.encoded, sample.content_type), spec)
        started = time.perf_counter()
        probabilities = runtime.predict(batch)[0]
        elapsed += time.perf_counter() - started
        predicted.append(int(np.argmax(probabilities)))
        truth.append(sample.label)
    return {"accuracy": accuracy(predicted, truth), "ms_per_image": 1000 * elapsed / count}


def evaluate_detector(artifact: Path, count: int = DEFAULT_COUNT, *,
                      preprocessing: Preprocessing | None = None, seed: int = HELD_OUT_SEED,
                      threads: int = 2, progress: bool = False) -> dict[str, float]:
    """VOC mAP@0.5 (and recall at ``MIN_SCORE``) of a compiled detector (DLR) on held-out scenes."""
    runtime, spec = _runtime("detector", artifact, threads), _spec(artifact, preprocessing)
    predictions, truths, elapsed = [], [], 0.0
    for sample in _samples("detector", count, seed, progress):
        height, width = sample.image.shape[:2]
        batch = preprocess(decode_image(sample.encoded, sample.content_type), spec)
        started = time.perf_counter()
        ids, scores, boxes = runtime.predict(batch)
        elapsed += time.perf_counter() - started
        # Boxes come back in model-input pixels; the labels are in image pixels.
        scale = np.array([width / spec.width, height / spec.height] * 2, dtype=np.float32)
        predictions.append(valid_detections(ids, scores, boxes * scale))
        truths.append(sample.shapes)
    per_class, mean = mean_average_precision(predictions, truths)
    return {"mAP@0.5": mean, **{f"AP {name}": ap for name, ap in per_class.items()},
            "recall": recall(predictions, truths), "ms_per_image": 1000 * elapsed / count}


def evaluate_model(name: str, artifact: Path, count: int = DEFAULT_COUNT,
                   progress: bool = False) -> dict[str, float]:
    """The metrics of one demo model (``shapes-classifier`` or a detector) on held-out data."""
    if name == "shapes-classifier":
        return evaluate_classifier(artifact, count, progress=progress)
    return evaluate_detector(artifact, count, progress=progress)


# --- the report ------------------------------------------------------------------

def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "machine": platform.machine(),
            "python": platform.python_version(), "os": platform.platform(terse=True)}


_RUNTIME_NAMES = {"shapes-classifier": "SageMaker IC on MXNet (MXNetClassifierRuntime)",
                  "shapes-ssd": "Neo/DLR compiled (DLRRuntime)",
                  "shapes-yolo3": "Neo/DLR compiled (DLRRuntime)"}


def _row(name: str, metrics: dict[str, float], count: int) -> str:
    key = "accuracy" if name == "shapes-classifier" else "mAP@0.5"
    value, target = metrics[key], TARGETS[name]
    details = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                        if k not in (key, "ms_per_image"))
    return (f"| {name} | {_RUNTIME_NAMES[name]} | {count} | {key} | **{value:.4f}** | "
            f"≥ {target} | {'yes' if value >= target else 'NO'} | "
            f"{metrics['ms_per_image']:.1f} | {details or '-'} |")


def render_report(results: dict[str, dict[str, float]], count: int) -> str:
    info = machine_info()
    lines = [
        "# Demo model evaluation",
        "",
        f"Held-out generated images (generator seed {HELD_OUT_SEED}, never used in training), "
        "decoded and preprocessed exactly as lis serves them. mAP is VOC-style "
        "(all-point interpolated AP at IoU 0.5, mean over circle, square, triangle); "
        f"recall is the share of shapes with a right-class detection at IoU >= 0.5 scoring "
        f">= {MIN_SCORE}.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['machine']}), "
        f"Python {info['python']}, {info['os']}; {time.strftime('%Y-%m-%d')}. "
        "Model time is the runtime's predict call alone (2 threads), on a shared machine.",
        "",
        "| model | artifact run through | images | metric | value | target | met | "
        "model ms/image | details |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, metrics, count) for name, metrics in results.items()]
    return "\n".join(lines) + "\n"


def _evaluate_in_child(name: str, artifact: Path, count: int) -> dict[str, float]:
    """One model per process: DLR and MXNet never share an interpreter here."""
    command = [sys.executable, "-m", "modelkit.evaluate", "--count", str(count),
               "--child", name, str(artifact)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelkit.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="images per model")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="Markdown output")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "ARTIFACT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, artifact = args.child
        print(json.dumps(evaluate_model(name, Path(artifact), args.count, progress=True)))
        return 0
    from modelkit.demo import demo_models

    artifacts = demo_models()
    results = {name: _evaluate_in_child(name, path, args.count) for name, path in artifacts.items()}
    report = render_report(results, args.count)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    print(report)
    print(f"written to {args.report}")
    met = all(results[n]["accuracy" if n == "shapes-classifier" else "mAP@0.5"] >= TARGETS[n]
              for n in results)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
