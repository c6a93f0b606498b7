"""lars_jax on 8 virtual CPU devices: pmap, jit + NamedSharding, shard_map, HLO collectives.

Run by tests/test_distributed.py as
`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed/single_host.py`
(optionally followed by check names). Prints one `PASS name` / `FAIL name` line per check
and exits non-zero if any failed. Every trajectory is compared, step by step, with the
float64 NumPy LARS reference of `_common.py` on one device and the whole batch.
"""

from __future__ import annotations

import os
import re
import sys

if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import _common as C
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import lars_jax

# ----------------------------------------------------------------------------
# 1. pmap data parallel.


def check_pmap():
  params, x, y = C.make_problem()
  ref = C.reference_trajectory(params, x, y)
  n = jax.device_count()
  xs, ys = x.reshape(n, -1, C.D_IN), y.reshape(n, -1, C.D_OUT)

  def run(tx):
    def step(p, s, xb, yb):
      g = jax.lax.pmean(jax.grad(C.mlp_loss)(p, xb, yb), "batch")
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    pstep = jax.pmap(step, axis_name="batch")
    p = jax.tree.map(lambda a: np.broadcast_to(a, (n, *a.shape)), params)
    s = jax.pmap(tx.init)(p)
    out = []
    for _ in range(C.STEPS):
      p, s = pstep(p, s, xs, ys)
      out.append((p, s))
    return out

  for t, (p, s) in enumerate(run(C.make_tx())):
    for leaf in jax.tree.leaves((p, s)):
      leaf = np.asarray(leaf)
      if not (leaf == leaf[:1]).all():
        raise AssertionError(f"step {t + 1}: replicas differ")
    p0 = jax.tree.map(lambda a: a[0], p)
    C.assert_close(p0, ref[t][0], f"pmap params, step {t + 1}")
    # lars applies -lr before the trace, so the buffer holds -v.
    C.assert_close(jax.tree.map(lambda a: -a[0], s[-1].trace), ref[t][1], f"pmap trace {t + 1}")

  # Pitfall: axis_name on replicated params psums their norms over 8 replicas (both
  # norms * sqrt(8)). The ratio only changes through eps, so with eps > 0 it is wrong.
  eps = 1e-2
  bad = run(C.make_tx(eps=eps, axis_name="batch"))[-1][0]
  good = run(C.make_tx(eps=eps))[-1][0]
  diff = C.max_rel_diff(jax.tree.map(lambda a: a[0], bad), jax.tree.map(lambda a: a[0], good))
  if diff < 1e-4:
    raise AssertionError(f"axis_name on replicated params should differ with eps>0: {diff}")
  return f"pitfall diff {diff:.1e}"


# ----------------------------------------------------------------------------
# 2. jit + NamedSharding (pjit) on a 2-D mesh: C.pjit_run.


def check_pjit_auto():
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto), mesh.axis_types
  C.pjit_run(mesh)
  # axis_name has no meaning under plain jit: there is no bound axis to sum over.
  tx = C.make_tx(axis_name=C.PJIT_SPECS)
  p = C.put(C.make_problem()[0], C.named(mesh, C.PJIT_SPECS))
  try:
    jax.jit(tx.update)(p, tx.init(p), p)
  except NameError as e:
    if "unbound axis name" not in str(e):
      raise
  else:
    raise AssertionError("axis_name under plain jit should raise NameError")


def check_pjit_explicit():
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    # Biases adapted too: same-shape leaves with different shardings meet in the norms.
    C.pjit_run(mesh, explicit=True, adapt_all=True)


def check_init_abstract():
  """init from ShapeDtypeStructs with shardings, for a model that is never materialised."""
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  specs = {"embed": P(None, "model"), "proj": P("model", None), "scale": P()}
  # ~6 GiB of float32 parameters; only compiled, never allocated.
  shapes = {"embed": (32768, 16384), "proj": (16384, 32768), "scale": (16384,)}
  param_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  abstract = {k: jax.ShapeDtypeStruct(shapes[k], jnp.float32, sharding=param_sh[k]) for k in specs}
  tx = lars_jax.lars(optax.cosine_decay_schedule(1.0, 100), weight_decay=1e-4)

  abstract_state = jax.eval_shape(tx.init, abstract)
  state_sh = C.state_shardings(tx, abstract_state, param_sh, NamedSharding(mesh, P()))
  for k in specs:
    if state_sh[-1].trace[k] != param_sh[k]:
      raise AssertionError(f"state sharding of {k}: {state_sh[-1].trace[k]}")
  compiled = jax.jit(tx.init, out_shardings=state_sh).lower(abstract).compile()
  out_sh = compiled.output_shardings
  _check_abstract(out_sh[-1].trace, param_sh, "compiled init output")
  # The lr schedule's count is a replicated scalar.
  if out_sh[1].count.spec != P():
    raise AssertionError(f"count sharding {out_sh[1].count}")
  mem = compiled.memory_analysis()
  per_device = getattr(mem, "output_size_in_bytes", 0)
  full = sum(np.prod(s) * 4 for s in shapes.values())
  # Each device holds 1/4 of each split trace (model axis = 4), the scale in full.
  want = (full - shapes["scale"][0] * 4) / 4 + shapes["scale"][0] * 4
  if per_device and abs(per_device - want) > 1024:
    raise AssertionError(f"per-device state bytes {per_device}, want ~{want}")

  # In explicit-sharding mode eval_shape alone already carries the shardings.
  emesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(emesh):
    eabs = {
      k: jax.ShapeDtypeStruct(shapes[k], jnp.float32, sharding=NamedSharding(emesh, specs[k]))
      for k in specs
    }
    est = jax.eval_shape(tx.init, eabs)
    for k in specs:
      got = C.spec_of(est[-1].trace[k].sharding, len(shapes[k]))
      if got != C.spec_of(NamedSharding(emesh, specs[k]), len(shapes[k])):
        raise AssertionError(f"explicit eval_shape sharding of {k}: {got}")

  # tx.init applied to ShapeDtypeStructs directly allocates zeros with their shardings.
  small = {k: jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=param_sh[k]) for k in specs}
  _check_abstract(tx.init(small)[-1].trace, param_sh, "init on ShapeDtypeStruct", attr=True)
  return f"per-device state {per_device / 2**30:.2f} GiB of {full / 2**30:.1f} GiB"


def _check_abstract(tree, param_sh, what, attr=False):
  for k, want in param_sh.items():
    got = tree[k].sharding if attr else tree[k]
    if got.spec != want.spec or got.mesh != want.mesh:
      raise AssertionError(f"{what} {k}: {got}, want {want}")


# ----------------------------------------------------------------------------
# 3. shard_map with parameters split over the model axis: C.sm_run / C.sm_check.


def _sm_mesh():
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)


def check_shard_map():
  params, x, y = C.make_problem()
  ref = C.reference_trajectory(params, x, y)
  mesh = _sm_mesh()
  notes = []
  C.sm_check(mesh, ref)
  # The pitfall: without axis_name each device would use the norm of its own slice.
  # Under check_vma the split leaves' types say so, and lars raises naming the leaf...
  try:
    C.sm_run(C.make_tx(), params, x, y, mesh, steps=1)
  except ValueError as e:
    if "axis_name" not in str(e) or "varies over the mesh axis" not in str(e):
      raise
  else:
    raise AssertionError("lars should reject a split leaf without axis_name under check_vma")
  # ...but with check_vma=False (or when every adapted leaf is split) it is silent.
  p, _ = C.sm_run(C.make_tx(), params, x, y, mesh, check_vma=False)[-1]
  diff = C.max_rel_diff(p, ref[-1][0])
  if diff < 1e-3:
    raise AssertionError(f"shard_map without axis_name should be wrong, differs by {diff}")
  notes.append(f"without axis_name: rel diff {diff:.1e}")
  # A single name for every leaf would over-count the replicated ones (their squared
  # norms summed once per device): under check_vma that raises, naming leaf and axis.
  try:
    C.sm_run(C.make_tx(eps=1e-2, axis_name="model"), params, x, y, mesh)
  except ValueError as e:
    if "is replicated over the mesh axis ['model']" not in str(e) or "PartitionSpec" not in str(e):
      raise
  else:
    raise AssertionError("axis_name='model' for replicated leaves should raise under check_vma")
  notes.append("axis_name='model' on replicated leaves raises")
  return "; ".join(notes)


def _preset_variants(presets):
  """(label, factory(**extra) -> tx): each preset with options that need cross-device
  sums too, on the Megatron MLP's names. Step-1 gradient norms are 0.13-0.45 (global
  0.76): clipnorm=0.2 clips the kernels but not two biases, global_clipnorm=0.5 clips."""
  sgd = lambda: optax.sgd(0.1, momentum=0.9)  # noqa: E731
  return [
    (
      "tf_lars classic, clipnorm",
      lambda **kw: presets.tf_lars(
        0.5,
        momentum=0.9,
        weight_decay_rate=1e-2,
        eeta=0.02,
        exclude_from_weight_decay=["bias"],
        clipnorm=0.2,
        **kw,
      ),
    ),
    (
      "tf_lars popular nesterov, global_clipnorm",
      lambda **kw: presets.tf_lars(
        0.5,
        momentum=0.9,
        weight_decay_rate=1e-2,
        eeta=0.02,
        classic_momentum=False,
        nesterov=True,
        global_clipnorm=0.5,
        **kw,
      ),
    ),
    (
      "torch_lars",
      lambda **kw: presets.torch_lars(
        0.5,
        momentum=0.9,
        weight_decay=1e-2,
        trust_coefficient=0.02,
        weight_decay_mask=lars_jax.masks.min_ndim(2),
        **kw,
      ),
    ),
    (
      "larc clip",
      lambda **kw: presets.larc(sgd(), learning_rate=0.1, weight_decay=1e-2, clip=True, **kw),
    ),
  ]


def check_shard_map_presets():
  """The presets under shard_map (axis_name = the PartitionSpec tree) equal the same
  preset on one device, step by step."""
  presets = lars_jax
  if not all(hasattr(lars_jax, n) for n in ("tf_lars", "torch_lars", "larc")):
    try:
      from lars_jax import presets
    except ImportError as e:  # lars_jax/presets.py not written yet
      return f"SKIPPED: {e}"
  params, x, y = C.make_problem()
  mesh = _sm_mesh()
  labels = []
  for label, make in _preset_variants(presets):
    single_tx, sharded_tx = make(), make(axis_name=C.SM_SPECS)

    @jax.jit
    def step(p, s, tx=single_tx):
      u, s = tx.update(jax.grad(C.mlp_loss)(p, x, y), s, p)
      return optax.apply_updates(p, u), s

    p1 = jax.tree.map(jnp.asarray, params)
    s1 = single_tx.init(p1)
    for t, (p, _) in enumerate(C.sm_run(sharded_tx, params, x, y, mesh)):
      p1, s1 = step(p1, s1)
      C.assert_close(p, p1, f"{label}: shard_map vs one device, step {t + 1}")
    # Without axis_name the sharded run must differ (the check is not vacuous).
    p_bad, _ = C.sm_run(make(), params, x, y, mesh, check_vma=False)[-1]
    if C.max_rel_diff(p_bad, p1) < 1e-4:
      raise AssertionError(f"{label}: no axis_name should give a different result")
    labels.append(label)
  return "; ".join(labels)


# ----------------------------------------------------------------------------
# 5. Beyond: one all-reduce for all norms, counted in the compiled HLO.

# The opcode, not an operand name like `get-tuple-element(%all-reduce.3)`; the result
# shape before it may be a tuple (XLA combines all-reduces into one of tuple shape).
_ALL_REDUCE = re.compile(r"(?<![\w%.-])all-reduce(?:-start)?\(")


def count_all_reduces(compiled) -> int:
  return len(_ALL_REDUCE.findall(compiled.as_text()))


def _update_only(tx, specs, params, mesh):
  """Compiles shard_map(tx.update) alone and returns (compiled, sharded updates)."""
  grads = jax.tree.map(lambda a: jnp.cos(3.0 * a), params)
  state_specs = C.state_shardings(tx, jax.eval_shape(tx.init, params), specs, P())
  fn = jax.jit(
    jax.shard_map(
      lambda g, s, p: tx.update(g, s, p)[0],
      mesh=mesh,
      in_specs=(specs, state_specs, specs),
      out_specs=specs,
    )
  )
  sh = C.named(mesh, specs)
  g, p = C.put((grads, params), (sh, sh))
  s = jax.jit(tx.init, out_shardings=C.named(mesh, state_specs))(p)
  compiled = fn.lower(g, s, p).compile()
  return compiled, compiled(g, s, p), grads


def check_one_all_reduce():
  rng = np.random.default_rng(1)
  counts = []
  # (a) 16 leaves split over one axis or replicated; (b) a 2-D mesh where leaves are
  # split over `model`, over `data`, over both (two dims or one), or replicated: still
  # ONE all-reduce, and the same updates as one device.
  both = P(("data", "model"))
  for mesh_shape, kinds in [
    ((8,), [P(None, "model"), P("model"), P()]),
    ((2, 4), [P(None, "model"), P("data", None), P("data", "model"), P("model"), P(), both]),
  ]:
    names = ("model",) if len(mesh_shape) == 1 else ("data", "model")
    mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Explicit,) * len(names))
    specs, params = {}, {}
    for i in range(16):
      spec = kinds[i % len(kinds)]
      shape = (16,) if len(spec) == 1 else (8, 16)
      specs[f"l{i:02d}"], params[f"l{i:02d}"] = spec, rng.standard_normal(shape).astype("f4")
    # eps > 0: with eps = 0 a norm over-counted on both sides would cancel in the ratio.
    hyper = dict(weight_decay=1e-3, trust_coefficient=0.01, eps=0.5)
    tx = lars_jax.lars(0.1, **hyper, axis_name=specs)
    compiled, updates, grads = _update_only(tx, specs, params, mesh)
    n = count_all_reduces(compiled)
    if n != 1:
      raise AssertionError(f"mesh {mesh_shape}: {n} all-reduces, want 1")
    single = lars_jax.lars(0.1, **hyper)
    want, _ = single.update(grads, single.init(params), params)
    C.assert_close(updates, want, f"updates on mesh {mesh_shape}")
    counts.append(n)

  # (c) pjit: GSPMD reduces each sharded leaf's norm itself. lars_jax takes every norm
  # before any ratio, so XLA combines them into one all-reduce (optax.lars: one or two
  # per layer, reported for the record).
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  kinds = [P(None, "model"), P("model", None), P()]
  specs = {f"l{i:02d}": kinds[i % 3] for i in range(16)}
  params = {k: rng.standard_normal((8, 16)).astype("f4") for k in specs}
  sh = C.named(mesh, specs)
  p, g = C.put((params, jax.tree.map(np.cos, params)), (sh, sh))
  pjit_counts = {}
  for name, tx in [
    ("lars_jax", lars_jax.lars(0.1, weight_decay=1e-3)),
    ("optax", optax.lars(0.1, weight_decay=1e-3)),
  ]:
    fn = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p)[0])
    pjit_counts[name] = count_all_reduces(fn.lower(g, tx.init(p), p).compile())
  if pjit_counts["lars_jax"] != 1:
    raise AssertionError(f"pjit: {pjit_counts['lars_jax']} all-reduces, want 1")
  return f"shard_map all-reduces: {counts}; pjit, 16 leaves: {pjit_counts}"


CHECKS = {
  "pmap": check_pmap,
  "pjit_auto": check_pjit_auto,
  "pjit_explicit": check_pjit_explicit,
  "init_abstract": check_init_abstract,
  "shard_map": check_shard_map,
  "shard_map_presets": check_shard_map_presets,
  "one_all_reduce": check_one_all_reduce,
}


def main(argv: list[str]) -> int:
  C.require_devices(8)
  names = argv or list(CHECKS)
  return C.run_checks({n: CHECKS[n] for n in names})


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
