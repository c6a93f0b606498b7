"""notebooks/large_batch_lars.ipynb: committed executed and small; runs clean top to bottom."""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("mnist1d")
pytest.importorskip("flax")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "large_batch_lars.ipynb"
MAX_BYTES = 300_000  # outputs are committed, but small


def _stdout(nb) -> str:
  return "".join(
    o.get("text", "")
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if o.get("output_type") == "stream"
  )


def _lars_accuracies(text: str) -> dict[int, float]:
  """LARS test accuracy (%) per batch size from the printed Markdown table
  (``| batch | steps | LARS lr | LARS test acc (%) | ...``; an lr may read ``8 (edge)``)."""
  rows = re.findall(
    r"^\| (\d+) \| \d+ \| [\d.e+-]+(?: \(edge\))? \| ([\d.]+) ± [\d.]+ \|", text, re.M
  )
  return {int(b): float(acc) for b, acc in rows}


def _check_accuracies(accs: dict[int, float]) -> None:
  assert set(accs) == {256, 1024}, accs
  assert accs[256] > 70, accs  # chance is 10 %
  assert accs[1024] > 35, accs  # 42 steps in all


def test_committed_notebook_is_executed_in_order_and_small():
  assert NOTEBOOK.stat().st_size < MAX_BYTES
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  for c in code:
    for o in c.outputs:
      assert o.output_type != "error", c.source[:80]
      assert "Traceback" not in o.get("text", ""), c.source[:80]
  assert sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {})) >= 2
  # The experiment is the demo's own `run` (with --quick's settings), not a copy of its loop.
  sources = "\n".join(c.source for c in code)
  assert "lb.run(settings" in sources and "tune" not in sources and "train(" not in sources
  _check_accuracies(_lars_accuracies(_stdout(nb)))


def test_notebook_executes_clean(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=600,  # the experiment cell: about a minute on 2 quiet cores
    kernel_name="python3",
    resources={"metadata": {"path": str(ROOT)}},
  )
  client.execute()  # raises CellExecutionError on any failing cell
  text = _stdout(nb)
  _check_accuracies(_lars_accuracies(text))
  assert "trust_ratio" in text  # the layer_stats table header
