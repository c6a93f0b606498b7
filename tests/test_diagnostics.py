"""lars_jax.layer_diagnostics: values, parity with what lars() applies, purity, errors.

References are written from the equations (float64 NumPy, per leaf):

    u = g + wd * w          (decayed leaves; u = g elsewhere)
    r = eta * |w| / (|u| + eps)   (adapted leaves with |w| > 0 and |u| > 0; 1 elsewhere)
    update_ratio = |update| / |w|

Tolerances: float32 norms against the float64 reference, rtol 1e-6 (a few ulps of a sum of
at most 600 squares). The trust ratio against what `scale_by_trust_ratio` applied: exact,
since both come from the same `layer_norms` call on the same leaves.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax import masks

WD, ETA, EPS, LR = 0.05, 0.02, 1e-3, 0.7
SKIP = masks.exclude_names("bias", "norm")


def _tree(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)

  def a(*shape, scale=1.0):
    return jnp.asarray(rng.normal(size=shape) * scale, dtype)

  params = {
    "conv": {"kernel": a(3, 3, 2, 4), "bias": a(4, scale=0.1)},
    "norm": {"scale": jnp.ones(4, dtype), "bias": jnp.zeros(4, dtype)},
    "dense": [{"kernel": a(16, 8)}, {"kernel": a(8, 3, scale=0.3), "bias": a(3)}],
  }
  grads = jax.tree.map(lambda p: a(*p.shape, scale=0.01), params)
  return params, grads


def _np_norm(x):
  return float(np.linalg.norm(np.asarray(x, np.float64).ravel()))


def _reference(params, grads, wd, wd_bits, tr_bits, eta, eps, updates=None):
  """Float64 NumPy statistics from the equations in the module docstring."""
  paths = jax.tree.leaves(masks.tree_paths(params))
  ps, gs = jax.tree.leaves(params), jax.tree.leaves(grads)
  ups = jax.tree.leaves(updates) if updates is not None else [None] * len(ps)
  out = {}
  for stat in ("param_norm", "grad_norm", "decayed_grad_norm", "trust_ratio"):
    for path, p, g, dec, ada in zip(paths, ps, gs, wd_bits, tr_bits):
      w, gg = np.asarray(p, np.float64), np.asarray(g, np.float64)
      u = gg + wd * w if dec else gg
      wn, un = _np_norm(w), _np_norm(u)
      out[f"{stat}/{path}"] = {
        "param_norm": wn,
        "grad_norm": _np_norm(gg),
        "decayed_grad_norm": un,
        "trust_ratio": eta * wn / (un + eps) if ada and wn > 0 and un > 0 else 1.0,
      }[stat]
  if updates is not None:
    for path, up in zip(paths, ups):
      out[f"update_norm/{path}"] = _np_norm(up)
    for path, p, up in zip(paths, ps, ups):
      wn, dn = _np_norm(p), _np_norm(up)
      out[f"update_ratio/{path}"] = dn / wn if wn > 0 else (np.inf if dn > 0 else 0.0)
  return out


def _diag(params, grads, **kw):
  kw = {
    "weight_decay": WD,
    "weight_decay_mask": SKIP,
    "trust_coefficient": ETA,
    "eps": EPS,
    "trust_ratio_mask": SKIP,
    **kw,
  }
  return lars_jax.layer_diagnostics(params, grads, **kw)


def test_hand_values():
  # |w| = 5, g = [0.6, 0.8]; u = g + 0.1 w = [0.9, 1.2], |u| = 1.5; r = 0.001 * 5 / 1.5.
  params = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
  grads = {"w": jnp.array([0.6, 0.8]), "b": jnp.ones(2)}
  updates = {"w": jnp.array([-0.3, -0.4]), "b": jnp.array([-0.1, 0.0])}
  d = lars_jax.diagnostics_to_floats(
    lars_jax.layer_diagnostics(
      params,
      grads,
      weight_decay=0.1,
      weight_decay_mask={"w": True, "b": False},
      trust_ratio_mask={"w": True, "b": False},
      updates=updates,
    )
  )
  expected = {
    "param_norm/b": 0.0,
    "param_norm/w": 5.0,
    "grad_norm/b": 2**0.5,
    "grad_norm/w": 1.0,
    "decayed_grad_norm/b": 2**0.5,
    "decayed_grad_norm/w": 1.5,
    "trust_ratio/b": 1.0,
    "trust_ratio/w": 0.001 * 5 / 1.5,
    "update_norm/b": 0.1,
    "update_norm/w": 0.5,
    "update_ratio/b": float("inf"),  # |w| = 0 < |update|
    "update_ratio/w": 0.1,
  }
  assert list(d) == sorted(expected)  # sorted keys: grouped by statistic, then leaf
  d = {k: d[k] for k in expected}
  np.testing.assert_allclose(list(d.values()), list(expected.values()), rtol=1e-6)
  assert all(isinstance(v, float) for v in d.values())


@pytest.mark.parametrize("jit", [False, True])
def test_matches_reference_and_direct_norms(jit):
  params, grads = _tree()
  updates = jax.tree.map(lambda g: -LR * g, grads)
  fn = jax.jit(_diag) if jit else _diag
  d = lars_jax.diagnostics_to_floats(fn(params, grads, updates=updates))
  bits = masks.resolve(SKIP, params)
  ref = _reference(params, grads, WD, bits, bits, ETA, EPS, updates)
  assert list(d) == sorted(ref)
  d = {k: d[k] for k in ref}
  np.testing.assert_allclose(list(d.values()), list(ref.values()), rtol=1e-6)
  # Direct jnp.linalg.norm, leaf by leaf.
  paths = jax.tree.leaves(masks.tree_paths(params))
  for path, p, u in zip(paths, jax.tree.leaves(params), jax.tree.leaves(updates)):
    np.testing.assert_allclose(d[f"param_norm/{path}"], jnp.linalg.norm(p.ravel()), rtol=1e-6)
    np.testing.assert_allclose(d[f"update_norm/{path}"], jnp.linalg.norm(u.ravel()), rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
  "wd_mask,tr_mask",
  [
    (SKIP, SKIP),
    (True, True),
    (None, masks.min_ndim(2)),
    ({"conv": True, "norm": False, "dense": True}, masks.exclude_names("conv/bias")),
    (False, False),
  ],
)
def test_trust_ratio_is_what_lars_applies(jit, wd_mask, tr_mask):
  """ratio * u equals the output of add_decayed_weights -> scale_by_trust_ratio bit for
  bit, with u = g + wd w the output of add_decayed_weights in the same computation (under
  jit XLA may round g + wd w differently from eager, e.g. with a fused multiply-add, and
  where g and wd w nearly cancel that changes u by more than an ulp). The first lars update
  (momentum buffer at 0) is -LR * ratio * u, rtol 1e-6 (one more rounding)."""
  params, grads = _tree(1)
  wd_mask_l = True if wd_mask is None else wd_mask
  decay = lars_jax.add_decayed_weights(WD, mask=wd_mask_l)
  tx = optax.chain(decay, lars_jax.scale_by_trust_ratio(ETA, EPS, mask=tr_mask))
  solver = lars_jax.lars(
    LR,
    weight_decay=WD,
    weight_decay_mask=wd_mask_l,
    trust_coefficient=ETA,
    eps=EPS,
    trust_ratio_mask=tr_mask,
  )

  def run(params, grads):
    scaled, _ = tx.update(grads, tx.init(params), params)
    decayed, _ = decay.update(grads, decay.init(params), params)
    step, _ = solver.update(grads, solver.init(params), params)
    d = lars_jax.layer_diagnostics(
      params,
      grads,
      weight_decay=WD,
      weight_decay_mask=wd_mask,
      trust_coefficient=ETA,
      eps=EPS,
      trust_ratio_mask=tr_mask,
    )
    return scaled, decayed, step, d

  scaled, decayed, step, d = (jax.jit(run) if jit else run)(params, grads)
  wd_bits = masks.resolve(wd_mask_l, params)
  tr_bits = masks.resolve(tr_mask, params)
  paths = jax.tree.leaves(masks.tree_paths(params))
  for i, (path, p, g, u, s, st) in enumerate(
    zip(
      paths,
      jax.tree.leaves(params),
      jax.tree.leaves(grads),
      jax.tree.leaves(decayed),
      jax.tree.leaves(scaled),
      jax.tree.leaves(step),
    )
  ):
    r = d[f"trust_ratio/{path}"]
    assert r.dtype == jnp.float32 and r.shape == ()
    np.testing.assert_allclose(u, g + WD * p if wd_bits[i] else g, rtol=1e-5, atol=1e-7)
    if not tr_bits[i]:
      assert float(r) == 1.0
    np.testing.assert_array_equal(s, u * r)  # bit for bit
    np.testing.assert_allclose(st, -LR * r * u, rtol=1e-6, atol=0)
  ref = _reference(params, grads, WD, wd_bits, tr_bits, ETA, EPS)
  np.testing.assert_allclose(
    [float(d[k]) for k in ref], list(ref.values()), rtol=1e-6, err_msg=str(list(ref))
  )


def test_does_not_change_the_update():
  """A jitted step that also returns the diagnostics gives bit-identical params and state."""
  params, grads = _tree(2)
  solver = lars_jax.lars(LR, WD, SKIP, ETA, EPS, SKIP, momentum=0.9)

  def step(params, state, grads, with_diag):
    updates, state = solver.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    if with_diag:
      return new, state, _diag(params, grads, updates=updates)
    return new, state

  plain = jax.jit(functools.partial(step, with_diag=False))
  diag = jax.jit(functools.partial(step, with_diag=True))
  p1, s1 = params, solver.init(params)
  p2, s2 = params, solver.init(params)
  for _ in range(3):
    p1, s1 = plain(p1, s1, grads)
    p2, s2, d = diag(p2, s2, grads)
  for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
    np.testing.assert_array_equal(a, b)
  assert set(d) >= {"update_ratio/conv/kernel", "trust_ratio/dense/0/kernel"}


def test_traced_hyperparameters_and_no_retrace():
  params, grads = _tree(3)
  traces = []

  @jax.jit
  def f(params, grads, wd, eta, eps):
    traces.append(1)
    return _diag(params, grads, weight_decay=wd, trust_coefficient=eta, eps=eps)

  schedule = optax.linear_schedule(0.1, 0.0, 10)
  for step in range(3):
    wd = schedule(step)  # a weight-decay schedule: pass its current value
    d = lars_jax.diagnostics_to_floats(f(params, grads, wd, ETA, EPS))
    bits = masks.resolve(SKIP, params)
    ref = _reference(params, grads, float(wd), bits, bits, ETA, EPS)
    np.testing.assert_allclose([d[k] for k in ref], list(ref.values()), rtol=1e-6)
  assert len(traces) == 1


def test_zero_norms_never_nan():
  params = {"a": jnp.zeros(3), "b": jnp.ones(2), "c": jnp.ones(2)}
  grads = {"a": jnp.ones(3), "b": jnp.zeros(2), "c": jnp.ones(2)}
  updates = {"a": jnp.zeros(3), "b": jnp.zeros(2), "c": jnp.zeros(2)}
  d = lars_jax.diagnostics_to_floats(
    lars_jax.layer_diagnostics(params, grads, trust_coefficient=0.5, updates=updates)
  )
  assert d["trust_ratio/a"] == 1.0  # |w| = 0
  assert d["trust_ratio/b"] == 1.0  # |u| = 0
  assert d["trust_ratio/c"] == 0.5
  assert d["update_ratio/a"] == 0.0  # 0 / 0
  assert not any(np.isnan(v) for v in d.values())


def test_low_precision_and_complex_leaves_give_float32():
  params = {"h": jnp.full((4,), 3.0, jnp.bfloat16), "c": jnp.array([3 + 4j], jnp.complex64)}
  grads = {"h": jnp.full((4,), 0.5, jnp.bfloat16), "c": jnp.array([1j], jnp.complex64)}
  d = lars_jax.layer_diagnostics(params, grads, trust_coefficient=1.0)
  assert {v.dtype for v in d.values()} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(float(d["trust_ratio/h"]), 6.0 / 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(d["trust_ratio/c"]), 5.0, rtol=1e-6)


def test_single_array_and_empty_tree():
  d = lars_jax.layer_diagnostics(jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8]))
  assert list(d) == ["decayed_grad_norm", "grad_norm", "param_norm", "trust_ratio"]
  np.testing.assert_allclose(float(d["trust_ratio"]), 0.005, rtol=1e-6)
  assert lars_jax.layer_diagnostics({}, {}) == {}


def test_nnx_state_paths():
  from flax import nnx

  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.LayerNorm(4, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)  # Variables inside
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3)))))(model)  # a State of Params too
  grads = jax.tree.map(jnp.ones_like, grads)
  updates = jax.tree.map(lambda g: -0.5 * g, nnx.as_pure(grads))  # pure arrays
  d = lars_jax.layer_diagnostics(
    params,
    grads,
    updates=updates,
    weight_decay_mask=masks.exclude_names("bias", "layers/1/"),
    trust_ratio_mask=masks.exclude_names("bias", "layers/1/"),
  )
  assert sorted(k for k in d if k.startswith("trust_ratio/")) == [
    "trust_ratio/layers/0/bias",
    "trust_ratio/layers/0/kernel",
    "trust_ratio/layers/1/bias",
    "trust_ratio/layers/1/scale",
  ]
  assert float(d["trust_ratio/layers/1/scale"]) == 1.0
  kernel = np.asarray(params["layers"][0]["kernel"][...], np.float64)
  np.testing.assert_allclose(
    float(d["trust_ratio/layers/0/kernel"]), 0.001 * _np_norm(kernel) / np.sqrt(12), rtol=1e-6
  )
  np.testing.assert_allclose(float(d["update_norm/layers/0/kernel"]), 0.5 * np.sqrt(12))
  pure = lars_jax.layer_diagnostics(nnx.as_pure(params), nnx.as_pure(grads), updates=updates)
  assert set(pure) == set(d)


def test_bad_input():
  params, grads = _tree()
  with pytest.raises(TypeError, match="schedule"):
    lars_jax.layer_diagnostics(params, grads, weight_decay=optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="weight_decay"):
    lars_jax.layer_diagnostics(params, grads, weight_decay=-1.0)
  with pytest.raises(ValueError, match="trust_coefficient"):
    lars_jax.layer_diagnostics(params, grads, trust_coefficient=float("nan"))
  with pytest.raises(ValueError, match="`grads` does not have the structure"):
    lars_jax.layer_diagnostics(params, {"conv": grads["conv"]})
  with pytest.raises(ValueError, match="`updates` does not have the structure"):
    lars_jax.layer_diagnostics(params, grads, updates=grads["conv"])
  with pytest.raises(ValueError, match="trust_ratio_mask"):
    lars_jax.layer_diagnostics(params, grads, trust_ratio_mask={"conv": True})
  with pytest.raises(ValueError, match="matches no parameter"):
    lars_jax.layer_diagnostics(params, grads, weight_decay_mask=masks.exclude_names("nope"))
  with pytest.raises(TypeError, match="floating-point"):
    lars_jax.layer_diagnostics({"i": jnp.arange(3)}, {"i": jnp.arange(3)})
  with pytest.raises(ValueError, match="same path 'a/b'"):
    lars_jax.layer_diagnostics(
      {"a/b": jnp.ones(1), "a": {"b": jnp.ones(1)}},
      {
        "a/b": jnp.ones(1),
        "a": {"b": jnp.ones(1)},
      },
    )
  with pytest.raises(TypeError, match="dict"):
    lars_jax.diagnostics_to_floats([1.0])
  with pytest.raises(ValueError, match="scalar"):
    lars_jax.diagnostics_to_floats({"x": jnp.ones(2)})


_SHARDED = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np, lars_jax
  from jax.sharding import PartitionSpec as P
  assert jax.device_count() == 4, jax.device_count()
  mesh = jax.make_mesh((4,), ('x',))
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
  grads = jax.tree.map(lambda p: p * 0.01 + 0.003, params)
  spec = {'w': P('x'), 'b': P()}
  put = lambda t: jax.tree.map(
      lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s)), t, spec)
  kw = dict(weight_decay=0.1, trust_coefficient=0.02, updates=grads,
            trust_ratio_mask=lars_jax.masks.min_ndim(2))
  want = lars_jax.layer_diagnostics(params, grads, **kw)
  def local(params, grads, updates):
    kw2 = dict(kw, updates=updates)
    return lars_jax.layer_diagnostics(params, grads, axis_name=spec, **kw2)
  f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=P()))
  got = f(put(params), put(grads), put(grads))
  assert list(got) == list(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
  # Without axis_name a split leaf gets the norm of its local slice.
  g = jax.jit(jax.shard_map(lambda p, g: lars_jax.layer_diagnostics(p, g), mesh=mesh,
              in_specs=(spec, spec), out_specs=P(), check_vma=False))(put(params), put(grads))
  assert not np.isclose(g['param_norm/w'], want['param_norm/w'])
  print('OK')
  """
)


def test_axis_name_under_shard_map():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  ).strip()
  proc = subprocess.run(
    [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
