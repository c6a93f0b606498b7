"""How the step time grows with parameter count and with leaf count.

Usage (from the repository root):

    python -m benchmarks.scaling           # 1M..100M params at 64 leaves; 8..2048 leaves at 8M
    python -m benchmarks.scaling --quick   # 1M..30M params, 8..1024 leaves, fewer repeats

Trees are `n_leaves` equal 2-D leaves (so every leaf is decayed and adapted).
Candidates: lars_jax.lars, optax.lars (both wd 1e-4) and optax SGD-momentum, timed
round-robin in one process (medians). Prints two Markdown tables and saves a
log-log plot (``--plot``).
"""

from __future__ import annotations

import argparse
import datetime
import json

import jax
import optax

import lars_jax
from benchmarks import harness
from benchmarks import trees as trees_lib

CANDIDATES = {
  "sgd-momentum": lambda: optax.sgd(harness.LR, momentum=harness.MOMENTUM),
  "optax.lars": lambda: optax.lars(harness.LR, weight_decay=harness.WD),
  "lars_jax.lars": lambda: lars_jax.lars(harness.LR, weight_decay=harness.WD),
}


def measure(n_params: int, n_leaves: int, repeats: int) -> dict:
  shapes = trees_lib.flat_shapes(n_params, n_leaves)
  params = trees_lib.materialize(shapes, seed=0)
  grads = trees_lib.materialize(shapes, seed=1, scale=0.01)
  cands = {k: harness.Compiled(make(), params, grads) for k, make in CANDIDATES.items()}
  med = harness.time_round_robin(cands, repeats, warmup=1)
  out = dict(
    params=trees_lib.n_params(shapes),
    leaves=n_leaves,
    ms={k: v * 1e3 for k, v in med.items()},
    temp_mb={k: c.temp_bytes / 1e6 for k, c in cands.items()},
  )
  del cands, params, grads
  jax.clear_caches()
  return out


def table(rows: list[dict], title: str) -> str:
  names = list(CANDIDATES)
  head = "| params | leaves | " + " | ".join(f"{n} ms" for n in names)
  head += " | lars_jax / sgd | optax.lars / sgd | temp MB (ours / optax.lars) |"
  out = [f"**{title}**", "", head, "|" + "---:|" * (len(names) + 5)]
  for r in rows:
    ms = r["ms"]
    out.append(
      f"| {r['params'] / 1e6:.1f}M | {r['leaves']} | "
      + " | ".join(f"{ms[n]:.2f}" for n in names)
      + f" | {ms['lars_jax.lars'] / ms['sgd-momentum']:.2f}x"
      + f" | {ms['optax.lars'] / ms['sgd-momentum']:.2f}x"
      + f" | {r['temp_mb']['lars_jax.lars']:.2f} / {r['temp_mb']['optax.lars']:.1f} |"
    )
  return "\n".join(out)


def plot(by_size: list[dict], by_leaves: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
  for ax, rows, key, label in (
    (axes[0], by_size, "params", f"parameters ({by_size[0]['leaves']} leaves)"),
    (axes[1], by_leaves, "leaves", f"leaves ({by_leaves[0]['params'] / 1e6:.0f}M params)"),
  ):
    xs = [r[key] for r in rows]
    for n in CANDIDATES:
      ax.plot(xs, [r["ms"][n] for r in rows], "o-", label=n, markersize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("ms per step (median)")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("Jitted donated step on XLA CPU", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


def main() -> None:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--plot", default="benchmarks/scaling.png")
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  if args.quick:
    sizes, leaf_counts, repeats = [1e6, 3e6, 10e6, 30e6], [8, 64, 256, 1024], 3
  else:
    sizes, leaf_counts, repeats = (
      [1e6, 3e6, 10e6, 30e6, 100e6],
      [8, 64, 256, 1024, 2048],
      args.repeats,
    )
  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}; {harness.machine()}")
  print(f"median of {repeats} round-robin repeats\n")
  by_size = [measure(int(n), 64, repeats) for n in sizes]
  print(table(by_size, "Step time vs parameter count (64 leaves)"), "\n", flush=True)
  by_leaves = [measure(8_000_000, k, repeats) for k in leaf_counts]
  print(table(by_leaves, "Step time vs leaf count (8M params)"), "\n", flush=True)
  if args.plot:
    plot(by_size, by_leaves, args.plot)
    print(f"plot: {args.plot}")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(dict(by_size=by_size, by_leaves=by_leaves), fh, indent=1)


if __name__ == "__main__":
  main()
