"""Step time of LARS and baselines on model-shaped parameter trees.

Usage (from the repository root):

    python -m benchmarks.step_time            # ResNet-50, ViT-B/16, many small leaves
    python -m benchmarks.step_time --quick    # fewer repeats, no ViT (about a minute)

Prints a Markdown table per tree (median ms per jitted, donated step; ratio to
SGD-momentum and to optax.lars; temporary bytes from XLA's memory analysis; kernels
in the optimized HLO) and saves a bar chart (``--plot``). Timings are medians of
round-robin repeats, all candidates side by side in one process.
"""

from __future__ import annotations

import argparse
import datetime
import json

import jax

from benchmarks import harness
from benchmarks import trees as trees_lib


def run_tree(name: str, repeats: int, include_presets: bool, bandwidth: float) -> dict:
  shapes = trees_lib.TREES[name]()
  n = trees_lib.n_params(shapes)
  params = trees_lib.materialize(shapes, seed=0)
  grads = trees_lib.materialize(shapes, seed=1, scale=0.01)
  cands = {
    k: harness.Compiled(make(), params, grads)
    for k, make in harness.optimizers(include_presets).items()
  }
  med = harness.time_round_robin(cands, repeats)
  bw = bandwidth
  rows = []
  for k, c in cands.items():
    rows.append(
      dict(
        name=k,
        ms=med[k] * 1e3,
        x_sgd=med[k] / med["sgd-momentum"],
        x_optax_lars=med[k] / med["optax.lars"],
        temp_bytes=c.temp_bytes,
        temp_pct=100.0 * c.temp_bytes / (4 * n),
        kernels=c.kernels,
      )
    )
  floor_ms = 7 * 4 * n / bw * 1e3
  del cands
  return dict(
    tree=name,
    params=n,
    leaves=trees_lib.n_leaves(shapes),
    copy_gbps=bw / 1e9,
    floor_ms=floor_ms,
    rows=rows,
  )


def table(res: dict) -> str:
  title = (
    f"**{res['tree']}**: {res['params']:,} params in {res['leaves']} leaves; "
    f"at the best copy bandwidth, {res['copy_gbps']:.1f} GB/s, the 7 x 4 B x params "
    f"floor is {res['floor_ms']:.1f} ms."
  )
  columns = [
    "update",
    "ms/step",
    "vs SGD-momentum",
    "vs optax.lars",
    "temp MB",
    "temp % params",
    "kernels",
  ]
  rows = [
    (
      f"`{r['name']}`",
      f"{r['ms']:.1f}",
      f"{r['x_sgd']:.2f}x",
      f"{r['x_optax_lars']:.2f}x",
      f"{r['temp_bytes'] / 1e6:.2f}",
      f"{r['temp_pct']:.2f}%",
      str(r["kernels"]),
    )
    for r in res["rows"]
  ]
  return harness.markdown_table(title, columns, rows)


def plot(results: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  names = [r["name"] for r in results[0]["rows"]]
  fig, ax = plt.subplots(figsize=(8, 3.6), dpi=80)
  width = 0.8 / len(names)
  for j, nm in enumerate(names):
    xs = np.arange(len(results)) + j * width
    ys = [next(r["ms"] for r in res["rows"] if r["name"] == nm) for res in results]
    bars = ax.bar(xs, ys, width, label=nm)
    for b, res in zip(bars, results):
      x = next(r["x_sgd"] for r in res["rows"] if r["name"] == nm)
      ax.text(
        b.get_x() + b.get_width() / 2,
        b.get_height(),
        f"{x:.1f}",
        ha="center",
        va="bottom",
        fontsize=6,
      )
  for i, res in enumerate(results):
    ax.hlines(res["floor_ms"], i - 0.05, i + 0.85, colors="k", linestyles="dotted")
  ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2)
  ax.set_xticklabels(
    [f"{r['tree']}\n{r['params'] / 1e6:.1f}M, {r['leaves']} leaves" for r in results]
  )
  ax.set_yscale("log")
  ax.set_ylabel("ms per step (median)")
  ax.set_title(
    "Jitted donated step on XLA CPU; labels: x SGD-momentum; dotted: 7x4B floor", fontsize=9
  )
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path)


def main() -> None:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--quick", action="store_true", help="5 repeats, no ViT-B/16")
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--trees", default="resnet50,vit_b16,many_leaves")
  ap.add_argument("--no-presets", action="store_true")
  ap.add_argument("--plot", default="benchmarks/step_time.png")
  ap.add_argument("--json", default=None, help="also write the results here")
  args = ap.parse_args()
  names = args.trees.split(",")
  repeats = args.repeats
  if args.quick:
    repeats = min(repeats, 5)
    names = [n for n in names if n != "vit_b16"]
  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}; {harness.machine()}")
  print(f"median of {repeats} round-robin repeats after 2 warm-up steps")
  bw_median, bw_best = harness.copy_bandwidth()
  print(
    f"copy bandwidth (in-place 256 MB scale): median {bw_median / 1e9:.1f} GB/s, "
    f"best {bw_best / 1e9:.1f} GB/s\n"
  )
  results = []
  for name in names:
    res = run_tree(name, repeats, not args.no_presets, bw_best)
    results.append(res)
    print(table(res), "\n", flush=True)
    jax.clear_caches()
  if args.plot:
    plot(results, args.plot)
    print(f"plot: {args.plot}")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(results, fh, indent=1)


if __name__ == "__main__":
  main()
