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


def tiny_nms_detector(path: Path, side: int = 64, seed: int = 0) -> Path:
    """A detector made by hand whose number of detections K depends on the image.

    A strided convolution gives one box and two class scores per 16x16 cell;
    ``NonMaxSuppression`` keeps some of them, and a gather tail answers what
    lis serves: class ids ``[1, K, 1]``, scores ``[1, K, 1]``, boxes ``[1, K, 4]``
    in input pixels, K known only when it runs (no padding).
    """
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.RandomState(seed)
    cells = (side // 16) ** 2
    weights = {
        "weight": rng.normal(0, 0.05, (6, 3, 16, 16)).astype(np.float32),
        "shape": np.array([1, 6, cells], dtype=np.int64),
        "split": np.array([4, 2], dtype=np.int64),
        "side": np.array(side, dtype=np.float32),
        "limits": np.array([10], dtype=np.int64),
        "iou": np.array([0.5], dtype=np.float32),
        "threshold": np.array([0.3], dtype=np.float32),
        "axis0": np.array([0], dtype=np.int64),
        "out_shape": np.array([1, -1, 1], dtype=np.int64),
        "box_shape": np.array([1, -1, 4], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["data", "weight"], ["cells"], strides=[16, 16]),
        helper.make_node("Reshape", ["cells", "shape"], ["flat"]),          # [1, 6, cells]
        helper.make_node("Split", ["flat", "split"], ["raw_boxes", "logits"], axis=1),
        helper.make_node("Sigmoid", ["raw_boxes"], ["unit_boxes"]),
        helper.make_node("Mul", ["unit_boxes", "side"], ["pixel_boxes"]),
        helper.make_node("Transpose", ["pixel_boxes"], ["boxes"], perm=[0, 2, 1]),  # [1, cells, 4]
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),        # [1, 2, cells]
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "limits", "iou", "threshold"],
                         ["selected"]),                                     # [K, 3]
        helper.make_node("Gather", ["selected", "class_column"], ["class_index"], axis=1),
        helper.make_node("Gather", ["selected", "box_column"], ["box_index"], axis=1),
        helper.make_node("Cast", ["class_index"], ["class_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["class_float", "out_shape"], ["class_ids"]),
        helper.make_node("GatherND", ["scores", "selected"], ["picked"]),
        helper.make_node("Reshape", ["picked", "out_shape"], ["detection_scores"]),
        helper.make_node("Squeeze", ["boxes", "axis0"], ["all_boxes"]),
        helper.make_node("Gather", ["all_boxes", "box_index"], ["picked_boxes"], axis=0),
        helper.make_node("Reshape", ["picked_boxes", "box_shape"], ["detection_boxes"]),
    ]
    weights["class_column"], weights["box_column"] = (np.array(1, dtype=np.int64),
                                                      np.array(2, dtype=np.int64))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "K", width])
               for name, width in (("class_ids", 1), ("detection_scores", 1),
                                   ("detection_boxes", 4))]
    graph = helper.make_graph(
        nodes, "tiny-nms-detector",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, side, side])], outputs,
        [numpy_helper.from_array(array, name) for name, array in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lis-tests")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
