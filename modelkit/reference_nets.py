"""GluonCV's reference detectors with random weights that still detect: for tests and benches.

Nothing downloads pretrained weights here, and GluonCV's networks straight from
``initialize()`` are degenerate: YOLOv3's activations vanish, so every score is
0.25 and every box its anchor, and SSD's overflow into scores of 1 and boxes
millions of pixels wide. A compiled artifact compared with MXNet on such outputs
is hardly checked (they matched exactly). ``calibrate`` is a data-dependent init
instead: one forward pass over a given batch rescales each convolution and dense
layer to unit output scale and sets each BatchNorm's running statistics to what
it sees, so on that batch the network answers varied classes and scores and
finite boxes. Off it, a random deep network may still blow up (YOLOv3 calibrated
on random pixels answered infinite boxes on lis's verification scene), so a
bench calibrates on the batch it verifies and measures with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployments.imaging import DETECTOR_PREPROCESSING, preprocess

__all__ = ["calibrate", "random_gluoncv", "random_pixels"]


def random_pixels(size: int = 512, seed: int = 0) -> np.ndarray:
    """A deterministic preprocessed 1x3xSxS batch of random pixels, as serving makes one."""
    image = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    return preprocess(image, DETECTOR_PREPROCESSING.with_overrides(width=size, height=size))


def random_gluoncv(name: str, batch: np.ndarray, seed: int = 0) -> Any:
    """GluonCV's ``name`` with random weights (``seed``), calibrated on ``batch``,
    hybridized and run on it once: ready to ``export``."""
    import mxnet as mx  # noqa: PLC0415
    from gluoncv import model_zoo  # noqa: PLC0415

    mx.random.seed(seed)
    net = model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    net.initialize()
    data = mx.nd.array(batch)
    calibrate(net, data)
    net.hybridize()
    net(data)
    return net


def calibrate(net: Any, batch: Any) -> None:
    """Give every convolution and dense output unit scale, every BatchNorm ``batch``'s
    statistics (one forward pass; the layers are rescaled in the order they run)."""
    from mxnet.gluon import nn  # noqa: PLC0415

    def set_batch_statistics(block: Any, inputs: Any) -> None:
        data = inputs[0]
        mean = data.mean(axis=(0, 2, 3), keepdims=True)
        block.running_mean.set_data(mean.reshape(-1))
        block.running_var.set_data(((data - mean) ** 2).mean(axis=(0, 2, 3)) + 1e-3)

    def unit_output(block: Any, _inputs: Any, output: Any) -> None:
        scale = float(output.asnumpy().std()) + 1e-6
        block.weight.set_data(block.weight.data() / scale)
        if block.bias is not None:
            block.bias.set_data(block.bias.data() / scale)
        output[:] = output / scale

    handles: list[Any] = []

    def hook(block: Any) -> None:
        if isinstance(block, nn.BatchNorm):
            handles.append(block.register_forward_pre_hook(set_batch_statistics))
        elif isinstance(block, (nn.Conv2D, nn.Dense)):
            handles.append(block.register_forward_hook(unit_output))

    net.apply(hook)
    net(batch)
    for handle in handles:
        handle.detach()
