"""The optimizer under pjit with mixed splits: all-reduces and temporaries, side by side.

`python -m benchmarks.pod_collectives` (sets 8 virtual CPU devices itself) compiles the
optimizer part of a train step, ``(params, state, grads) -> (params, state)`` with
``optax.apply_updates`` inside, on a 2 (data) x 4 (model) mesh, for a transformer-like
tree whose leaves are split Megatron-style over `model`, FSDP-style over `data`, over
both, or not at all; the optimizer state is sharded like the params. For each optimizer
it prints:

- the all-reduces in the compiled HLO (and any other collective), and the distinct
  device groups they run over;
- the temporaries (`memory_analysis().temp_size_in_bytes`, per device) as a share of
  the per-device parameter bytes, for two argument orders with the same donation
  (``donate_argnums=(0, 1)``): ``f(params, state, grads)`` donates params and state,
  whose buffers the outputs reuse; ``f(grads, state, params)`` donates the gradients
  instead, and the new params need their own buffer;
- the same on one device.

"lars_jax.lars in shard_map" is the prototype for one collective under pjit: the
optimizer update (only it) wrapped in `jax.shard_map` with ``axis_name=`` the params'
PartitionSpecs, inside the same jitted function. lars_jax then sums every leaf's squared
norms with one psum over the union of the mesh axes, whatever each leaf is split over.
The script checks that its step equals the pjit step (rtol 1e-6).
"""

from __future__ import annotations

import os
import re
import sys

if __name__ == "__main__":
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lars_jax  # noqa: E402
from lars_jax import sharding as lsh  # noqa: E402

D, H, BLOCKS = 512, 2048, 4
M2 = lars_jax.masks.min_ndim(2)


def tree_specs() -> tuple[dict, dict]:
  """Shapes and PartitionSpecs: kernels split over data and model (both orders), some
  over model only or data only, biases over model or replicated, norms replicated."""
  shapes, specs = {}, {}
  shapes["embed"], specs["embed"] = (1024, D), P("model", None)  # model only
  for b in range(BLOCKS):
    blk = {
      "qkv": ((D, 3 * D), P("data", "model")),
      "attn_out": ((D, D), P("model", "data")),
      "mlp_in": ((D, H), P("data", "model")),
      "mlp_in_bias": ((H,), P("model")),
      "mlp_out": ((H, D), P("model", "data")),
      "mlp_out_bias": ((D,), P()),
      "ln_scale": ((D,), P()),
      "ln_bias": ((D,), P()),
    }
    shapes[f"block{b}"] = {k: v[0] for k, v in blk.items()}
    specs[f"block{b}"] = {k: v[1] for k, v in blk.items()}
  shapes["head"], specs["head"] = (D, 1024), P("data", None)  # data only (FSDP)
  return shapes, specs


def optimizers(specs) -> dict:
  common = dict(weight_decay=1e-4, weight_decay_mask=M2, trust_ratio_mask=M2, momentum=0.9)
  return {
    "sgd-momentum": optax.sgd(0.1, momentum=0.9),
    "optax.lars": optax.lars(0.1, **common),
    "lars_jax.lars": lars_jax.lars(0.1, **common),
    "lars_jax.lars in shard_map": lars_jax.lars(0.1, axis_name=specs, **common),
  }


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(hlo: str) -> tuple[dict, list[str]]:
  """Counts of each collective op in optimized HLO text, and the distinct replica groups
  of the all-reduces. The opcode is matched, not an operand name such as
  `get-tuple-element(%all-reduce.3)`; XLA combines all-reduces into one of tuple shape."""
  out = {}
  for name in COLLECTIVES:
    n = len(re.findall(rf"(?<![\w%.-]){name}(?:-start)?\(", hlo))
    if n:
      out[name] = n
  groups = re.findall(
    r"(?<![\w%.-])all-reduce(?:-start)?\(.*?replica_groups=(.*?), use_global", hlo
  )
  return out, sorted(set(groups))


def step_fn(tx, order: str, mesh=None, specs=None, state_specs=None):
  def update(params, state, grads):
    if mesh is not None:  # the optimizer update alone on local slices
      return jax.shard_map(
        lambda g, s, p: tx.update(g, s, p),
        mesh=mesh,
        in_specs=(specs, state_specs, specs),
        out_specs=(specs, state_specs),
      )(grads, state, params)
    return tx.update(grads, state, params)

  def f(params, state, grads):
    updates, state = update(params, state, grads)
    return optax.apply_updates(params, updates), state

  if order == "params, state, grads":
    return f
  return lambda grads, state, params: f(params, state, grads)


def measure(tx, params, grads, param_sh, order, **sm) -> dict:
  state_sh = lsh.state_shardings(tx, params, param_sh) if param_sh is not None else None
  fn = step_fn(tx, order, **sm)
  args = (params, None, grads) if order == "params, state, grads" else (grads, None, params)
  sh = None
  if param_sh is not None:
    sh = (param_sh, state_sh, param_sh)
  state = jax.jit(tx.init, out_shardings=state_sh)(params) if sh else tx.init(params)
  args = (args[0], state, args[2])
  jitted = jax.jit(fn, in_shardings=sh, out_shardings=sh[:2] if sh else None, donate_argnums=(0, 1))
  compiled = jitted.lower(*args).compile()
  mem = compiled.memory_analysis()
  hlo = compiled.as_text()
  counts, groups = collectives(hlo)
  fresh = mem.output_size_in_bytes - mem.alias_size_in_bytes  # outputs not in donated buffers
  return {
    "temp": mem.temp_size_in_bytes,
    "fresh": fresh,
    "collectives": counts,
    "groups": groups,
    "compiled": compiled,
  }


def main() -> int:
  assert jax.device_count() == 8, "run as a script: it sets 8 CPU devices before JAX starts"
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  shapes, specs = tree_specs()
  is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
  rng = np.random.default_rng(0)
  host_p = jax.tree.map(
    lambda s: (0.1 * rng.standard_normal(s)).astype(np.float32), shapes, is_leaf=is_shape
  )
  host_g = jax.tree.map(
    lambda s: (0.01 * rng.standard_normal(s)).astype(np.float32), shapes, is_leaf=is_shape
  )
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  n_params = sum(x.size for x in jax.tree.leaves(host_p))
  per_device = sum(
    np.prod(sh.shard_shape(x.shape)) * 4
    for x, sh in zip(jax.tree.leaves(host_p), jax.tree.leaves(param_sh))
  )
  split_axes = sorted({tuple(a for a in s if a) for s in jax.tree.leaves(specs)}, key=len)
  print(
    f"# {jax.__version__=} {optax.__version__=}; {len(jax.tree.leaves(host_p))} leaves, "
    f"{n_params:,} params; mesh data=2 x model=4; per-device param bytes {per_device:,}"
  )
  print(f"# leaf split axes: {split_axes}\n")
  print(
    "| optimizer | all-reduces (8 devices) | other collectives | temp % per-device params, "
    "f(params, state, grads) | f(grads, state, params) | 1 device, f(params, state, grads) "
    "| 1 device, f(grads, state, params) |"
  )
  print("|---|---:|---|---:|---:|---:|---:|")
  print("<!-- temp % (+ outputs that do not reuse a donated buffer, % of param bytes) -->")
  txs = optimizers(specs)
  results = {}
  for name, tx in txs.items():
    sm = {}
    if "shard_map" in name:
      sm = dict(mesh=mesh, specs=specs, state_specs=lsh.state_shardings(tx, host_p, specs))
    row = {}
    for order in ("params, state, grads", "grads, state, params"):
      p, g = (jax.device_put(t, param_sh) for t in (host_p, host_g))
      row[order] = measure(tx, p, g, param_sh, order, **sm)
      if not sm:
        p1, g1 = jax.device_put((host_p, host_g), jax.devices()[0])
        row["1 " + order] = measure(tx, p1, g1, None, order)
    results[name] = row
    first = row["params, state, grads"]
    ar = first["collectives"].get("all-reduce", 0)
    other = {k: v for k, v in first["collectives"].items() if k != "all-reduce"} or "none"

    def pct(key, base=per_device, row=row):
      if key not in row:
        return "n/a"
      return f"{100 * row[key]['temp'] / base:.2f}% (+{100 * row[key]['fresh'] / base:.0f}%)"

    one = n_params * 4
    print(
      f"| `{name}` | {ar} over {len(first['groups'])} device groups | {other} | "
      f"{pct('params, state, grads')} | {pct('grads, state, params')} | "
      f"{pct('1 params, state, grads', one)} | {pct('1 grads, state, params', one)} |"
    )

  # The shard_map prototype computes the same step as the pjit one.
  a, b = (
    results[k]["params, state, grads"]["compiled"]
    for k in ("lars_jax.lars", "lars_jax.lars in shard_map")
  )
  outs = []
  for compiled, tx in ((a, txs["lars_jax.lars"]), (b, txs["lars_jax.lars in shard_map"])):
    p, g = (jax.device_put(t, param_sh) for t in (host_p, host_g))
    s = jax.jit(tx.init, out_shardings=lsh.state_shardings(tx, p, param_sh))(p)
    outs.append(jax.device_get(compiled(p, s, g)))
  worst = max(
    float(np.max(np.abs(x - y)) / np.max(np.abs(y)))
    for x, y in zip(jax.tree.leaves(outs[1]), jax.tree.leaves(outs[0]))
  )
  print(f"\nshard_map-wrapped step vs pjit step: max relative difference {worst:.1e}")
  for name, row in results.items():
    print(f"{name}: all-reduce groups {row['params, state, grads']['groups']}")
  return 0 if worst < 1e-6 else 1


if __name__ == "__main__":
  sys.exit(main())
