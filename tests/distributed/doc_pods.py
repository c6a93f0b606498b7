"""Runs the Python code blocks of the README's 'Training on pods', in order, in one namespace.

`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed/doc_pods.py`
prints the doc's own output, then `PASS doc_pods`. A failing block exits non-zero with
its traceback.
"""

from __future__ import annotations

import os
import pathlib
import sys
import types

if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

TESTS = pathlib.Path(__file__).resolve().parents[1]
DOC = TESTS.parent / "README.md"


def main() -> int:
  import _common as C

  C.require_devices(8)
  sys.path.insert(0, str(TESTS))
  from readme_blocks import python_blocks

  code = python_blocks("Training on pods")
  if len(code) < 2:
    raise SystemExit(f"expected the pjit and shard_map blocks in {DOC}, found {len(code)}")
  module = types.ModuleType("pods_doc")  # flax dataclasses look their module up
  sys.modules[module.__name__] = module
  namespace = module.__dict__
  checks = {
    f"doc_pods block {i + 1}": (
      lambda src=src, i=i: exec(compile(src, f"{DOC}:block{i + 1}", "exec"), namespace)
    )
    for i, src in enumerate(code)
  }
  return C.run_checks(checks)


if __name__ == "__main__":
  sys.exit(main())
