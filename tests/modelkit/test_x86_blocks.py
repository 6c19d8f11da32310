"""lis's layout for x86 code without AVX-512 (AVX2, SSE): channels in blocks of 32 where no
record says otherwise.

The builds run in ``lis compile``'s TVM child, as every build does; what they chose is read
from the graph they wrote (each blocked tensor's last dimension is its channel block).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelkit._tune import CACHE_ENV
from modelkit.compile import Tuning, compile_model
from tests.modelkit._llvm import tvm_json
from vocabulary.names import COMPILE_INFO_FILE, GRAPH_FILE

pytestmark = pytest.mark.slow

_AVX2 = "llvm -mcpu=core-avx2"
_SSE = "llvm -mcpu=tremont"
_LINE = "layers without a record get lis's layout (channels in blocks of 32)"


def _net(folder: Path, last_filters: int, last_kernel: int) -> Path:
    """An MXNet checkpoint prefix: 3x3 stride 2 to 32 channels, 1x1 to 64, then ``last_kernel``
    to ``last_filters``; none of them a layer lis ships a record for."""
    import mxnet as mx  # noqa: PLC0415

    data = mx.sym.var("data")
    first = mx.sym.Convolution(data, num_filter=32, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                               name="first")
    wide = mx.sym.Convolution(mx.sym.relu(first), num_filter=64, kernel=(1, 1), name="wide")
    last = mx.sym.Convolution(mx.sym.relu(wide), num_filter=last_filters,
                              kernel=(last_kernel, last_kernel),
                              pad=(last_kernel // 2, last_kernel // 2), name="last")
    mx.random.seed(5)
    uniform = mx.nd.random.uniform
    arguments = {"first_weight": uniform(-0.3, 0.3, (32, 3, 3, 3)),
                 "first_bias": uniform(-0.1, 0.1, (32,)),
                 "wide_weight": uniform(-0.2, 0.2, (64, 32, 1, 1)),
                 "wide_bias": uniform(-0.1, 0.1, (64,)),
                 "last_weight": uniform(-0.1, 0.1, (last_filters, 64, last_kernel, last_kernel)),
                 "last_bias": uniform(-0.1, 0.1, (last_filters,))}
    prefix = folder / "net"
    mx.model.save_checkpoint(str(prefix), 0, mx.sym.relu(last), arguments, {})
    return prefix


@pytest.fixture(scope="module")
def small_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3x3 to 32 channels, 1x1 to 64, 3x3 to 64 (on 96x96)."""
    return _net(tmp_path_factory.mktemp("small"), 64, 3)


@pytest.fixture(scope="module")
def odd_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """On 26x26: 3x3 stride 2 to 32 channels, then two 1x1s on the 13x13 map, to 64 and to
    21 (a YOLOv3 head for 2 classes)."""
    return _net(tmp_path_factory.mktemp("odd"), 21, 1)


def _compile(prefix: Path, output: Path, input_shape: tuple[int, ...] = (1, 3, 96, 96),
             **options: Any) -> dict[str, Any]:
    lines: list[str] = []
    result = compile_model(prefix, None, output, input_shape=input_shape,
                           progress=lines.append, shipped_records=False, **options)
    graph = json.loads((output / GRAPH_FILE).read_text())
    blocks = {shape[-1] for shape in graph["attrs"]["shape"][1] if len(shape) == 5}
    return {"result": result, "lines": lines, "blocks": blocks,
            "info": json.loads((output / COMPILE_INFO_FILE).read_text())}


def test_an_avx2_build_blocks_channels_by_32(small_net: Path, tmp_path: Path) -> None:
    built = _compile(small_net, tmp_path / "neo", target=_AVX2)
    assert any(_LINE in line for line in built["lines"])
    assert built["blocks"] == {3, 32}   # the image's 3 channels, then blocks of 32
    assert built["info"]["verified_max_abs_diff"] < 1e-3


def test_an_sse_build_blocks_channels_by_32_too(small_net: Path, tmp_path: Path) -> None:
    # An Atom-class CPU (SSE4.2, no AVX): TVM would block by 4, one SSE register.
    built = _compile(small_net, tmp_path / "neo", target=_SSE)
    assert any(line.endswith("x86 without AVX2: " + _LINE + ", not TVM's (blocks of 4)")
               for line in built["lines"])
    assert built["blocks"] == {3, 32}
    assert built["info"]["verified_max_abs_diff"] < 1e-3


def test_an_avx512_build_keeps_tvms_blocks(small_net: Path, tmp_path: Path) -> None:
    # Not verified: the machine running the suite may lack AVX-512.
    built = _compile(small_net, tmp_path / "neo", target="llvm -mcpu=skylake-avx512",
                     verify=False)
    assert not any(_LINE in line for line in built["lines"])
    assert built["blocks"] == {3, 16}


def test_tuning_starts_from_lis_layout_and_keeps_it(small_net: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    built = _compile(small_net, tmp_path / "neo", target=_AVX2, tuning=Tuning(0.05))
    assert built["info"]["tuning"]["tasks_with_records"] == built["info"]["tuning"]["tasks"] == 3
    assert built["blocks"] == {3, 32}   # the image's 3 channels, then blocks of 32
    assert built["info"]["verified_max_abs_diff"] < 1e-3


# The default tile lis's layout gives 1x1 convolutions on a 13x13 map, asked of TVM in a fresh
# process (TVM stays out of this one).
_TILES = """
import json, sys
from tvm import autotvm
from modelkit._tune import _default_config, _entity_key
from modelkit._x86_blocks import lis_x86_layout
tiles = []
for channels, filters in ((64, 32), (1024, 21)):
    args = (("TENSOR", (1, channels, 13, 13), "float32"),
            ("TENSOR", (filters, channels, 1, 1), "float32"),
            (1, 1), (0, 0, 0, 0), (1, 1), "NCHW", "NCHW", "float32")
    task = autotvm.task.create("conv2d_NCHWc.x86", args, sys.argv[1])
    with lis_x86_layout(sys.argv[1]):
        default = _default_config(task)
    tiles.append([list(_entity_key(default[k])) for k in ("tile_oc", "tile_ow")]
                 + [default["tile_oh"].val])
print(json.dumps(tiles))
"""


def _tiles(target: str) -> list[list[Any]]:
    return tvm_json(_TILES, target)


def test_a_1x1_convolution_on_an_odd_width_fills_its_tile(odd_net: Path, tmp_path: Path) -> None:
    # Blocks of 32 are 4 registers: 2 px that do not divide 13 (the last tile half empty), not
    # 1 (4 accumulators). 21 channels are one register: the whole row, not 1 px.
    assert _tiles(_AVX2) == [[[32], [2], 1], [[7], [13], 1]]
    # In SSE code, blocks of 32 are 8 registers (1 px); 21 channels, blocks of 3, one register.
    assert _tiles(_SSE) == [[[32], [1], 1], [[3], [13], 1]]
    built = _compile(odd_net, tmp_path / "neo", input_shape=(1, 3, 26, 26), target=_AVX2)
    # The 3x3 layer on the 13-px-wide map is in blocks of 8 (its tile is 13 wide).
    assert built["blocks"] == {3, 8, 32, 7}
    assert built["info"]["verified_max_abs_diff"] < 1e-3
