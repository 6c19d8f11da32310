"""The committed aarch64 demo artifacts (``models/aarch64/``) are current.

An aarch64 board cannot compile the demo models (no MXNet there), so
``lis models build`` installs what an x86_64 machine cross-compiled and the
repository commits. These checks fail when the weights under ``models/``
change and the bundle was not rebuilt (``lis models build --target aarch64``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deployments.neo import read_neo_artifact
from modelkit.compile import VERIFY_TOLERANCE
from modelkit.demo import DEMO_MODELS, MODELS_DIR, source_digest
from modelkit.prebuilt import MANIFEST_FILE, bundle_dir, check_bundle, require_current
from vocabulary.errors import ArtifactError

BUNDLE = bundle_dir(MODELS_DIR, "aarch64")


def _weights() -> dict[str, str]:
    return {model.name: source_digest(model.source) for model in DEMO_MODELS}


def test_the_aarch64_bundle_was_built_from_the_committed_weights() -> None:
    assert check_bundle(BUNDLE, _weights()) == []


@pytest.mark.parametrize("model", DEMO_MODELS, ids=lambda m: m.name)
def test_each_prebuilt_model_is_compiled_for_aarch64_and_verified(model) -> None:  # type: ignore[no-untyped-def]
    artifact = read_neo_artifact(BUNDLE / model.name)
    assert artifact.machine == "aarch64"
    assert artifact.libdlr is None  # served by TVM's runtime on the board
    entry = json.loads((BUNDLE / MANIFEST_FILE).read_text())["models"][model.name]
    # Its twin for the compiling machine was checked against MXNet there.
    assert entry["verified"]["reference"] == "MXNet"
    assert entry["verified"]["max_abs_diff"] <= VERIFY_TOLERANCE


def test_a_bundle_built_from_other_weights_is_refused_with_the_fix(tmp_path: Path) -> None:
    weights = _weights()
    weights["shapes-ssd"] = "0" * 64
    with pytest.raises(ArtifactError, match=r"shapes-ssd: built from other weights.*"
                                            r"lis models build --target aarch64"):
        require_current(BUNDLE, weights)


def test_a_bundle_whose_files_changed_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "aarch64"
    shutil.copytree(BUNDLE, bundle)
    params = bundle / "shapes-yolo3" / "compiled.params"
    params.write_bytes(params.read_bytes()[:-1])
    assert check_bundle(bundle, _weights()) == [
        "shapes-yolo3: its files differ from the manifest's"]
