"""Where the time of one LARS step goes: HLO census and a timed breakdown.

Usage (from the repository root):

    python -m benchmarks.profile_step            # ResNet-50 tree
    python -m benchmarks.profile_step --tree vit_b16

1. Census of the optimized HLO of the jitted, donated step (`compiled.as_text()`)
   for SGD-momentum, optax.lars and lars_jax.lars: reduction fusions (YNNPACK
   custom fusions, or native reduces), elementwise loop fusions, and the
   temporary bytes of XLA's memory analysis, plus the parameter-sized
   intermediate buffers by name.
2. The step split into its passes, each compiled and timed on its own (round-robin,
   medians), next to the whole step and SGD-momentum: the per-leaf norms of w and
   of the decayed update u = g + wd * w as `scale_by_trust_ratio_with_decay` takes
   them (its own code, keep_stats=True, with only the norms returned, so XLA drops
   the scaled update), and the elementwise update passes with a fixed trust ratio.
   These two add up to the step. The norms of w alone (`_numerics.layer_norms`)
   are timed too, so the norms of u are the difference. Each part's reduction count
   and temporary bytes are printed with it, to show that it does what its name says.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp

import lars_jax
from benchmarks import harness
from benchmarks import trees as trees_lib
from lars_jax import _numerics


def census(hlo: str, param_bytes: int) -> dict:
  entry = hlo[hlo.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  lines = [ln.strip() for ln in entry.splitlines()[1:]]
  ynn = sum(1 for ln in lines if "__ynn_fusion" in ln)
  native_reduce = sum(
    1 for ln in lines if re.search(r"reduce[\w.-]* = .*(reduce|fusion)\(", ln) and "ynn" not in ln
  )
  loops = sum(1 for ln in lines if "kind=kLoop" in ln)
  root = next(ln for ln in lines if ln.startswith("ROOT"))
  outputs = set(re.findall(r"%([\w.-]+)", root))  # the root and its operands
  big = []
  for ln in lines:
    m = re.match(r"%([\w.-]+) = f32\[([\d,]+)\]", ln)
    if not m or m.group(1) in outputs or "parameter(" in ln:
      continue
    n = 1
    for d in m.group(2).split(","):
      n *= int(d)
    if 4 * n >= 65536:
      big.append((m.group(1), 4 * n))
  return dict(ynn=ynn, native_reduce=native_reduce, loops=loops, big=big)


def timed(fns: dict, repeats: int) -> dict:
  for f, args in fns.values():
    jax.block_until_ready(f(*args))
  ts = {k: [] for k in fns}
  for _ in range(repeats):
    for k, (f, args) in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      ts[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) * 1e3 for k, v in ts.items()}


def main() -> None:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--tree", default="resnet50")
  ap.add_argument("--repeats", type=int, default=15)
  args = ap.parse_args()
  shapes = trees_lib.TREES[args.tree]()
  params = trees_lib.materialize(shapes, seed=0)
  grads = trees_lib.materialize(shapes, seed=1, scale=0.01)
  n = trees_lib.n_params(shapes)
  print(
    f"{harness.machine()}; tree {args.tree}: {n:,} params, {trees_lib.n_leaves(shapes)} leaves\n"
  )

  opts = harness.optimizers(include_presets=False)
  names = ["sgd-momentum", "optax.lars", "lars_jax.lars"]
  print(
    "| step | YNNPACK reductions | native reductions | loop fusions | temp MB | param-sized temps |"
  )
  print("|---|---:|---:|---:|---:|---|")
  steps = {}
  for k in names:
    c = harness.Compiled(opts[k](), params, grads)
    steps[k] = c
    cs = census(c.exe.as_text(), 4 * n)
    big = ", ".join(f"{b / 1e6:.1f}MB" for _, b in sorted(cs["big"], key=lambda x: -x[1])[:4])
    more = f" (+{len(cs['big']) - 4})" if len(cs["big"]) > 4 else ""
    print(
      f"| `{k}` | {cs['ynn']} | {cs['native_reduce']} | {cs['loops']} | "
      f"{c.temp_bytes / 1e6:.2f} | {big or '-'}{more} |"
    )

  # The passes of lars_jax.lars, each on its own.
  m2 = lars_jax.masks.min_ndim(2)
  p_leaves, treedef = jax.tree.flatten(params)
  g_leaves = treedef.flatten_up_to(grads)
  idx = [i for i, b in enumerate(jax.tree.leaves(lars_jax.masks.resolve(m2, params))) if b]

  def norms_w(p):
    pl = jax.tree.leaves(p)
    return _numerics.layer_norms([[pl[i] for i in idx]], [()] * len(idx))

  # The norms as lars() takes them: the transform that owns the decayed update and
  # its norm, keeping its statistics. Only the norms are returned, so XLA drops the
  # scaled update; what is left are its reductions: |w| and |u| of a recomputed
  # u = g + wd * w, which read g and w (the census column shows their count).
  decay_ratio = lars_jax.scale_by_trust_ratio_with_decay(
    harness.WD, weight_decay_mask=m2, trust_ratio_mask=m2, keep_stats=True
  )

  def norms_wu(p, g):
    stats = decay_ratio.update(g, decay_ratio.init(p), p)[1].stats
    return jax.tree.leaves((stats.param_norm, stats.update_norm))

  ratio = jnp.linspace(0.5, 1.5, len(idx))

  def update_passes(pl, tl, gl, ratio):
    new_p, new_t = list(pl), list(tl)
    pos = {i: k for k, i in enumerate(idx)}
    for i, (p, t, g) in enumerate(zip(pl, tl, gl)):
      x = g + harness.WD * p if i in pos else g
      if i in pos:
        x = x * ratio[pos[i]]
      t = -harness.LR * x + harness.MOMENTUM * t
      new_t[i], new_p[i] = t, p + t
    return new_p, new_t

  upd = jax.jit(update_passes, donate_argnums=(0, 1))
  state = [[jnp.copy(x) for x in p_leaves], [jnp.zeros_like(x) for x in p_leaves]]

  def run_update():
    state[:] = upd(state[0], state[1], g_leaves, ratio)
    return state

  # label: (function, args to compile it with, bytes moved per param)
  parts = {
    "  norms of w and u = g + wd*w (reductions)": (jax.jit(norms_wu), (params, grads), 12),
    "  update + apply (loops, fixed ratio)": (upd, (state[0], state[1], g_leaves, ratio), 28),
    "  (of the norms: w alone)": (jax.jit(norms_w), (params,), 4),
  }
  hlo = {
    "sgd-momentum step": steps["sgd-momentum"].exe,
    "lars_jax.lars step": steps["lars_jax.lars"].exe,
  }
  for k, (f, a, _) in parts.items():
    hlo[k] = f.lower(*a).compile()
  fns = {
    "sgd-momentum step": (steps["sgd-momentum"].run, ()),
    "lars_jax.lars step": (steps["lars_jax.lars"].run, ()),
    **{k: (f, a) for k, (f, a, _) in parts.items()},
  }
  fns["  update + apply (loops, fixed ratio)"] = (run_update, ())
  moved = {"sgd-momentum step": 24, "lars_jax.lars step": 40}
  moved.update({k: b for k, (_, _, b) in parts.items()})
  med = timed(fns, args.repeats)
  print(f"\nmedian of {args.repeats} round-robin repeats; the first two parts add up to the step\n")
  print("| part | ms | bytes moved per param | GB/s | reductions | temp MB |")
  print("|---|---:|---:|---:|---:|---:|")
  for k, v in med.items():
    gbs = moved[k] * n / v / 1e6
    cs = census(hlo[k].as_text(), 4 * n)
    mem = hlo[k].memory_analysis()
    temp = f"{mem.temp_size_in_bytes / 1e6:.2f}" if mem is not None else "?"
    print(
      f"| {k} | {v:.2f} | {moved[k]} | {gbs:.1f} | {cs['ynn'] + cs['native_reduce']} | {temp} |"
    )


if __name__ == "__main__":
  main()
