"""`lis compile --tune`: AutoTVM records made, cached, reused, exported and imported.

The network is the suite's tiny SageMaker classifier (one convolution, one
dense layer: three AutoTVM tasks), tuned with a budget of seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from modelkit._tune import CACHE_ENV
from modelkit.compile import Tuning, compile_model
from serve_app import cli
from vocabulary.errors import CompileError
from vocabulary.names import COMPILE_INFO_FILE

pytestmark = pytest.mark.slow

# Six seconds over three tasks: each measures its default schedule and a batch or two.
_BUDGET_MINUTES = 0.1
_TASK_LINE = re.compile(r"tuning task (\d+)/(\d+) (\S+) .*: (?:known .*, )?(\d+) trials")


def _compile(source: Path, output: Path, tuning: Tuning, cache: Path,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv(CACHE_ENV, str(cache))
    lines: list[str] = []
    result = compile_model(source, None, output, tuning=tuning, progress=lines.append)
    info = json.loads((output / COMPILE_INFO_FILE).read_text())
    return {"result": result, "lines": lines, "info": info,
            "tasks": [m.groups() for line in lines if (m := _TASK_LINE.search(line))]}


def _records(cache: Path) -> list[str]:
    return [line for path in sorted(cache.glob("*.log")) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tuned(tiny_classifier_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny classifier tuned once, into a fresh cache."""
    folder = tmp_path_factory.mktemp("tuned")
    with pytest.MonkeyPatch.context() as monkeypatch:
        first = _compile(tiny_classifier_artifact, folder / "neo",
                         Tuning(_BUDGET_MINUTES, export=folder / "exported.log"),
                         folder / "cache", monkeypatch)
    return {**first, "folder": folder, "cache": folder / "cache"}


def test_tuning_measures_each_task_and_writes_records(tuned: dict) -> None:
    tasks = tuned["tasks"]
    assert [int(number) for number, *_ in tasks] == [1, 2, 3]
    assert {name for _, _, name, _ in tasks} >= {"conv2d_NCHWc.x86"}
    assert all(int(trials) >= 1 for *_, trials in tasks)
    records = _records(tuned["cache"])
    assert len(records) == 3  # the best record of each task
    assert all('"llvm -keys=cpu' in record for record in records)
    summary = tuned["info"]["tuning"]
    assert summary["tasks"] == summary["tasks_tuned"] == summary["tasks_with_records"] == 3
    assert summary["trials"] == sum(int(trials) for *_, trials in tasks)
    assert any("with 3 tuned schedule(s)" in line for line in tuned["lines"])


def test_tuned_artifact_passes_verification(tuned: dict) -> None:
    assert tuned["result"].max_abs_diff is not None
    assert tuned["info"]["verified_max_abs_diff"] < 1e-3
    assert any("verified: DLR vs MXNet" in line for line in tuned["lines"])


def test_recompile_reuses_the_records_without_new_trials(
        tuned: dict, tiny_classifier_artifact: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = _records(tuned["cache"])
    again = _compile(tiny_classifier_artifact, tmp_path / "neo", Tuning(_BUDGET_MINUTES),
                     tuned["cache"], monkeypatch)
    assert [trials for *_, trials in again["tasks"]] == ["0", "0", "0"]
    assert all("known (tuning record on disk)" in line for line in again["lines"]
               if _TASK_LINE.search(line))
    assert again["info"]["tuning"]["trials"] == 0
    assert again["info"]["tuning"]["tasks_known"] == 3
    assert _records(tuned["cache"]) == before
    assert again["info"]["verified_max_abs_diff"] < 1e-3


def test_exported_records_imported_elsewhere_tune_nothing(
        tuned: dict, tiny_classifier_artifact: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    exported = tuned["folder"] / "exported.log"
    assert len(exported.read_text().splitlines()) == 3
    # Another machine's empty cache, and the records given without --tune.
    other = _compile(tiny_classifier_artifact, tmp_path / "neo",
                     Tuning(0.0, records=(exported,)), tmp_path / "cache", monkeypatch)
    assert any("imported 3 tuning record(s)" in line for line in other["lines"])
    assert other["info"]["tuning"]["tasks_with_records"] == 3
    assert other["info"]["tuning"]["trials"] == 0
    assert len(_records(tmp_path / "cache")) == 3


def test_without_budget_or_records_the_default_schedules_build(
        tiny_classifier_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _compile(tiny_classifier_artifact, tmp_path / "neo", Tuning(0.0), tmp_path / "cache",
                     monkeypatch)
    assert [trials for *_, trials in built["tasks"]] == []  # no "N trials" line
    assert all("no record and no time budget, default schedule" in line
               for line in built["lines"] if "tuning task " in line)
    assert built["info"]["tuning"]["tasks_with_records"] == 0
    assert not _records(tmp_path / "cache")


def test_tuning_for_another_cpu_is_one_line(tiny_classifier_artifact: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(CompileError, match=r"--tune measures on the CPU it tunes for.*"
                                           r"--tune-records") as error:
        compile_model(tiny_classifier_artifact, None, tmp_path / "neo", target="aarch64",
                      tuning=Tuning(1.0), progress=None)
    assert "\n" not in str(error.value)


def test_cli_refuses_a_negative_budget(tiny_classifier_artifact: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["compile", str(tiny_classifier_artifact), "-o", str(tmp_path / "neo"),
                     "--tune", "--tune-minutes", "-1"])
    assert code != 0
    assert "--tune-minutes -1: must be 0 or more" in capsys.readouterr().err


def test_cli_refuses_a_budget_without_tune(tiny_classifier_artifact: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["compile", str(tiny_classifier_artifact), "-o", str(tmp_path / "neo"),
                     "--tune-minutes", "5"])
    assert code != 0
    assert "--tune-minutes is --tune's budget: give --tune too" in capsys.readouterr().err
