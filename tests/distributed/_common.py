"""Shared pieces of the multi-device scripts: the problem, a NumPy LARS reference, a runner.

Imported by scripts run as `python tests/distributed/<script>.py` in a subprocess whose
environment already holds `XLA_FLAGS=--xla_force_host_platform_device_count=N`; nothing
here touches JAX at import time beyond importing it.

The reference is written from the LARS equations (issue 1 / LARS_VARIANTS.md), per leaf,
in float64, not from lars_jax:

    u = g + wd * w
    r = eta * |w| / (|u| + eps)   if adapted and |w| > 0 and |u| > 0, else 1
    v = mu * v + lr * r * u
    w = w - v

Gradients come from JAX on ONE device over the whole batch (float32 forward/backward on
the float64 reference params rounded to float32).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Hyperparameters shared by every check. Biases and other 1-D leaves are not adapted
# (trust_ratio_mask=min_ndim(2)) so the trees mix adapted and plain leaves.
LR = 1.0
WD = 1e-2
ETA = 0.02
EPS = 0.0
MU = 0.9
STEPS = 3
BATCH, D_IN, D_HID, D_OUT = 16, 8, 16, 8

# Tolerances of every sharded-vs-reference comparison (float32 run vs float64 reference).
RTOL, ATOL = 1e-5, 1e-6


def require_devices(n: int) -> None:
  if jax.device_count() != n:
    raise SystemExit(
      f"expected {n} devices, got {jax.device_count()}: run with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={n} set before JAX is imported"
    )


def make_problem(seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
  """A 3-layer MLP's params (float32 NumPy) and a regression batch."""
  rng = np.random.default_rng(seed)

  def dense(i, o):
    return {
      "kernel": (rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32),
      "bias": (0.1 * rng.standard_normal(o)).astype(np.float32),
    }

  params = {"dense0": dense(D_IN, D_HID), "dense1": dense(D_HID, D_HID), "out": dense(D_HID, D_OUT)}
  x = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
  y = rng.standard_normal((BATCH, D_OUT)).astype(np.float32)
  return params, x, y


def mlp_loss(p, x, y):
  """Mean squared error of a tanh MLP (the user's model, unsharded)."""
  h = jnp.tanh(x @ p["dense0"]["kernel"] + p["dense0"]["bias"])
  h = jnp.tanh(h @ p["dense1"]["kernel"] + p["dense1"]["bias"])
  out = h @ p["out"]["kernel"] + p["out"]["bias"]
  return jnp.mean(jnp.square(out - y))


def make_tx(adapt_all: bool = False, **kwargs):
  """`lars_jax.lars` with the shared hyperparameters (`kwargs`: axis_name, eps, ...).

  Adapts only leaves with ndim >= 2 (biases take plain momentum-SGD steps) unless
  `adapt_all`.
  """
  import lars_jax

  kw = dict(
    weight_decay=WD,
    trust_coefficient=ETA,
    eps=EPS,
    momentum=MU,
    trust_ratio_mask=True if adapt_all else lars_jax.masks.min_ndim(2),
  )
  kw.update(kwargs)
  return lars_jax.lars(LR, **kw)


def numpy_lars(params: dict, grads: dict, vel: dict, adapt_all: bool) -> tuple[dict, dict]:
  """One LARS step on float64 NumPy trees; returns (params, velocity)."""
  new_p, new_v = {}, {}
  for path, w in _items(params):
    g = np.asarray(_get(grads, path), np.float64)
    v = _get(vel, path)
    u = g + WD * w
    r = 1.0
    if adapt_all or w.ndim >= 2:
      pn, un = np.linalg.norm(w), np.linalg.norm(u)
      if pn > 0 and un > 0:
        r = ETA * pn / (un + EPS)
    v = MU * v + LR * r * u
    _set(new_v, path, v)
    _set(new_p, path, w - v)
  return new_p, new_v


def reference_trajectory(
  params, x, y, steps: int = STEPS, adapt_all: bool = False
) -> list[tuple[dict, dict]]:
  """[(params_t, velocity_t)] for t = 1..steps, from the NumPy reference."""
  grad_fn = jax.jit(jax.grad(mlp_loss))  # NumPy inputs: runs on this process' first device
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  v = jax.tree.map(np.zeros_like, p)
  out = []
  for _ in range(steps):
    g = grad_fn(jax.tree.map(lambda a: a.astype(np.float32), p), x, y)
    p, v = numpy_lars(p, jax.tree.map(np.asarray, g), v, adapt_all)
    out.append((p, v))
  return out


def assert_close(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
  """Leafwise assert_allclose with the leaf path in the message."""
  a_leaves = jax.tree_util.tree_leaves_with_path(actual)
  e_leaves = jax.tree.leaves(expected)
  if len(a_leaves) != len(e_leaves):
    raise AssertionError(f"{what}: {len(a_leaves)} leaves vs {len(e_leaves)}")
  for (path, a), e in zip(a_leaves, e_leaves):
    e = np.asarray(e, np.float64)
    # Multi-process: compare each shard this process holds with its slice of `e`.
    pieces = (
      [(a, e)]
      if not isinstance(a, jax.Array) or a.is_fully_addressable
      else [(sh.data, e[sh.index]) for sh in a.addressable_shards]
    )
    for got, want in pieces:
      np.testing.assert_allclose(
        np.asarray(got, np.float64),
        want,
        rtol=rtol,
        atol=atol,
        err_msg=f"{what} at {jax.tree_util.keystr(path)}",
      )


def max_rel_diff(actual, expected) -> float:
  """max |a - e| / max(|e|) over leaves (to show that a wrong setup IS different)."""
  worst = 0.0
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    worst = max(worst, float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-30)))
  return worst


# ----------------------------------------------------------------------------
# Sharding helpers and the two sharded training loops (pjit, shard_map), shared by the
# single-host and multi-process scripts.


def is_p(x) -> bool:
  return isinstance(x, P)


def named(mesh, specs):
  """A tree of PartitionSpecs -> the same tree of NamedShardings on `mesh`."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=is_p)


def put(tree, shardings):
  """Global arrays from host values every process holds (works multi-process)."""
  return jax.tree.map(
    lambda a, sh: jax.make_array_from_callback(np.shape(a), sh, lambda idx: np.asarray(a)[idx]),
    tree,
    shardings,
  )


def spec_of(sharding, ndim: int) -> tuple:
  """A NamedSharding's spec padded to `ndim` entries (P('m') == P('m', None))."""
  spec = tuple(sharding.spec)
  return spec + (None,) * (ndim - len(spec))


def assert_shardings(tree, specs, what: str, only_split: bool = False) -> None:
  """Every leaf's sharding is a NamedSharding with the spec at the same place in `specs`."""
  for (path, a), spec in zip(
    jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(specs, is_leaf=is_p)
  ):
    if only_split and not any(spec):
      continue
    sh = a.sharding
    if not isinstance(sh, NamedSharding) or spec_of(sh, a.ndim) != spec_of(
      NamedSharding(sh.mesh, spec), a.ndim
    ):
      raise AssertionError(f"{what}{jax.tree_util.keystr(path)}: {sh}, want {spec}")


def state_shardings(tx, abstract_state, param_shardings, replicated):
  """The documented recipe: state leaves that mirror params take the params' shardings,
  everything else (counts) gets `replicated`."""
  return optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )


# Kernels split by columns (dense0) or rows (dense1, out); biases split or replicated
# (the two (16,) biases differ in sharding: explicit mode cannot stack them).
PJIT_SPECS = {
  "dense0": {"kernel": P(None, "model"), "bias": P("model")},
  "dense1": {"kernel": P("model", None), "bias": P()},
  "out": {"kernel": P("model", None), "bias": P("model")},
}


def pjit_run(mesh, explicit: bool = False, adapt_all: bool = False) -> None:
  """jit + NamedSharding: params split over `model`, batch over `data`, compared with
  the NumPy reference at every step; the state is asserted to be sharded like params."""
  params, x, y = make_problem()
  ref = reference_trajectory(params, x, y, adapt_all=adapt_all)
  tx = make_tx(adapt_all=adapt_all)
  param_sh = named(mesh, PJIT_SPECS)
  data_sh = NamedSharding(mesh, P("data"))
  p = put(params, param_sh)
  assert_shardings(p, PJIT_SPECS, "params")

  # init on sharded arrays, eagerly: the trace is created where its parameter lives.
  assert_shardings(tx.init(p)[-1].trace, PJIT_SPECS, "eager init trace")
  state_sh = state_shardings(tx, jax.eval_shape(tx.init, p), param_sh, NamedSharding(mesh, P()))
  s = jax.jit(tx.init, out_shardings=state_sh)(p)
  assert_shardings(s[-1].trace, PJIT_SPECS, "jit init trace")

  def loss(q, xb, yb):
    if explicit:  # explicit sharding: say where a contraction over a split axis lands
      h = jnp.tanh(jnp.matmul(xb, q["dense0"]["kernel"]) + q["dense0"]["bias"])
      h = jnp.matmul(h, q["dense1"]["kernel"], out_sharding=P("data", None))
      h = jnp.tanh(h + q["dense1"]["bias"])
      out = jnp.matmul(h, q["out"]["kernel"], out_sharding=P("data", None))
      return jnp.mean(jnp.square(out + jax.sharding.reshard(q["out"]["bias"], P()) - yb))
    return mlp_loss(q, xb, yb)

  def step(q, st, xb, yb):
    g = jax.grad(loss)(q, xb, yb)
    u, st = tx.update(g, st, q)
    return optax.apply_updates(q, u), st

  jstep = jax.jit(
    step,
    in_shardings=(param_sh, state_sh, data_sh, data_sh),
    out_shardings=(param_sh, state_sh),
    donate_argnums=(0, 1),
  )
  xs, ys = put((x, y), (data_sh, data_sh))
  for t in range(STEPS):
    p, s = jstep(p, s, xs, ys)
    assert_shardings(p, PJIT_SPECS, f"params step {t + 1}")
    assert_shardings(s[-1].trace, PJIT_SPECS, f"trace step {t + 1}")
    assert_close(p, ref[t][0], f"pjit params, step {t + 1}")
    # lars applies -lr before the trace, so the buffer holds -v.
    assert_close(jax.tree.map(lambda a: -a, s[-1].trace), ref[t][1], f"pjit trace {t + 1}")

  # Without out_shardings GSPMD chooses, but the state of a split leaf stays split like
  # it, never gathered. (A small replicated leaf may come out split: pin the state with
  # out_shardings, as above.)
  _, st = jax.jit(step)(p, s, xs, ys)
  assert_shardings(st[-1].trace, PJIT_SPECS, "trace, jit without out_shardings", only_split=True)


# Megatron-style MLP for shard_map: dense0 split by columns, dense1 by rows (partial
# sums psum'ed over `model`), dense1's bias and the output layer replicated.
SM_SPECS = {
  "dense0": {"kernel": P(None, "model"), "bias": P("model")},
  "dense1": {"kernel": P("model", None), "bias": P()},
  "out": {"kernel": P(), "bias": P()},
}
# The same, as mesh-axis names per leaf, with a prefix (None) for the whole `out` layer.
SM_NAMES = {"dense0": "model", "dense1": {"kernel": "model", "bias": None}, "out": None}


def sm_local_loss(p, x, y):
  """The MLP on this device's slices; equals mlp_loss on the full params."""
  h = jnp.tanh(x @ p["dense0"]["kernel"] + p["dense0"]["bias"])
  h = jax.lax.psum(h @ p["dense1"]["kernel"], "model")
  h = jnp.tanh(h + p["dense1"]["bias"])
  out = h @ p["out"]["kernel"] + p["out"]["bias"]
  return jnp.mean(jnp.square(out - y))


def sm_run(tx, params, x, y, mesh, steps: int = STEPS, check_vma: bool = True):
  """`steps` shard_map train steps of the Megatron MLP; returns [(params, state)]."""
  n_model = mesh.shape["model"]
  state_specs = state_shardings(tx, jax.eval_shape(tx.init, params), SM_SPECS, P())

  def step(p, s, xb, yb):
    # Each device sees only its slice of the split leaves.
    assert p["dense0"]["kernel"].shape == (D_IN, D_HID // n_model)
    assert p["dense1"]["kernel"].shape == (D_HID // n_model, D_HID)
    assert p["out"]["kernel"].shape == (D_HID, D_OUT)
    # pmean the LOSS, not the grads: under check_vma the grad of a param replicated
    # over `data` already comes back psum'ed over `data` (transpose of its implicit pvary).
    g = jax.grad(lambda q: jax.lax.pmean(sm_local_loss(q, xb, yb), "data"))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  sm_step = jax.jit(
    jax.shard_map(
      step,
      mesh=mesh,
      in_specs=(SM_SPECS, state_specs, P("data"), P("data")),
      out_specs=(SM_SPECS, state_specs),
      check_vma=check_vma,
    )
  )
  p = put(params, named(mesh, SM_SPECS))
  s = jax.jit(tx.init, out_shardings=named(mesh, state_specs))(p)
  xs, ys = put((x, y), (NamedSharding(mesh, P("data")),) * 2)
  out = []
  for _ in range(steps):
    p, s = sm_step(p, s, xs, ys)
    out.append((p, s))
  return out


def sm_check(mesh, ref=None) -> None:
  """shard_map with axis_name given as per-leaf names and as the PartitionSpec tree."""
  params, x, y = make_problem()
  ref = ref or reference_trajectory(params, x, y)
  for label, axis_name in [("names", SM_NAMES), ("specs", SM_SPECS)]:
    for t, (p, s) in enumerate(sm_run(make_tx(axis_name=axis_name), params, x, y, mesh)):
      assert_close(p, ref[t][0], f"shard_map axis_name={label}, params step {t + 1}")
      trace = jax.tree.map(lambda a: -a, s[-1].trace)
      assert_close(trace, ref[t][1], f"shard_map axis_name={label}, trace step {t + 1}")


def run_checks(checks: dict[str, Callable[[], object]]) -> int:
  """Runs each check, prints `PASS name (s)` / `FAIL name` + traceback; returns exit code."""
  failed = 0
  for name, fn in checks.items():
    t0 = time.perf_counter()
    try:
      note = fn()
    except Exception:  # report every check, fail at the end
      failed += 1
      print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    else:
      extra = f" {note}" if note else ""
      print(f"PASS {name} ({time.perf_counter() - t0:.1f}s){extra}", flush=True)
  return 1 if failed else 0


def _items(tree: dict, prefix: tuple = ()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _items(v, (*prefix, k))
    else:
      yield (*prefix, k), v


def _get(tree: dict, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


if __name__ == "__main__":
  sys.exit("a helper module: run single_host.py, multi_process.py or doc_pods.py")
