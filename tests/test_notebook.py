"""notebooks/large_batch_lars.ipynb: committed executed and small; runs clean top to bottom."""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("sklearn")
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
  """LARS test accuracy (%) per batch size from the printed Markdown table."""
  rows = re.findall(r"^\| (\d+) \| \d+ \| [\d.]+ \| ([\d.]+) ± [\d.]+ \|", text, re.M)
  return {int(b): float(acc) for b, acc in rows}


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
  accs = _lars_accuracies(_stdout(nb))
  assert accs and all(a > 70 for a in accs.values()), accs


def test_notebook_executes_clean(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=180,
    kernel_name="python3",
    resources={"metadata": {"path": str(ROOT)}},
  )
  client.execute()  # raises CellExecutionError on any failing cell
  text = _stdout(nb)
  accs = _lars_accuracies(text)
  assert set(accs) == {128, 1437}, text[-2000:]
  for b, acc in accs.items():
    assert acc > 70, (b, acc)  # chance is 10 %
  assert "trust_ratio" in text  # the diagnostics table header
