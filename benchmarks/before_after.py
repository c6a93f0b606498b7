"""lars_jax.lars before and after a change of the package, side by side in one run.

Usage (from the repository root):

    python -m benchmarks.before_after                  # before = 18d3c96^ (issue 12)
    python -m benchmarks.before_after --before REV --trees resnet50 --repeats 9 [--presets]

The package as it was at git revision REV is extracted (`git archive`) into a
temporary directory as the package `lars_jax_before`, its own imports rewritten
to that name, and imported next to the working tree's `lars_jax`. Nothing is
written into the repository. Both are timed by `benchmarks.harness` in the same
process, round-robin with SGD-momentum as the 1.00x anchor (one jitted, donated
step; medians), in step_time.py's main configuration: `weight_decay_mask =
trust_ratio_mask = masks.min_ndim(2)` (biases and normalisation scales are neither
decayed nor adapted); `--no-masks` adds the variant that adapts every leaf. The
"after / before" column is the median over the rounds of the ratio of the two
steps timed in the same round (a few steps apart), with its range. For
each step it prints the temporary bytes of XLA's memory analysis as a percentage of
the parameter bytes and the kernels of the optimized HLO, and it checks that before
and after return the same parameters after one step and compares their optimized HLO
(names, source locations and the entry signature aside), listing the instructions
that differ by opcode.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
from types import ModuleType

import jax
import numpy as np

from benchmarks import harness
from benchmarks import trees as trees_lib

BEFORE_NAME = "lars_jax_before"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def import_before(rev: str, into: pathlib.Path) -> tuple[ModuleType, str]:
  """The package `lars_jax` at git revision `rev`, imported as `lars_jax_before`."""
  sha = subprocess.run(
    ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
  ).stdout.strip()
  tar = subprocess.run(
    ["git", "archive", "--format=tar", sha, "lars_jax"], cwd=ROOT, check=True, capture_output=True
  ).stdout
  subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
  pkg = into / BEFORE_NAME
  (into / "lars_jax").rename(pkg)
  for f in pkg.rglob("*.py"):
    src = f.read_text()
    # Only import statements (docstring examples start with '>>>' and stay as they are).
    src = re.sub(r"^(\s*)from lars_jax\b", rf"\1from {BEFORE_NAME}", src, flags=re.M)
    src = re.sub(
      r"^(\s*)import lars_jax\s*$", rf"\1import {BEFORE_NAME} as lars_jax", src, flags=re.M
    )
    f.write_text(src)
  sys.path.insert(0, str(into))
  mod = importlib.import_module(BEFORE_NAME)
  assert pathlib.Path(mod.__file__).is_relative_to(into), mod.__file__
  return mod, sha


def candidates(before: ModuleType, no_masks: bool, presets: bool) -> dict[str, object]:
  """SGD-momentum, then each lars_jax candidate of `harness.optimizers` before and after."""
  after, old = harness.optimizers(presets), harness.optimizers(presets, pkg=before)
  out = {"sgd-momentum": after["sgd-momentum"]}
  for k in after:
    if k.startswith("lars_jax.") and k in old and (no_masks or "no masks" not in k):
      name = k.removeprefix("lars_jax.")
      out[f"{name} before"], out[f"{name} after"] = old[k], after[k]
  return out


def same_numbers(cands: dict[str, harness.Compiled], a: str, b: str) -> float:
  """Max relative difference of the params after one step of `a` and `b` (same start)."""
  pa = jax.tree.leaves(cands[a].params)
  pb = jax.tree.leaves(cands[b].params)
  return max(
    float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-30)))
    for x, y in zip(map(np.asarray, pa), map(np.asarray, pb))
  )


def canonical_hlo(text: str) -> list[str]:
  """The instruction lines of an optimized HLO module, without names or source locations."""
  tables = ("FileNames\n", "FunctionNames\n", "FileLocations\n", "StackFrames\n")
  text = "\n\n".join(b for b in text.split("\n\n") if not b.startswith(tables))
  text = re.sub(r", metadata=\{[^}]*\}|, stack_frame_id=\d+", "", text)
  text = re.sub(r"%[\w.-]+|\bparam_\d+\.\d+", "%v", text)
  return [ln.strip() for ln in text.splitlines()[1:] if not ln.startswith("ENTRY")]


def hlo_diff(before: str, after: str) -> str:
  """'identical', or the differing instruction lines counted by opcode (and direction)."""
  a, b = collections.Counter(canonical_hlo(before)), collections.Counter(canonical_hlo(after))
  if a == b:
    return "identical"

  def ops(lines: collections.Counter) -> str:
    kinds: collections.Counter = collections.Counter()
    for ln, k in lines.items():
      m = re.search(r"= \S+ ([\w-]+)\(", ln)
      d = re.search(r"direction=(\w+)", ln)
      kinds[(m.group(1) if m else ln[:40]) + (f" {d.group(1)}" if d else "")] += k
    return ", ".join(f"{k} x{n}" for k, n in kinds.most_common(6))

  return (
    f"{sum((a - b).values())} of {sum(a.values())} lines differ "
    f"(before: {ops(a - b)}; after: {ops(b - a)})"
  )


def run_tree(name: str, makers: dict, repeats: int) -> list[str]:
  shapes = trees_lib.TREES[name]()
  n = trees_lib.n_params(shapes)
  params = trees_lib.materialize(shapes, seed=0)
  grads = trees_lib.materialize(shapes, seed=1, scale=0.01)
  cands = {k: harness.Compiled(make(), params, grads) for k, make in makers.items()}
  for c in cands.values():
    c.run()  # one step each from the same params, for the equality check
  pairs = [(k, k.replace("before", "after")) for k in cands if "before" in k]
  checks = [
    f"- `{b}` vs `{a}`: params after one step differ by {same_numbers(cands, b, a):.1e} "
    f"(max relative); optimized HLO: {hlo_diff(cands[b].exe.as_text(), cands[a].exe.as_text())}"
    for b, a in pairs
  ]
  times = harness.round_robin_samples(cands, repeats)
  med = {k: statistics.median(v) for k, v in times.items()}
  out = [
    f"**{name}**: {n:,} params ({4 * n / 1e6:.1f} MB) in {trees_lib.n_leaves(shapes)} leaves.",
    "",
    *checks,
    "",
    "| step | ms/step | vs SGD-momentum | after / before | temp bytes | temp % params | kernels |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for k, c in cands.items():
    rel = "-"
    if "after" in k:
      # The median of the ratios within a round (both timed within a few steps of
      # each other), and its range over the rounds.
      b = k.replace("after", "before")
      r = sorted(x / y for x, y in zip(times[k], times[b]))
      rel = f"{statistics.median(r):.3f} ({r[0]:.2f}-{r[-1]:.2f})"
    out.append(
      f"| `{k}` | {med[k] * 1e3:.1f} | {med[k] / med['sgd-momentum']:.2f}x | {rel} | "
      f"{c.temp_bytes:,} | {100.0 * c.temp_bytes / (4 * n):.3f}% | {c.kernels} |"
    )
  return out


def main() -> None:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--before", default="18d3c96^", help="git revision of the 'before' package")
  ap.add_argument("--trees", default="resnet50,vit_b16")
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--no-masks", action="store_true", help="also time lars without masks")
  ap.add_argument("--presets", action="store_true", help="also the presets of harness.optimizers")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory(prefix="lars_before_") as tmp:
    before, sha = import_before(args.before, pathlib.Path(tmp))
    head = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--", "lars_jax"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}; {harness.machine()}")
    print(
      f"before: lars_jax at {sha} ({args.before}); after: lars_jax of the working tree at "
      f"{head}{' with local changes' if dirty else ', unmodified'}; "
      f"median of {args.repeats} round-robin repeats after 2 warm-up steps\n"
    )
    makers = candidates(before, args.no_masks, args.presets)
    for name in args.trees.split(","):
      print("\n".join(run_tree(name, makers, args.repeats)), "\n", flush=True)
      jax.clear_caches()


if __name__ == "__main__":
  main()
