"""ONNX models made from the test suite's own MXNet checkpoints, for `lis compile`'s ONNX input.

``export_onnx_detector`` exports the demo SSD lis trains (``models/shapes-ssd``)
with the same exporter: its ``box_nms`` becomes ``NonMaxSuppression``.

MXNet 1.9's exporter (``mxnet.onnx``) writes opset 13 operators but declares
the opset of the installed ``onnx`` package, which redefined some of them
since: the graph is made with the exporter and declared opset 13 here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 13
REPO = Path(__file__).resolve().parents[2]
# The demo SSD, trained by `make train-models` and committed (an MXNet checkpoint).
DEMO_SSD = REPO / "models" / "shapes-ssd" / "shapes-ssd"
DEMO_SSD_SHAPE = (1, 3, 512, 512)


def export_onnx(symbol_file: Path, params_file: Path, shape: tuple[int | str, ...], path: Path,
                *, output: str | None = None,
                traced: tuple[int, ...] = (1, 3, 224, 224)) -> Path:
    """The checkpoint as ONNX at ``path``; ``output``: an internal output to end at instead.

    A ``str`` in ``shape`` leaves that dimension open (named), as exporters do
    for the batch size; the export itself runs with ``traced``'s size there.
    """
    import mxnet as mx  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415

    symbol = mx.sym.load(str(symbol_file))
    if output is not None:
        symbol = symbol.get_internals()[output]
    params = {name.split(":", 1)[1]: array for name, array in mx.nd.load(str(params_file)).items()}
    static = tuple(t if isinstance(d, str) else d for d, t in zip(shape, traced))
    graph = MXNetGraph().create_onnx_graph_proto(symbol, params, in_shapes=[static],
                                                 in_types=[onnx.TensorProto.FLOAT],
                                                 opset_version=OPSET)
    graph = graph[0] if isinstance(graph, tuple) else graph
    weights = {initializer.name for initializer in graph.initializer}
    image = [i for i in graph.input if i.name not in weights]
    del graph.input[:]  # the image alone is the model's input; weights are initializers
    graph.input.extend([helper.make_tensor_value_info(image[0].name, onnx.TensorProto.FLOAT,
                                                      list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lis-tests")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_onnx_detector(path: Path, *, outputs: int = 3) -> Path:
    """The demo SSD as ONNX at ``path``, answering its first ``outputs`` outputs only."""
    import onnx  # noqa: PLC0415

    export_onnx(DEMO_SSD.with_name("shapes-ssd-symbol.json"),
                DEMO_SSD.with_name("shapes-ssd-0000.params"), DEMO_SSD_SHAPE, path,
                traced=DEMO_SSD_SHAPE)
    model = onnx.load(str(path))
    del model.graph.output[outputs:]
    onnx.save(model, str(path))
    return path


def run_onnx(path: Path, batch: np.ndarray) -> list[np.ndarray]:
    import onnxruntime  # noqa: PLC0415

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: batch}))
