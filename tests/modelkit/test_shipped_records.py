"""The records lis ships (``modelkit/records/``), applied to builds without ``--tune``.

The network opens with the reference SSD-512's first convolution (3 to 32
channels, 3x3, stride 2, on 512x512), whose AVX2 record the packaged file
holds, then a 1x1 convolution no shipped record knows. AVX2 targets run on
this machine's CPU, so those builds are verified against MXNet as any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import modelkit
from modelkit._shipped import SHIPPED_ENV
from modelkit._tune import CACHE_ENV
from modelkit.compile import Tuning, compile_model
from serve_app import cli
from tests.modelkit._llvm import tvm_json
from vocabulary.names import COMPILE_INFO_FILE

pytestmark = pytest.mark.slow

_AVX2 = "llvm -mcpu=core-avx2"
_PACKAGED = Path(modelkit.__file__).resolve().parent / "records"  # as installed


@pytest.fixture(scope="module")
def ssd_stem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MXNet checkpoint prefix: the SSD's first convolution, then one of its own."""
    import mxnet as mx  # noqa: PLC0415

    data = mx.sym.var("data")
    stem = mx.sym.Convolution(data, num_filter=32, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                              no_bias=True, name="stem")
    head = mx.sym.Convolution(mx.sym.relu(stem), num_filter=5, kernel=(1, 1), name="head")
    mx.random.seed(3)
    uniform = mx.nd.random.uniform
    arguments = {"stem_weight": uniform(-0.3, 0.3, (32, 3, 3, 3)),
                 "head_weight": uniform(-0.3, 0.3, (5, 32, 1, 1)),
                 "head_bias": uniform(-0.1, 0.1, (5,))}
    prefix = tmp_path_factory.mktemp("stem") / "stem"
    mx.model.save_checkpoint(str(prefix), 0, head, arguments, {})
    return prefix


def _compile(prefix: Path, output: Path, **options: Any) -> dict[str, Any]:
    lines: list[str] = []
    result = compile_model(prefix, None, output, input_shape=(1, 3, 512, 512),
                           preprocessing="detector", progress=lines.append, **options)
    info = json.loads((output / COMPILE_INFO_FILE).read_text())
    return {"result": result, "lines": lines, "info": info}


def _classes(targets: list[str]) -> list[str | None]:
    """``cpu_class`` of each target, asked in a fresh process (TVM stays out of this one)."""
    code = ("import json, sys\nfrom modelkit._shipped import cpu_class\n"
            "print(json.dumps([cpu_class(t) for t in sys.argv[1:]]))")
    return tvm_json(code, *targets)


def test_only_x86_targets_with_avx2_and_without_avx512_are_the_avx2_class() -> None:
    targets = ["llvm -mcpu=core-avx2", "llvm -mcpu=znver3", "llvm -mcpu=skylake",
               "llvm -mcpu=rocketlake", "llvm -mcpu=znver4", "llvm -mcpu=skylake-avx512",
               "llvm -mcpu=sandybridge", "llvm -mtriple=aarch64-linux-gnu -mattr=+neon",
               "llvm -mcpu=core-avx2 -mattr=+avx512f"]
    assert _classes(targets) == ["x86-avx2"] * 3 + [None] * 6


def test_the_packaged_file_holds_one_avx2_record_per_workload() -> None:
    lines = (_PACKAGED / "x86-avx2.log").read_text().splitlines()
    records = [json.loads(line)["input"] for line in lines]
    # SSD-512 MobileNet and ResNet-50, YOLOv3 MobileNet at 416 and 512: 107 layer shapes.
    assert len(records) >= 107
    assert set(_classes(sorted({record[0] for record in records}))) == {"x86-avx2"}
    workloads = [json.dumps(record[1:]) for record in records]
    assert len(set(workloads)) == len(workloads)


# Each record's channel blocks beside those lis's layout gives its layer without one: run in a
# fresh process (TVM stays out of this one).
_LAYOUT_OF_RECORDS = """
import json, sys
from tvm import autotvm
from modelkit._tune import _LAYOUT_KNOBS, _default_config, _entity_key
from modelkit._x86_blocks import lis_x86_layout
found = []
for line in open(sys.argv[1]):
    inp, _ = autotvm.record.decode(line)
    task = autotvm.task.create(inp.task.name, inp.task.args, inp.target)
    with lis_x86_layout(str(inp.target)):
        default = _default_config(task)
    knobs = sorted(_LAYOUT_KNOBS & set(task.config_space.space_map))
    found.append([[str(_entity_key(inp.config[k])) for k in knobs],
                  [str(_entity_key(default[k])) for k in knobs] if default else None])
print(json.dumps(found))
"""


def test_the_packaged_records_keep_lis_s_avx2_layout() -> None:
    # A record in other channel blocks than its neighbours' makes TVM convert between them,
    # which costs more than the record gains (TVM's blocks of 8: 8-30 % slower builds).
    found = tvm_json(_LAYOUT_OF_RECORDS, str(_PACKAGED / "x86-avx2.log"))
    assert len(found) >= 107
    assert all(blocks for blocks, _ in found)
    assert [blocks for blocks, _ in found] == [layout for _, layout in found]


def test_an_avx2_build_applies_the_shipped_record_of_the_layer_it_knows(
        ssd_stem: Path, tmp_path: Path) -> None:
    built = _compile(ssd_stem, tmp_path / "neo", target=_AVX2)
    assert built["info"]["shipped_records"] == {
        "class": "x86-avx2", "file": str(_PACKAGED / "x86-avx2.log"), "applied": 1}
    assert any("1 layer(s) built with a record lis ships for x86-avx2 CPUs" in line
               for line in built["lines"])
    assert built["info"]["tuning"] is None
    assert built["info"]["verified_max_abs_diff"] < 1e-3


def test_no_shipped_records_builds_without_them(ssd_stem: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["compile", str(ssd_stem), "-o", str(tmp_path / "neo"), "--input-shape",
                     "1,3,512,512", "--target", _AVX2, "--no-shipped-records"])
    assert code == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "neo" / COMPILE_INFO_FILE).read_text())
    assert info["shipped_records"] is None
    assert "lis ships" not in capsys.readouterr().out


def test_an_avx512_target_gets_no_shipped_records(ssd_stem: Path, tmp_path: Path) -> None:
    # Not verified: the machine running the suite may lack AVX-512.
    built = _compile(ssd_stem, tmp_path / "neo", target="llvm -mcpu=skylake-avx512",
                     verify=False)
    assert built["info"]["shipped_records"] is None


def test_records_of_the_target_itself_come_before_the_shipped_ones(
        ssd_stem: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    built = _compile(ssd_stem, tmp_path / "neo", target=_AVX2, tuning=Tuning(0.05))
    assert built["info"]["tuning"]["tasks_with_records"] == 2
    assert built["info"]["shipped_records"]["applied"] == 0
    assert built["info"]["verified_max_abs_diff"] < 1e-3


def test_a_folder_of_ones_own_replaces_the_packaged_records(
        ssd_stem: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "fleet"
    own.mkdir()
    monkeypatch.setenv(SHIPPED_ENV, str(own))
    assert _compile(ssd_stem, tmp_path / "none", target=_AVX2,
                    verify=False)["info"]["shipped_records"] is None
    stem_record = next(line for line in (_PACKAGED / "x86-avx2.log").read_text().splitlines()
                       if '[1, 3, 512, 512], "float32"], ["TENSOR", [32, 3, 3, 3]' in line)
    (own / "x86-avx2.log").write_text(stem_record + "\n")
    built = _compile(ssd_stem, tmp_path / "neo", target=_AVX2, verify=False)
    assert built["info"]["shipped_records"]["file"] == str(own / "x86-avx2.log")
    assert built["info"]["shipped_records"]["applied"] == 1
