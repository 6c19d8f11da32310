"""The public surface is exactly what we mean to export (httpx's ``test_exported_members``).

For every public module (no ``_``-prefixed part in its dotted path) of the
packages below that names its API in ``__all__``: each name in ``__all__``
exists, and each public name the module itself binds is in ``__all__``. A
module binds a name when it defines it (a class or function whose
``__module__`` is the module, a constant assigned at its top level); a
package's ``__init__`` also binds what it imports from its own submodules,
since re-exporting them is its job. Modules are found by walking the
packages, so a new one is checked without editing this file.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import greengrass_machine_learning_sdk
import serve_app
from greengrass_machine_learning_sdk import feedback

PACKAGES = ("greengrass_machine_learning_sdk", "vocabulary", "cluster", "deployments",
            "serve_app")


def _public_modules() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        names += [info.name for info in pkgutil.walk_packages(package.__path__,
                                                              f"{package_name}.")]
    return sorted(name for name in names
                  if not any(part.startswith("_") for part in name.split(".")))


def _with_all() -> list[str]:
    return [name for name in _public_modules()
            if hasattr(importlib.import_module(name), "__all__")]


def _top_level_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """The module's own statements, including those under a top-level ``if`` or ``try``."""
    statements = []
    for node in body:
        statements.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            nested = node.body + node.orelse + getattr(node, "finalbody", [])
            for handler in getattr(node, "handlers", []):
                nested += handler.body
            statements += _top_level_statements(nested)
    return statements


def _reexports(node: ast.ImportFrom, package: str) -> bool:
    return node.level > 0 or (node.module or "").startswith(f"{package}.")


def _assigned(module: ModuleType, *, package: str | None) -> set[str]:
    """Names the source binds at its top level: assigned, or (a package's) re-exported."""
    names: set[str] = set()
    for node in _top_level_statements(ast.parse(inspect.getsource(module)).body):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif package and isinstance(node, ast.ImportFrom) and _reexports(node, package):
            names |= {alias.asname or alias.name for alias in node.names}
            continue
        else:
            continue
        names |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _public_names(module: ModuleType) -> set[str]:
    defined = {name for name, value in vars(module).items()
               if (inspect.isclass(value) or inspect.isfunction(value))
               and value.__module__ == module.__name__}
    package = module.__name__ if hasattr(module, "__path__") else None
    assigned = _assigned(module, package=package)
    # A module's logger is how it reports, not something callers use.
    return {name for name in defined | assigned
            if not name.startswith("_") and not isinstance(vars(module).get(name), logging.Logger)}


def test_every_package_with_a_public_surface_is_checked() -> None:
    checked = _with_all()
    for required in ("greengrass_machine_learning_sdk", "greengrass_machine_learning_sdk.feedback",
                     "serve_app.client", "serve_app.ingress", "cluster", "vocabulary.errors",
                     "vocabulary.connectors", "vocabulary.names", "vocabulary.limits",
                     "vocabulary.specs", "vocabulary.feedback_specs", "vocabulary.wire",
                     "deployments.output"):
        assert required in checked


@pytest.mark.parametrize("module_name", _with_all())
def test_all_names_exist_once(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert [name for name in module.__all__ if not hasattr(module, name)] == []
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("module_name", _with_all())
def test_public_names_are_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    unexported = _public_names(module) - set(module.__all__)
    assert unexported == set()


# --- the drop-in SDK ------------------------------------------------------------------------


def test_sdk_exports_the_original_names() -> None:
    assert sorted(greengrass_machine_learning_sdk.__all__) == [
        "GreengrassDependencyException", "GreengrassInferenceException", "StreamingBody",
        "client",
    ]
    for name in greengrass_machine_learning_sdk.__all__:
        assert getattr(greengrass_machine_learning_sdk, name) is getattr(serve_app, name)
    # Nothing else is reachable from the package but its submodule ``feedback``.
    public = {name for name in vars(greengrass_machine_learning_sdk)
              if not name.startswith("_") and name != "feedback"}
    assert public == set(greengrass_machine_learning_sdk.__all__)
    assert issubclass(feedback.GreengrassFeedbackException, Exception)
    assert feedback.GreengrassFeedbackException is serve_app.GreengrassFeedbackException


def test_client_imports_no_runtime_and_no_ray() -> None:
    code = ("import sys, greengrass_machine_learning_sdk as ml; "
            "import greengrass_machine_learning_sdk.feedback; "
            "ml.client('inference'); ml.client('feedback'); "
            "print(sorted(m for m in ('mxnet', 'dlr', 'tvm', 'ray', 'deployments', 'cv2', "
            "'pydantic', 'numpy', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_serving_path_never_imports_the_compiler() -> None:
    code = ("import sys, serve_app.app, deployments.service, deployments.inference; "
            "print('tvm' in sys.modules, 'gluoncv' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False False"
