"""Values from TVM and its LLVM for the tests, asked in a fresh interpreter: TVM is never
imported into the suite's process, where DLR is (they crash together)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from typing import Any


@functools.cache
def llvm_value(expression: str) -> str:
    """``expression`` evaluated with ``tvm`` and ``tvm.target.codegen`` imported, as text."""
    return subprocess.run([sys.executable, "-c", "import tvm; from tvm.target import codegen; "
                           f"print({expression})"], capture_output=True, text=True,
                          check=True).stdout.strip()


def tvm_json(code: str, *args: str) -> Any:
    """What ``code`` (a script that imports TVM, given ``args``) prints as JSON on its last line."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


def this_cpu_target() -> str:
    """This machine's LLVM target string with its -mcpu named."""
    return f"llvm -mcpu={llvm_value('codegen.llvm_get_system_cpu()')}"
