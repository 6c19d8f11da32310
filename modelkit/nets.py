"""The demo models: a small ResNet-style classifier and two small detectors.

The shapes task is easy, so every network here is sized for a 2-core CPU:
speed of training and inference matters more than capacity.

- ``shape_classifier()``: 224x224 input, raw 0-255 RGB (the SageMaker image
  classification convention), a 4x4/4 patchifying stem, three residual
  stages, average plus max global pooling, logits. A data BatchNorm first (as
  SageMaker's ResNet has) makes raw pixels usable; ``modelkit.train`` sets its
  statistics explicitly, since MXNet never updates them (no backward runs there).
- ``shape_ssd()``: GluonCV ``SSD`` at 512x512 on ``TinyFeatures`` (stride 16,
  32 and 64 maps), square anchors sized for 40-220 px objects.
- ``shape_yolo3()``: GluonCV ``YOLOV3`` at 512x512 on the first seven layers
  of ``TinyFeatures`` split in two stages (stride 16 and 32), square anchors.

Nothing here downloads weights (``pretrained=False``); the YOLOv3 recipe starts
its backbone from the trained SSD's (``modelkit.train``).
"""

from __future__ import annotations

from collections.abc import Sequence

from mxnet.gluon import HybridBlock, nn

from modelkit.shapes import SHAPE_CLASSES

__all__ = [
    "DETECTOR_SIZE",
    "SSD_ANCHOR_SIZES",
    "YOLO_ANCHORS",
    "ShapeClassifier",
    "TinyFeatures",
    "shape_classifier",
    "shape_ssd",
    "shape_yolo3",
]

DETECTOR_SIZE = 512
# SSD: layer i gets anchors of size s_i and sqrt(s_i * s_i+1), ratio 1 only
# (a circle's, a square's and a triangle's box are all close to square).
SSD_ANCHOR_SIZES = (40, 72, 130, 235)
SSD_STEPS = (16, 32, 64)
# YOLOv3: (w, h) pairs per output, shallow (stride 16) first.
YOLO_ANCHORS = ((40, 40, 56, 56, 78, 78), (110, 110, 155, 155, 215, 215))
YOLO_STRIDES = (16, 32)


def _conv(channels: int, stride: int = 1, kernel: int = 3) -> nn.HybridSequential:
    # A kernel as large as its stride is a patchifying stem: no padding.
    pad = 0 if kernel == stride else kernel // 2
    block = nn.HybridSequential(prefix="")
    block.add(nn.Conv2D(channels, kernel, stride, pad, use_bias=False),
              nn.BatchNorm(), nn.Activation("relu"))
    return block


class _Residual(HybridBlock):
    """A ResNet basic block (two 3x3 convolutions) with a projected shortcut."""

    def __init__(self, channels: int, stride: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(nn.Conv2D(channels, 3, stride, 1, use_bias=False), nn.BatchNorm(),
                          nn.Activation("relu"),
                          nn.Conv2D(channels, 3, 1, 1, use_bias=False), nn.BatchNorm())
            self.shortcut = nn.HybridSequential()
            self.shortcut.add(nn.Conv2D(channels, 1, stride, use_bias=False), nn.BatchNorm())

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return F.relu(self.body(x) + self.shortcut(x))


class ShapeClassifier(HybridBlock):
    """Raw 0-255 RGB 224x224 in, one logit per shape class out."""

    def __init__(self, classes: int = len(SHAPE_CLASSES),
                 widths: Sequence[int] = (32, 64, 128), **kwargs: object) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = nn.HybridSequential()
            # Normalises raw pixels with learned statistics, like SageMaker's bn_data.
            # A 4x4/4 patchifying stem: 224 -> 56 cheaply; the residual stages take it to 7.
            self.features.add(nn.BatchNorm(center=False, scale=False), _conv(24, 4, 4))
            for width in widths:
                self.features.add(_Residual(width, stride=2))
            self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        maps = self.features(x)
        # Average and max pooling both: "is there a 60-degree corner anywhere"
        # is a max, and it made training converge markedly faster here.
        pooled = F.concat(F.flatten(F.mean(maps, axis=(2, 3), keepdims=True)),
                          F.flatten(F.max(maps, axis=(2, 3), keepdims=True)), dim=1)
        return self.output(pooled)


def shape_classifier() -> ShapeClassifier:
    return ShapeClassifier()


class TinyFeatures(HybridBlock):
    """Plain strided convolutions; returns the maps at the strides ``outputs`` names."""

    # (channels, stride, kernel) per layer. Most of the cost of a 512x512 input
    # is in the first layers, so a 4x4/4 patchifying stem takes the first step.
    LAYERS = ((24, 4, 4), (32, 2, 3), (32, 1, 3), (64, 2, 3), (64, 1, 3),
              (96, 2, 3), (96, 1, 3), (128, 2, 3), (128, 1, 3))

    def __init__(self, outputs: Sequence[int] = SSD_STEPS, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._taps: list[int] = []
        with self.name_scope():
            self.layers = nn.HybridSequential()
            stride = 1
            for index, (channels, step, kernel) in enumerate(self.LAYERS):
                stride *= step
                self.layers.add(_conv(channels, step, kernel))
                next_step = self.LAYERS[index + 1][1] if index + 1 < len(self.LAYERS) else 2
                if stride in outputs and next_step == 2:
                    self._taps.append(index)
        assert len(self._taps) == len(outputs), f"strides {outputs} not all reachable"

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        maps = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self._taps:
                maps.append(x)
            if index == self._taps[-1]:
                break
        return maps


def _ssd_features(**_ignored: object) -> TinyFeatures:
    # SSD calls this with pretrained/ctx/root/norm_layer; none apply.
    return TinyFeatures(SSD_STEPS)


def shape_ssd() -> HybridBlock:
    """GluonCV SSD, 512x512, on ``TinyFeatures``; three classes plus background."""
    from gluoncv.model_zoo.ssd import SSD

    sizes = list(SSD_ANCHOR_SIZES)
    return SSD(network=None, base_size=DETECTOR_SIZE, features=_ssd_features, num_filters=None,
               sizes=sizes, ratios=[[1.0]] * len(SSD_STEPS), steps=list(SSD_STEPS),
               classes=list(SHAPE_CLASSES), pretrained=False, nms_thresh=0.45,
               nms_topk=200, post_nms=100)


class _Stage(HybridBlock):
    """A slice of ``TinyFeatures``' layers, as YOLOv3 wants its backbone in stages."""

    def __init__(self, layers: Sequence[tuple[int, int, int]], **kwargs: object) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            for channels, stride, kernel in layers:
                self.body.add(_conv(channels, stride, kernel))

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return self.body(x)


def shape_yolo3() -> HybridBlock:
    """GluonCV YOLOv3, 512x512, two output scales (stride 16 and 32)."""
    from gluoncv.model_zoo.yolo.yolo3 import YOLOV3

    layers = TinyFeatures.LAYERS
    stages = [_Stage(layers[:5]), _Stage(layers[5:7])]  # to stride 16 (64 ch), 32 (96 ch)
    return YOLOV3(stages, channels=[64, 32], anchors=[list(a) for a in YOLO_ANCHORS],
                  strides=list(YOLO_STRIDES), classes=list(SHAPE_CLASSES),
                  nms_thresh=0.45, nms_topk=200, post_nms=100)
