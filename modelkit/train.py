"""Train the demo models from scratch on generated shapes.

``python -m modelkit.train classifier|ssd|yolo3|all [--minutes M] [--steps N] [--out models]``

Every run is seeded: the weights come from ``mx.random.seed(recipe.seed)`` and
batch ``i`` is always samples ``i*batch .. (i+1)*batch-1`` of the generator
stream ``TRAIN_SEED``, so a run reproduces the committed models (up to the
float noise of multi-threaded CPU kernels). ``--minutes`` caps the wall
time: a run stopped by it trains fewer steps and says so.

Images go through the serving path's own code: encoded by the generator,
decoded with ``deployments.imaging.decode_image``, preprocessed with
``deployments.imaging.preprocess`` and the model's published spec. The final
evaluation uses the held-out stream ``HELD_OUT_SEED``, which training never
reads. ``modelkit.evaluate`` repeats it through the served artifacts.
"""

from __future__ import annotations

import os

# Two cores, shared: fix MXNet's pools before it loads (callers may override).
for _name in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from deployments.imaging import (  # noqa: E402
    CLASSIFIER_PREPROCESSING,
    DETECTOR_PREPROCESSING,
    Preprocessing,
    decode_image,
    preprocess,
)
from deployments.labels import write_labels  # noqa: E402
from modelkit import nets  # noqa: E402
from modelkit.evaluate import (  # noqa: E402
    HELD_OUT_SEED,
    accuracy,
    mean_average_precision,
    valid_detections,
)
from modelkit.shapes import (  # noqa: E402
    SHAPE_CLASSES,
    Sample,
    classification_sample,
    detection_sample,
)
from vocabulary.names import LABELS_FILE, PREPROCESSING_FILE  # noqa: E402

__all__ = [
    "HELD_OUT_SEED",
    "MODEL_NAMES",
    "RECIPES",
    "TRAIN_SEED",
    "Recipe",
    "calibrate_input_statistics",
    "load_backbone_from_ssd",
    "main",
    "train",
]

TRAIN_SEED = 1
# Held-out images come from another generator stream (evaluate.HELD_OUT_SEED).
HELD_OUT_COUNT = 300
DEFAULT_OUT = Path("models")
MODEL_NAMES = ("shapes-classifier", "shapes-ssd", "shapes-yolo3")


@dataclass(frozen=True)
class Recipe:
    """How one model is trained."""

    kind: str            # "classifier", "ssd" or "yolo3"
    name: str            # the model folder under models/
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float = 1e-4
    seed: int = 42
    # A trained model (folder under the models dir) whose backbone starts this one.
    backbone_from: str | None = None

    @property
    def command(self) -> str:
        default = RECIPES[self.kind].steps
        return f"python -m modelkit.train {self.kind}" + (
            f" --steps {self.steps}" if self.steps != default else "")


RECIPES: dict[str, Recipe] = {
    "classifier": Recipe("classifier", "shapes-classifier", steps=1200, batch_size=16,
                         learning_rate=3e-3, warmup_steps=50),
    "ssd": Recipe("ssd", "shapes-ssd", steps=1500, batch_size=16,
                  learning_rate=2e-3, warmup_steps=100),
    # YOLOv3 matches each shape to one anchor only, so from scratch it learns
    # classes far slower than SSD (measured: mAP 0.18 after 800 steps); its
    # backbone, identical in structure, starts from the trained SSD's. At 1500
    # steps it still scored triangles low (recall 0.69 at a 0.3 cut, mAP 0.876);
    # 2000 steps (25.4 min here) lift triangle recall to 0.81 and mAP to 0.930.
    "yolo3": Recipe("yolo3", "shapes-yolo3", steps=2000, batch_size=16,
                    learning_rate=1e-3, warmup_steps=100, backbone_from="shapes-ssd"),
}


# --- data ------------------------------------------------------------------------

def model_input(sample: Sample, spec: Preprocessing) -> np.ndarray:
    """A generated image as the served model sees it: decoded, then preprocessed."""
    return preprocess(decode_image(sample.encoded, sample.content_type), spec)


def _classifier_batch(start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` fresh images, each twice: as generated and rotated/flipped.

    A right-angle rotation or a flip never changes a shape's class, and it is
    free, where generating an image is not: the classifier sees twice the
    examples for the same generator time.
    """
    samples = [classification_sample(TRAIN_SEED, i) for i in range(start, start + size)]
    images = np.concatenate([model_input(s, CLASSIFIER_PREPROCESSING) for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.float32)
    rng = np.random.default_rng([TRAIN_SEED, start])
    turned = np.stack([_dihedral(image, int(rng.integers(1, 8))) for image in images])
    return np.concatenate([images, turned]), np.concatenate([labels, labels])


def _dihedral(image: np.ndarray, which: int) -> np.ndarray:
    """One of the 8 symmetries of the square, on a CHW array (0 is the identity)."""
    turned = np.rot90(image, which % 4, axes=(1, 2))
    return np.ascontiguousarray(turned[:, :, ::-1] if which >= 4 else turned)


def _detector_batch(start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images plus labels padded with -1 rows: (B, M, 5) of xmin, ymin, xmax, ymax, class."""
    samples = [detection_sample(TRAIN_SEED, i) for i in range(start, start + size)]
    images = np.concatenate([model_input(s, DETECTOR_PREPROCESSING) for s in samples])
    labels = np.full((size, max(len(s.shapes) for s in samples), 5), -1.0, dtype=np.float32)
    for row, sample in enumerate(samples):
        for col, shape in enumerate(sample.shapes):
            labels[row, col] = (*shape.box, shape.class_id)
    return images, labels


def _batches(make: Callable[[int, int], Any], steps: int, size: int) -> Iterator[Any]:
    """Batches 0..steps-1, the next one generated in a thread while this one trains."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make, 0, size)
        for step in range(steps):
            batch = pending.result()
            if step + 1 < steps:
                pending = pool.submit(make, (step + 1) * size, size)
            yield batch


# --- optimisation ----------------------------------------------------------------

def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to 2 % of the peak."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(recipe.steps - recipe.warmup_steps, 1)
    return recipe.learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def _trainer(net: gluon.Block, recipe: Recipe) -> gluon.Trainer:
    return gluon.Trainer(net.collect_params(), "adam",
                         {"learning_rate": recipe.learning_rate, "wd": recipe.weight_decay})


def _seed(recipe: Recipe) -> None:
    mx.random.seed(recipe.seed)
    np.random.seed(recipe.seed)


class _Clock:
    """Stops training at a wall-time budget, if one is given."""

    def __init__(self, minutes: float | None) -> None:
        self.start = time.monotonic()
        self.deadline = None if minutes is None else self.start + minutes * 60

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60


def _loop(recipe: Recipe, batches: Iterator[Any], clock: _Clock,
          step_fn: Callable[[Any, float], float]) -> int:
    """Run ``step_fn(batch, lr) -> loss`` over the batches; return the steps done."""
    bar = tqdm(batches, total=recipe.steps, desc=f"train {recipe.name}", unit="step")
    smoothed, done = None, 0
    for step, batch in enumerate(bar):
        loss = step_fn(batch, learning_rate(recipe, step))
        smoothed = loss if smoothed is None else 0.95 * smoothed + 0.05 * loss
        done = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{smoothed:.3f}", lr=f"{learning_rate(recipe, step):.1e}")
        if clock.expired():
            bar.close()
            print(f"stopped by --minutes after {done}/{recipe.steps} steps", file=sys.stderr)
            break
    return done


# --- the classifier --------------------------------------------------------------

def _train_classifier(recipe: Recipe, clock: _Clock, out: Path) -> tuple[gluon.HybridBlock, int]:
    net = nets.shape_classifier()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize(static_alloc=True)
    trainer = _trainer(net, recipe)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step(batch: tuple[np.ndarray, np.ndarray], lr: float) -> float:
        images, labels = (nd.array(a) for a in batch)  # 2 x batch_size (see _classifier_batch)
        trainer.set_learning_rate(lr)
        with autograd.record():
            loss = loss_fn(net(images), labels)
        loss.backward()
        trainer.step(images.shape[0])
        return float(loss.mean().asscalar())

    done = _loop(recipe, _batches(_classifier_batch, recipe.steps, recipe.batch_size),
                 clock, step)
    calibrate_input_statistics(net, start=recipe.steps * recipe.batch_size)
    return net, done


def calibrate_input_statistics(net: gluon.HybridBlock, start: int, count: int = 128) -> None:
    """Set the classifier's input BatchNorm statistics from generated images.

    MXNet updates a BatchNorm's moving statistics in its backward pass. The
    first BatchNorm normalises the raw input and needs no gradient, so its
    backward never runs and its statistics would stay at mean 0, variance 1
    (measured: 0.91 held-out accuracy instead of 0.99). The per-channel pixel
    mean and variance of ``count`` unused training-stream images (and their
    rotated copies) are what it saw in training.
    """
    images, _ = _classifier_batch(start, count)
    data_norm = net.features[0]
    data_norm.running_mean.set_data(nd.array(images.mean(axis=(0, 2, 3))))
    data_norm.running_var.set_data(nd.array(images.var(axis=(0, 2, 3))))


def _classifier_metrics(net: gluon.HybridBlock, count: int) -> dict[str, float]:
    predicted, truth = [], []
    for index in tqdm(range(count), desc="held-out accuracy", unit="img"):
        sample = classification_sample(HELD_OUT_SEED, index)
        logits = net(nd.array(model_input(sample, CLASSIFIER_PREPROCESSING)))
        predicted.append(int(logits.argmax(axis=1).asscalar()))
        truth.append(sample.label)
    return {"accuracy": accuracy(predicted, truth)}


# --- the detectors ---------------------------------------------------------------

def _fake_input() -> nd.NDArray:
    return nd.zeros((1, 3, DETECTOR_PREPROCESSING.height, DETECTOR_PREPROCESSING.width))


def _train_ssd(recipe: Recipe, clock: _Clock, out: Path) -> tuple[gluon.HybridBlock, int]:
    from gluoncv.loss import SSDMultiBoxLoss
    from gluoncv.model_zoo.ssd.target import SSDTargetGenerator

    net = nets.shape_ssd()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    with autograd.train_mode():
        _, _, anchors = net(_fake_input())
    targets = SSDTargetGenerator(iou_thresh=0.5, stds=(0.1, 0.1, 0.2, 0.2),
                                  negative_mining_ratio=-1)  # the loss mines negatives
    net.hybridize(static_alloc=True)
    trainer = _trainer(net, recipe)
    loss_fn = SSDMultiBoxLoss()

    def encode(labels: np.ndarray) -> tuple[nd.NDArray, nd.NDArray]:
        cls_t, box_t = [], []
        for row in labels:
            row = row[row[:, 4] >= 0]
            c, b, _ = targets(anchors, None, nd.array(row[None, :, :4]), nd.array(row[None, :, 4:5]))
            cls_t.append(c)
            box_t.append(b)
        return nd.concat(*cls_t, dim=0), nd.concat(*box_t, dim=0)

    def step(batch: tuple[np.ndarray, np.ndarray], lr: float) -> float:
        images, labels = batch
        cls_targets, box_targets = encode(labels)
        trainer.set_learning_rate(lr)
        with autograd.record():
            cls_preds, box_preds, _ = net(nd.array(images))
            total, _, _ = loss_fn(cls_preds, box_preds, cls_targets, box_targets)
            autograd.backward(total)
        trainer.step(1)
        return float(sum(t.mean().asscalar() for t in total) / len(total))

    done = _loop(recipe, _batches(_detector_batch, recipe.steps, recipe.batch_size), clock, step)
    return net, done


_SSD_BACKBONE_PARAM = re.compile(r"tinyfeatures\d+_(conv|batchnorm)(\d+)_(\w+)$")


def load_backbone_from_ssd(net: gluon.HybridBlock, ssd_params: Path) -> int:
    """Copy an exported shapes-SSD's ``TinyFeatures`` weights into a YOLOv3's stages.

    Layer ``k`` of ``TinyFeatures`` is layer ``k`` of stage 0 for the first
    five layers, then layer ``k - 5`` of stage 1 (see ``nets.shape_yolo3``).
    Returns the number of arrays copied.
    """
    if not ssd_params.is_file():
        raise FileNotFoundError(f"{ssd_params} is missing: train the SSD first "
                                "(python -m modelkit.train ssd)")
    stage_params = {name.split("_stage", 1)[1]: p for name, p in net.collect_params().items()
                    if "_stage" in name}
    copied = 0
    for name, array in nd.load(str(ssd_params)).items():
        match = _SSD_BACKBONE_PARAM.search(name)
        if not match:
            continue
        kind, layer, what = match.group(1), int(match.group(2)), match.group(3)
        stage, index = (0, layer) if layer < 5 else (1, layer - 5)
        target = stage_params.get(f"{stage}_{kind}{index}_{what}")
        if target is not None:
            target.set_data(array)
            copied += 1
    return copied


def _train_yolo3(recipe: Recipe, clock: _Clock, out: Path) -> tuple[gluon.HybridBlock, int]:
    from gluoncv.model_zoo.yolo.yolo_target import YOLOV3PrefetchTargetGenerator

    net = nets.shape_yolo3()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    fake = _fake_input()
    with autograd.train_mode():
        _, anchors, offsets, feat_maps, _, _, _, _ = net(fake)
    if recipe.backbone_from:
        source = Path(out) / recipe.backbone_from / f"{recipe.backbone_from}-0000.params"
        copied = load_backbone_from_ssd(net, source)
        assert copied == 35, f"copied {copied} backbone arrays from {source}, expected 35"
    targets = YOLOV3PrefetchTargetGenerator(num_class=len(SHAPE_CLASSES))
    net.hybridize(static_alloc=True)
    trainer = _trainer(net, recipe)

    def step(batch: tuple[np.ndarray, np.ndarray], lr: float) -> float:
        images, labels = batch
        gt_boxes, gt_ids = nd.array(labels[:, :, :4]), nd.array(labels[:, :, 4:5])
        encoded = targets(fake, feat_maps, anchors, offsets, gt_boxes, gt_ids)
        trainer.set_learning_rate(lr)
        with autograd.record():
            losses = net(nd.array(images), gt_boxes, *encoded)
            total = sum(losses)
            autograd.backward(total)
        trainer.step(images.shape[0])
        return float(total.mean().asscalar())

    done = _loop(recipe, _batches(_detector_batch, recipe.steps, recipe.batch_size), clock, step)
    return net, done


def _detector_metrics(net: gluon.HybridBlock, count: int) -> dict[str, float]:
    net.hybridize(static_alloc=True)  # drops the training graph (YOLOv3's has 7 inputs)
    predictions, truths = [], []
    for index in tqdm(range(count), desc="held-out mAP", unit="img"):
        sample = detection_sample(HELD_OUT_SEED, index)
        ids, scores, boxes = net(nd.array(model_input(sample, DETECTOR_PREPROCESSING)))
        predictions.append(valid_detections(ids.asnumpy(), scores.asnumpy(), boxes.asnumpy()))
        truths.append(sample.shapes)
    per_class, mean = mean_average_precision(predictions, truths)
    return {"mAP@0.5": mean, **{f"AP {name}": ap for name, ap in per_class.items()}}


# --- saving ----------------------------------------------------------------------

def _save_classifier(net: gluon.HybridBlock, folder: Path) -> None:
    from deployments.sagemaker_ic import write_classifier_artifact

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.params"):
        old.unlink()
    write_classifier_artifact(net, folder, labels=SHAPE_CLASSES,
                              preprocessing=CLASSIFIER_PREPROCESSING)


def _save_detector(net: gluon.HybridBlock, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    net.hybridize(static_alloc=True)
    net(_fake_input())
    net.export(str(folder / name), epoch=0)
    write_labels(folder / LABELS_FILE, SHAPE_CLASSES)
    (folder / PREPROCESSING_FILE).write_text(json.dumps(DETECTOR_PREPROCESSING.to_dict(), indent=2))


def _readme(recipe: Recipe, spec: Preprocessing, metrics: dict[str, float],
            steps_done: int, minutes: float) -> str:
    layout = ("SageMaker image-classification layout (`image-classification-symbol.json`, "
              "`image-classification-0000.params`, `model-shapes.json`); outputs softmax "
              "probabilities for the classes in `labels.txt`."
              if recipe.kind == "classifier" else
              f"MXNet checkpoint (`{recipe.name}-symbol.json`, `{recipe.name}-0000.params`) of a "
              f"GluonCV {'SSD' if recipe.kind == 'ssd' else 'YOLOv3'} with a small custom backbone; "
              "outputs class ids, scores and boxes (xmin, ymin, xmax, ymax) in input pixels. "
              "`lis models build` compiles it to a Neo/DLR artifact.")
    normalisation = ("raw 0-255 values (no scaling, no mean/std)" if spec.scale == 1.0 else
                     f"scaled by 1/255, minus mean {spec.mean}, divided by std {spec.std}")
    results = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    copies = " plus a rotated or flipped copy of each" if recipe.kind == "classifier" else ""
    start = (f"; the backbone starts from the trained `{recipe.backbone_from}`'s"
             if recipe.backbone_from else "")
    return (f"# {recipe.name}\n\n{layout}\n\n"
            f"## Preprocessing (`preprocessing.json`)\n\n"
            f"RGB, resized to {spec.width}x{spec.height} ({spec.interpolation}), CHW float32, "
            f"{normalisation}. Serving, training and evaluation all use "
            f"`deployments.imaging.preprocess` with this spec.\n\n"
            f"## Training\n\n`{recipe.command}` (model seed {recipe.seed}, data stream seed "
            f"{TRAIN_SEED}, {steps_done} steps of {recipe.batch_size} generated images"
            f"{copies}, "
            f"Adam, peak learning rate {recipe.learning_rate}, {minutes:.1f} min on this CPU)"
            f"{start}.\n\n"
            f"Held-out check in MXNet ({HELD_OUT_COUNT} images of stream {HELD_OUT_SEED}): "
            f"{results}. `make eval-models` measures the served artifacts.\n")


# --- entry points ----------------------------------------------------------------

_TRAINERS = {"classifier": _train_classifier, "ssd": _train_ssd, "yolo3": _train_yolo3}


def train(kind: str, out: Path = DEFAULT_OUT, minutes: float | None = None,
          steps: int | None = None) -> dict[str, float]:
    """Train one model, save it under ``out/<name>``, return its held-out metrics."""
    recipe = RECIPES[kind]
    if steps is not None:
        recipe = Recipe(**{**recipe.__dict__, "steps": steps})
    _seed(recipe)
    clock = _Clock(minutes)
    net, done = _TRAINERS[kind](recipe, clock, Path(out))
    minutes_taken = clock.minutes
    folder = Path(out) / recipe.name
    if kind == "classifier":
        metrics = _classifier_metrics(net, HELD_OUT_COUNT)
        _save_classifier(net, folder)
        spec = CLASSIFIER_PREPROCESSING
    else:
        metrics = _detector_metrics(net, HELD_OUT_COUNT)
        _save_detector(net, folder, recipe.name)
        spec = DETECTOR_PREPROCESSING
    (folder / "README.md").write_text(_readme(recipe, spec, metrics, done, minutes_taken))
    print(f"{recipe.name}: {done} steps in {minutes_taken:.1f} min; "
          + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f"; saved to {folder}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelkit.train", description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=(*RECIPES, "all"))
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop each model's training after this many minutes")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="models folder")
    args = parser.parse_args(argv)
    for kind in RECIPES if args.model == "all" else (args.model,):
        train(kind, args.out, args.minutes, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
