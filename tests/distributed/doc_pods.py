"""Runs the Python code blocks of docs/pods.md, in order, in one namespace (8 devices).

`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed/doc_pods.py`
prints the doc's own output, then `PASS doc_pods`. A failing block exits non-zero with
its traceback.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import types

if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "pods.md"


def blocks(text: str) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def main() -> int:
  import _common as C

  C.require_devices(8)
  code = blocks(DOC.read_text())
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
