"""The fenced code blocks of one section of README.md, for tests that run the README."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def section(heading: str) -> str:
  """The text of the ``## `` section whose title starts with `heading`, to the next ``## ``."""
  text = README.read_text()
  starts = [m.start() for m in re.finditer(r"^## ", text, flags=re.M)] + [len(text)]
  for a, b in zip(starts, starts[1:]):
    if text[a + 3 :].startswith(heading):
      return text[a:b]
  raise LookupError(f"README.md has no '## {heading}' section")


def python_blocks(heading: str) -> list[str]:
  """The ```` ```python ```` blocks of the README section titled `heading`, in order."""
  return re.findall(r"^```python\n(.*?)^```", section(heading), flags=re.S | re.M)
