"""The MXNet and DLR runtimes on real artifacts: same answers as MXNet itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.archive import pack_folder
from deployments.dlr_runtime import DLRRuntime
from deployments.mxnet_runtime import MXNetClassifierRuntime
from deployments.neo import LIBDLR_FILE, LIBRARY_FILE
from modelkit.compile import pair_detections
from vocabulary.errors import ArtifactError, InvalidArgument, LisError

# Issue 2: compiled detectors equal MXNet within 1e-3 on scores and boxes.
# Boxes are compared as fractions of the input size, the unit the connector
# reports them in; the raw pixel differences are printed with -s.
TOLERANCE = 1e-3


def _classifier_batch() -> np.ndarray:
    return np.random.RandomState(11).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)


def _loaded(runtime: Any) -> Any:
    runtime.load()
    return runtime


def _in_a_fresh_process(code: str, *args: str) -> str:
    """The standard output of ``code`` run by a new interpreter from the repository root:
    for settings a process reads once (thread pools, malloc) and cannot undo."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2]).stdout


# --- MXNet ------------------------------------------------------------------------

def test_mxnet_runtime_reads_archives(tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    folder = _loaded(MXNetClassifierRuntime(tiny_classifier_artifact))
    packed = _loaded(MXNetClassifierRuntime(pack_folder(tiny_classifier_artifact,
                                                        tmp_path / "model.tar.gz")))
    assert packed.input_shape == (1, 3, 224, 224)
    assert packed.labels == ("circle", "square", "triangle")
    batch = _classifier_batch()
    np.testing.assert_array_equal(folder.predict(batch)[0], packed.predict(batch)[0])


def test_mxnet_runtime_rejects_a_wrong_batch_shape(tiny_classifier_artifact: Path) -> None:
    runtime = _loaded(MXNetClassifierRuntime(tiny_classifier_artifact))
    with pytest.raises(InvalidArgument, match=r"\(1, 3, 224, 224\)"):
        runtime.predict(np.zeros((1, 3, 100, 100), np.float32))


def test_mxnet_gpu_without_cuda_says_so(tiny_classifier_artifact: Path) -> None:
    import mxnet as mx

    if mx.runtime.Features().is_enabled("CUDA"):
        pytest.skip("this MXNet has CUDA")
    with pytest.raises(LisError, match="no CUDA support"):
        MXNetClassifierRuntime(tiny_classifier_artifact, device="gpu").load()


def test_mxnet_threads_are_set_before_mxnet_loads(tiny_classifier_artifact: Path) -> None:
    code = ("import os; from deployments.mxnet_runtime import MXNetClassifierRuntime as R; "
            f"R({str(tiny_classifier_artifact)!r}, threads=2).load(); "
            "print(os.environ['OMP_NUM_THREADS'], os.environ['MXNET_CPU_WORKER_NTHREADS'])")
    assert _in_a_fresh_process(code).split() == ["2", "2"]


def test_predict_before_load_is_an_error(tiny_classifier_artifact: Path,
                                         tiny_neo_artifact: Path) -> None:
    for runtime in (MXNetClassifierRuntime(tiny_classifier_artifact),
                    DLRRuntime(tiny_neo_artifact)):
        with pytest.raises(LisError, match="not loaded"):
            runtime.predict(_classifier_batch())


# --- DLR, the tiny classifier --------------------------------------------------------

def test_dlr_classifier_equals_mxnet(tiny_classifier_artifact: Path,
                                     tiny_neo_artifact: Path) -> None:
    reference = _loaded(MXNetClassifierRuntime(tiny_classifier_artifact))
    compiled = _loaded(DLRRuntime(tiny_neo_artifact))
    assert compiled.input_shape == (1, 3, 224, 224)
    assert compiled.labels == ("circle", "square", "triangle")
    batch = _classifier_batch()
    (expected,), (got,) = reference.predict(batch), compiled.predict(batch)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_dlr_loads_despite_lis_json_files(tiny_neo_artifact: Path) -> None:
    # DLR 1.6 alone refuses a folder with a second .json; the runtime hides them.
    assert (tiny_neo_artifact / "preprocessing.json").is_file()
    (probabilities,) = _loaded(DLRRuntime(tiny_neo_artifact)).predict(_classifier_batch())
    assert probabilities.shape == (1, 3)


def test_dlr_uses_pip_libdlr_unless_bundled_is_preferred(tmp_path: Path,
                                                         tiny_neo_artifact: Path) -> None:
    folder = shutil.copytree(tiny_neo_artifact, tmp_path / "neo")
    # An ELF header and nothing else: it passes validation, but cannot be loaded.
    (folder / LIBDLR_FILE).write_bytes((folder / LIBRARY_FILE).read_bytes()[:64])
    assert _loaded(DLRRuntime(folder)).predict(_classifier_batch())[0].shape == (1, 3)
    with pytest.raises(ArtifactError, match="DLR could not load the model"):
        DLRRuntime(folder, prefer_bundled_libdlr=True).load()


def test_dlr_gpu_without_cuda_says_so(tiny_neo_artifact: Path) -> None:
    with pytest.raises(LisError, match="has no CUDA support"):
        DLRRuntime(tiny_neo_artifact, device="gpu").load()


def test_dlr_refuses_a_library_for_another_cpu(tmp_path: Path, tiny_neo_artifact: Path) -> None:
    folder = shutil.copytree(tiny_neo_artifact, tmp_path / "neo")
    library = bytearray((folder / LIBRARY_FILE).read_bytes())
    library[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    (folder / LIBRARY_FILE).write_bytes(bytes(library))
    with pytest.raises(ArtifactError, match="compiled for aarch64, but this machine is x86_64"):
        DLRRuntime(folder).load()


# Runs the model once from a worker thread, as a replica's request worker does,
# then prints how many cores that thread may still use, and the process.
_WORKER_CORES_AFTER_A_RUN = """
import os, sys, threading
import numpy as np
import deployments.runtime as runtime
if sys.argv[2] == "tvm-default":
    runtime._NO_PINNING = {}
    os.environ.pop("TVM_BIND_THREADS", None)  # inherited from a runtime the tests loaded
from deployments.dlr_runtime import DLRRuntime
model = DLRRuntime(sys.argv[1], threads=1)
model.load()
cores = []
def worker():
    model.predict(np.zeros(model.input_shape, dtype=np.float32))
    cores.append(len(os.sched_getaffinity(0)))
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(cores[0], len(os.sched_getaffinity(0)))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs thread affinity and two cores")
def test_dlr_leaves_the_calling_thread_on_every_core(tiny_neo_artifact: Path) -> None:
    # A fresh process each: TVM reads its setting once, when its pool starts.
    def cores(mode: str) -> list[int]:
        output = _in_a_fresh_process(_WORKER_CORES_AFTER_A_RUN, str(tiny_neo_artifact), mode)
        return [int(n) for n in output.split()[-2:]]

    pinned_worker, all_cores = cores("tvm-default")
    assert pinned_worker == 1 < all_cores  # TVM's default: the caller is pinned to core 0
    assert cores("lis") == [all_cores, all_cores]


# --- DLR, the compiled GluonCV detectors ----------------------------------------------

def _mxnet_detector(detector: dict[str, Any], batch: np.ndarray) -> list[np.ndarray]:
    import mxnet as mx

    net = mx.gluon.SymbolBlock.imports(str(detector["symbol"]), ["data"], str(detector["params"]))
    return [output.asnumpy() for output in net(mx.nd.array(batch))]


def _assert_same_detections(detector: dict[str, Any], batch: np.ndarray) -> None:
    runtime = _loaded(DLRRuntime(detector["artifact"]))
    assert runtime.input_shape == (1, 3, 512, 512)
    ids, scores, boxes = runtime.predict(batch)
    ref_ids, ref_scores, ref_boxes = _mxnet_detector(detector, batch)
    assert ids.shape[-1] == 1 and scores.shape[-1] == 1 and boxes.shape[-1] == 4
    valid = ref_ids[..., 0] >= 0
    # Non-degenerate: real detections, several classes, varied scores.
    assert valid.sum() >= 10
    assert len(np.unique(ref_ids[valid])) >= 3
    assert np.ptp(ref_scores[valid]) > 0.01
    assert int((ids[..., 0] >= 0).sum()) == int(valid.sum())
    order = pair_detections(ref_ids[valid][:, 0], ref_scores[valid][:, 0], ids[valid][:, 0],
                            scores[valid][:, 0], TOLERANCE)
    assert np.array_equal(ids[valid][order], ref_ids[valid])
    score_diff = float(np.abs(scores[valid][order] - ref_scores[valid]).max())
    pixel_diff = float(np.abs(boxes[valid][order] - ref_boxes[valid]).max())
    print(f"{detector['name']}: {int(valid.sum())} detections, max abs diff scores "
          f"{score_diff:.3g}, boxes {pixel_diff:.3g} px ({pixel_diff / 512:.3g} of the width)")
    assert score_diff <= TOLERANCE
    assert pixel_diff / 512 <= TOLERANCE


@pytest.mark.slow
def test_compiled_ssd_equals_mxnet(ssd_artifact: dict[str, Any], detector_batch: np.ndarray) -> None:
    _assert_same_detections(ssd_artifact, detector_batch)


@pytest.mark.slow
def test_compiled_yolo_equals_mxnet(yolo_artifact: dict[str, Any],
                                    detector_batch: np.ndarray) -> None:
    _assert_same_detections(yolo_artifact, detector_batch)


@pytest.mark.slow
def test_compiled_detector_on_another_image(ssd_artifact: dict[str, Any]) -> None:
    from deployments.imaging import DETECTOR_PREPROCESSING, preprocess

    image = np.zeros((300, 400, 3), np.uint8)
    image[50:200, 100:300] = (200, 30, 30)  # a red block on black, not the calibration input
    _assert_same_detections(ssd_artifact, preprocess(image, DETECTOR_PREPROCESSING))


_PAGE_FAULTS_PER_FRAME = """
import resource, sys
import numpy as np
from deployments.imaging import DETECTOR_PREPROCESSING, preprocess
from deployments.runtime import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers()
frame = np.full((720, 1280, 3), 90, dtype=np.uint8)
preprocess(frame, DETECTOR_PREPROCESSING)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    preprocess(frame.copy(), DETECTOR_PREPROCESSING)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_buffers_spare_each_request_its_page_faults() -> None:
    # A fresh process each: the setting is process-wide and cannot be undone.
    def faults(mode: str) -> float:
        return float(_in_a_fresh_process(_PAGE_FAULTS_PER_FRAME, mode))

    mapped, kept = faults("map"), faults("keep")
    assert mapped > 1000  # a 1280x720 frame into a 512x512 input: megabytes of new pages
    assert kept < mapped / 20
