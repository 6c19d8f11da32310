"""The one place in lis that imports DLR.

DLR 1.6 "phones home" (device id, model hashes) to an AWS endpoint from the
moment ``dlr`` is imported, unless ``ccm_config.json`` beside its
``counter/phone_home.py`` says ``{"enable_phone_home": false}``. There is no
environment switch. lis must make no outbound connection, so before the first
import we write that file; if it cannot be written (a read-only site-packages)
and is not already there, we refuse to import DLR rather than let it connect.
``scripts/install.sh`` calls ``disable_phone_home()`` at install time so that
read-only images are already switched off.

``installed_libdlr()`` answers which native library the installed DLR would
load without importing ``dlr``: PyPI's dlr==1.6.0 for aarch64 is pure Python,
and a process that imports ``dlr`` may no longer load the TVM runtime
(``deployments.runtime.refuse_mixed_tvm_runtimes``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from vocabulary.errors import LisError

__all__ = ["disable_phone_home", "import_dlr", "installed_libdlr", "phone_home_config_path"]

_CONFIG_NAME = "ccm_config.json"
_LIBPATH_FILE = "libpath.py"  # DLR's own search for its native library


def _package_dir() -> Path | None:
    """DLR's package folder, found without importing dlr; None if it is not installed."""
    spec = importlib.util.find_spec("dlr")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def phone_home_config_path() -> Path:
    """Where DLR's phone-home switch lives, found without importing dlr."""
    package = _package_dir()
    if package is None:
        raise LisError("the DLR runtime is not installed (pip install dlr==1.6.0)")
    return package / "counter" / _CONFIG_NAME


def _dlr_libpath(package: Path) -> ModuleType:
    # dlr/libpath.py imports only os, platform and sys: run on its own, it searches
    # exactly where DLRModel will, and "dlr" stays out of sys.modules.
    spec = importlib.util.spec_from_file_location("_lis_dlr_libpath", package / _LIBPATH_FILE)
    if spec is None or spec.loader is None:
        raise LisError(f"DLR at {package} has no {_LIBPATH_FILE}: lis supports dlr==1.6.0")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except OSError as error:
        raise LisError(f"DLR at {package} has no readable {_LIBPATH_FILE} ({error.strerror}): "
                       "lis supports dlr==1.6.0") from error
    return module


def installed_libdlr() -> Path | None:
    """The native ``libdlr.so`` the installed DLR loads (``use_default_dlr=True``).

    None when DLR is not installed or has no native library (a pure-Python
    wheel). Never imports ``dlr``.
    """
    package = _package_dir()
    if package is None:
        return None
    libpath = _dlr_libpath(package)
    try:
        return Path(libpath.find_lib_path(use_default_dlr=True))
    except libpath.DLRLibraryNotFound:
        return None


def _is_disabled(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("enable_phone_home") is False
    except (OSError, ValueError):
        return False


def disable_phone_home() -> Path:
    """Switch DLR's telemetry off for this installation; idempotent."""
    path = phone_home_config_path()
    if _is_disabled(path):
        return path
    if "dlr" in sys.modules:
        raise LisError("dlr was imported before its telemetry was switched off")
    config = {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    config["enable_phone_home"] = False
    try:
        path.write_text(json.dumps(config))
    except OSError as error:
        raise LisError(
            f"cannot switch off DLR telemetry ({path}: {error.strerror}); "
            "run scripts/install.sh or make the file writable"
        ) from error
    return path


def import_dlr() -> ModuleType:
    """Import ``dlr`` with its telemetry switched off."""
    disable_phone_home()
    import dlr  # noqa: PLC0415 - must follow disable_phone_home()

    return dlr
