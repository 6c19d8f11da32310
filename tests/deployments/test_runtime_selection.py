"""Which runtime serves a model, on real runtimes and real artifacts.

Every load runs in a fresh interpreter: DLR and TVM each carry a TVM runtime
and must never share a process, this one included. The machine where DLR has
no native library (PyPI's dlr==1.6.0 for aarch64 is pure Python) is made
honestly: a bare virtual environment whose interpreter sees this project's
packages, the dlr package among them, but whose ``sys.prefix`` holds no
``dlr/libdlr.so``, the one place the pip wheel puts it. DLR's own
``find_lib_path`` then finds no library, as on aarch64.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments._dlr import installed_libdlr
from vocabulary.names import COMPILE_INFO_FILE, LIBDLR_FILE

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/maps; DLR's library is libdlr.so")

# Serves argv[1] as a service of algorithm argv[3] through the real selection
# (InferencePipeline), runs a seeded batch, saves the raw outputs to argv[2] and
# reports which runtime served, which native libraries the process mapped and
# which of dlr/tvm/mxnet it imported. argv[4:] are modules made unimportable.
_SERVE = """
import json, logging, os, sys
for name in sys.argv[4:]:
    sys.modules[name] = None
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
import numpy as np
from deployments.inference import InferencePipeline, PipelineOptions
pipeline = InferencePipeline(sys.argv[1], PipelineOptions(algorithm=sys.argv[3]))
batch = np.random.RandomState(11).uniform(0, 255, pipeline.runtime.input_shape)
np.savez(sys.argv[2], *pipeline.runtime.predict(batch.astype(np.float32)))
with open("/proc/self/maps") as maps:
    mapped = {os.path.basename(line.split()[-1]) for line in maps if "/" in line}
print(json.dumps({
    "runtime": type(pipeline.runtime).__name__,
    "libraries": sorted(mapped & {"libdlr.so", "libtvm.so", "libtvm_runtime.so", "libmxnet.so"}),
    "imported": sorted(m for m in ("dlr", "tvm", "mxnet") if sys.modules.get(m) is not None),
    "dlr_in_sys_modules": "dlr" in sys.modules,
}))
"""

_LOAD_FAILURE = """
import sys
for name in sys.argv[2:]:
    sys.modules[name] = None
from deployments.inference import InferencePipeline, PipelineOptions
from vocabulary.errors import LisError
try:
    InferencePipeline(sys.argv[1], PipelineOptions(algorithm="image-classification"))
except LisError as error:
    print(type(error).__name__, error)
"""


def _run(python: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def python_without_libdlr(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter that imports this project and its packages but finds no libdlr.so."""
    root = tmp_path_factory.mktemp("no-libdlr-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    # The project's packages (and its .pth files) without moving sys.prefix back.
    (site / "lis-test-packages.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    python = str(root / "bin" / "python")
    found = _run(python, "from deployments._dlr import installed_libdlr as f; "
                         "import dlr.libpath; print(f())").stdout.strip()
    assert found == "None", f"the bare environment still finds DLR's library: {found}"
    return python


def _serve(python: str, model: Path, out: Path, *blocked: str,
           algorithm: str = "image-classification") -> tuple[dict[str, Any], str,
                                                             list[np.ndarray]]:
    """What serving ``model`` reported, its log, and its raw outputs."""
    done = _run(python, _SERVE, str(model), str(out), algorithm, *blocked)
    with np.load(out) as saved:
        outputs = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr, outputs


def test_the_installed_dlr_serves_where_it_has_a_library(tmp_path: Path,
                                                         tiny_neo_artifact: Path) -> None:
    report, log, _ = _serve(sys.executable, tiny_neo_artifact, tmp_path / "out.npz")
    assert report["runtime"] == "DLRRuntime"
    assert report["libraries"] == ["libdlr.so"]
    assert f"{installed_libdlr()} serves, the installed DLR's own library" in log


def test_the_bundled_libdlr_serves_where_dlr_has_none(tmp_path: Path, tiny_neo_artifact: Path,
                                                      python_without_libdlr: str) -> None:
    pip_libdlr = installed_libdlr()
    assert pip_libdlr is not None
    folder = shutil.copytree(tiny_neo_artifact, tmp_path / "neo")
    shutil.copyfile(pip_libdlr, folder / LIBDLR_FILE)
    _, _, expected = _serve(sys.executable, tiny_neo_artifact, tmp_path / "pip.npz")

    report, log, got = _serve(python_without_libdlr, folder, tmp_path / "bundled.npz")

    assert report["runtime"] == "DLRRuntime"
    assert (f"{folder.resolve() / LIBDLR_FILE} serves, the artifact's own library: "
            "the installed DLR has no native library") in log
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("machine", ["dlr-without-library", "dlr-not-importable"])
def test_a_lis_compiled_model_serves_on_tvm_where_dlr_cannot(
        tmp_path: Path, tiny_neo_artifact: Path, python_without_libdlr: str,
        machine: str) -> None:
    assert (tiny_neo_artifact / COMPILE_INFO_FILE).is_file()
    assert not (tiny_neo_artifact / LIBDLR_FILE).exists()
    _, _, on_dlr = _serve(sys.executable, tiny_neo_artifact, tmp_path / "dlr.npz")
    # As on aarch64: no MXNet either, and a DLR without its library, or none at all.
    python, blocked = ((python_without_libdlr, ["mxnet"]) if machine == "dlr-without-library"
                       else (sys.executable, ["mxnet", "dlr"]))

    report, log, on_tvm = _serve(python, tiny_neo_artifact, tmp_path / "tvm.npz", *blocked)

    assert report["runtime"] == "TVMGraphRuntime"
    assert "no DLR native library here, and `lis compile` built it" in log
    # Runtime-only: TVM's runtime library, not the compiler's, and never DLR's.
    assert report["libraries"] == ["libtvm_runtime.so"]
    assert report["imported"] == ["tvm"]
    if machine == "dlr-without-library":
        assert report["dlr_in_sys_modules"] is False
    (probabilities,), (expected,) = on_tvm, on_dlr
    assert probabilities.shape == (1, 3)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.mark.slow
def test_a_lis_compiled_detector_serves_on_tvm_as_on_dlr(
        tmp_path: Path, ssd_artifact: dict[str, Any], python_without_libdlr: str) -> None:
    model = ssd_artifact["artifact"]
    _, _, on_dlr = _serve(sys.executable, model, tmp_path / "dlr.npz",
                          algorithm="object-detection")
    report, _, on_tvm = _serve(python_without_libdlr, model, tmp_path / "tvm.npz", "mxnet",
                               algorithm="object-detection")
    assert report["runtime"] == "TVMGraphRuntime"
    assert report["libraries"] == ["libtvm_runtime.so"]
    assert [o.shape for o in on_tvm] == [(1, 100, 1), (1, 100, 1), (1, 100, 4)]
    assert int((on_dlr[0] >= 0).sum()) >= 10  # real detections, not all padding
    for got, expected in zip(on_tvm, on_dlr, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_image_classifier_without_mxnet_says_how_to_compile_it(
        tiny_classifier_artifact: Path) -> None:
    out = _run(sys.executable, _LOAD_FAILURE, str(tiny_classifier_artifact), "mxnet").stdout
    assert out.startswith("ArtifactError ")
    assert "MXNet cannot load on this machine" in out
    # The command that built the tiny_neo_artifact fixture from this very artifact.
    assert f"`lis compile {tiny_classifier_artifact} -o <out>`" in out
    assert "point the service's `model` at <out>" in out


def test_a_compiled_model_no_runtime_can_serve_says_what_to_install(
        tmp_path: Path, tiny_neo_artifact: Path, python_without_libdlr: str) -> None:
    no_tvm = _run(python_without_libdlr, _LOAD_FAILURE, str(tiny_neo_artifact), "tvm").stdout
    assert "the installed DLR has no native library (libdlr.so)" in no_tvm
    assert "pip install xtc-tvm-python-bindings==0.19.0.12" in no_tvm

    neo = shutil.copytree(tiny_neo_artifact, tmp_path / "neo")  # as if SageMaker Neo built it
    (neo / COMPILE_INFO_FILE).unlink()
    not_ours = _run(python_without_libdlr, _LOAD_FAILURE, str(neo)).stdout
    assert "install a DLR build with libdlr.so for this machine" in not_ours
    assert "compile the model with `lis compile`" in not_ours


_SECOND_RUNTIME = """
import os, sys
from vocabulary.errors import LisError
if sys.argv[2] == "tvm":
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    import tvm
    from deployments.dlr_runtime import DLRRuntime as Runtime
else:
    from deployments._dlr import import_dlr
    import_dlr()
    from deployments.tvm_runtime import TVMGraphRuntime as Runtime
try:
    Runtime(sys.argv[1]).load()
except LisError as error:
    print(error)
with open("/proc/self/maps") as maps:
    print("maps:", " ".join(sorted({os.path.basename(line.split()[-1]) for line in maps
                                    if "libdlr" in line or "libtvm" in line})))
"""


@pytest.mark.parametrize(("first", "refused", "not_loaded"),
                         [("tvm", "DLR", "libdlr.so"), ("dlr", "TVM", "libtvm_runtime.so")])
def test_dlr_and_tvm_never_load_into_one_process(tiny_neo_artifact: Path, first: str,
                                                 refused: str, not_loaded: str) -> None:
    out = _run(sys.executable, _SECOND_RUNTIME, str(tiny_neo_artifact), first).stdout
    message, maps = out.splitlines()[0], out.splitlines()[-1]
    assert message.startswith(f"cannot load the {refused} runtime: this process already "
                              f"imported {first!r}")
    assert "each carry a TVM runtime that crash a process holding both" in message
    assert not_loaded not in maps
