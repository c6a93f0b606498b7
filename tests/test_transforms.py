"""Hand-computed values, low precision and bad input for the four LARS transforms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lars_jax
from lars_jax import masks

# Hand-computed values are exact in real arithmetic; float32 gets a few ulps.
RTOL = 1e-6


def _close(actual, expected, rtol=RTOL, atol=0.0):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def _update(tx, updates, params, n=1):
  state = tx.init(params)
  out = []
  for _ in range(n):
    u, state = tx.update(updates, state, params)
    out.append(u)
  return out if n > 1 else out[0]


# ----------------------------------------------------------------------------
# scale_by_trust_ratio


@pytest.mark.parametrize("eta", [0.001, 0.02, 1.0, 2.5])
def test_trust_ratio_five_times_eta(eta):
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
  u = _update(lars_jax.scale_by_trust_ratio(trust_coefficient=eta), g, w)
  _close(u, 5 * eta * np.array([0.6, 0.8]))


def test_trust_ratio_eps_in_denominator():
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  u = _update(lars_jax.scale_by_trust_ratio(0.01, eps=1.0), g, w)  # 0.01 * 5 / (1 + 1)
  _close(u, 0.025 * np.array([0.6, 0.8]))


def test_trust_ratio_per_leaf_and_masked():
  params = {"a": jnp.array([3.0, 4.0]), "b": jnp.ones((2, 2)), "c": jnp.array([[0.0, 2.0]])}
  grads = {
    "a": jnp.array([0.6, 0.8]),
    "b": jnp.array([[0.0, 4.0], [0.0, 0.0]]),
    "c": jnp.ones((1, 2)),
  }
  u = _update(lars_jax.scale_by_trust_ratio(0.1), grads, params)
  _close(u["a"], 0.5 * grads["a"])  # 0.1 * 5 / 1
  _close(u["b"], 0.05 * grads["b"])  # 0.1 * 2 / 4
  _close(u["c"], 0.1 * 2 / math.sqrt(2) * grads["c"])
  u = _update(
    lars_jax.scale_by_trust_ratio(0.1, mask={"a": True, "b": False, "c": True}), grads, params
  )
  _close(u["a"], 0.5 * grads["a"])
  assert u["b"] is grads["b"]  # masked-out leaves pass through untouched
  u = _update(lars_jax.scale_by_trust_ratio(0.1, mask=masks.min_ndim(2)), grads, params)
  assert u["a"] is grads["a"]
  _close(u["b"], 0.05 * grads["b"])


def test_trust_ratio_complex_uses_modulus():
  w = jnp.array([3j, 4.0], jnp.complex64)  # |w| = 5
  g = jnp.array([0.6, 0.8j], jnp.complex64)  # |g| = 1
  u = _update(lars_jax.scale_by_trust_ratio(0.01), g, w)
  assert u.dtype == jnp.complex64
  _close(u, 0.05 * np.asarray(g))


@pytest.mark.parametrize("eps", [0.0, 1e-8, 0.5])
@pytest.mark.parametrize("which", ["param", "grad", "both"])
@pytest.mark.parametrize("jit", [False, True])
def test_trust_ratio_zero_fallback(eps, which, jit):
  w = jnp.zeros(3) if which in ("param", "both") else jnp.array([1.0, 2.0, 2.0])
  g = jnp.zeros(3) if which in ("grad", "both") else jnp.array([0.5, -1.0, 0.25])
  tx = lars_jax.scale_by_trust_ratio(0.001, eps=eps)
  update = jax.jit(tx.update) if jit else tx.update
  u, _ = update(g, tx.init(w), w)
  assert np.all(np.isfinite(np.asarray(u)))
  np.testing.assert_array_equal(u, g)  # ratio 1: the update passes through


def test_trust_ratio_zero_fallback_has_finite_gradient():
  # The guard must not leak NaN into derivatives (e.g. meta-learning through the step).
  tx = lars_jax.scale_by_trust_ratio(0.001)

  def f(w, g):
    u, _ = tx.update(g, tx.init(w), w)
    return jnp.sum(u)

  for w, g in [(jnp.zeros(3), jnp.ones(3)), (jnp.ones(3), jnp.zeros(3))]:
    dw, dg = jax.grad(f, argnums=(0, 1))(w, g)
    assert np.all(np.isfinite(np.asarray(dw))) and np.all(np.isfinite(np.asarray(dg)))


def test_trust_ratio_function():
  r = lars_jax.trust_ratio(jnp.array([5.0, 0.0, 2.0, 0.0]), jnp.array([1.0, 1.0, 0.0, 0.0]), 0.1)
  _close(r, [0.5, 1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------
# add_decayed_weights


def _tree():
  params = {"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([3.0]), "s": {"x": jnp.array(-4.0)}}
  grads = {"w": jnp.array([[0.5, 0.5]]), "b": jnp.array([1.0]), "s": {"x": jnp.array(2.0)}}
  return params, grads


def test_decayed_weights_values():
  params, grads = _tree()
  u = _update(lars_jax.add_decayed_weights(0.1), grads, params)
  _close(u["w"], [[0.6, 0.7]])
  _close(u["b"], [1.3])
  _close(u["s"]["x"], 1.6)


@pytest.mark.parametrize(
  "mask",
  [
    {"w": True, "b": False, "s": {"x": False}},  # full tree
    {"w": True, "b": False, "s": False},  # prefix
    lambda p: {"w": True, "b": False, "s": False},  # callable returning a prefix
    masks.min_ndim(2),  # builder
    masks.only_names("^w$", match="search"),
  ],
  ids=["tree", "prefix", "callable", "min_ndim", "only_names"],
)
def test_decayed_weights_masked(mask):
  params, grads = _tree()
  u = _update(lars_jax.add_decayed_weights(0.1, mask=mask), grads, params)
  _close(u["w"], [[0.6, 0.7]])
  assert u["b"] is grads["b"] and u["s"]["x"] is grads["s"]["x"]


def test_decayed_weights_python_zero_is_identity_without_params():
  params, grads = _tree()
  tx = lars_jax.add_decayed_weights(0.0)
  u, _ = tx.update(grads, tx.init(params))  # params not needed
  assert u is grads
  # A traced zero still adds 0 * w (as optax): same values, params required.
  tx = optax.inject_hyperparams(lars_jax.add_decayed_weights)(weight_decay=0.0)
  u, _ = tx.update(grads, tx.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, u, grads)


def test_decayed_weights_schedule_read_at_step_0():
  params, grads = _tree()
  tx = lars_jax.add_decayed_weights(lambda c: 0.1 * (c + 1))  # 0.1, 0.2, 0.3, ...
  state = tx.init(params)
  assert int(state.count) == 0
  u0, state = tx.update(grads, state, params)
  u1, state = tx.update(grads, state, params)
  assert int(state.count) == 2
  _close(u0["b"], [1.3])
  _close(u1["b"], [1.6])


# ----------------------------------------------------------------------------
# scale_by_learning_rate


@pytest.mark.parametrize("flip_sign,sign", [(True, -1.0), (False, 1.0)])
def test_learning_rate_scalar(flip_sign, sign):
  g = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(4.0)}
  u = _update(lars_jax.scale_by_learning_rate(0.25, flip_sign=flip_sign), g, None)
  _close(u["a"], sign * np.array([0.25, -0.5]))
  _close(u["b"], sign * 1.0)


def test_learning_rate_schedule_read_at_step_0():
  tx = lars_jax.scale_by_learning_rate(lambda c: 10.0 ** (-c.astype(jnp.float32)))
  state = tx.init(jnp.zeros(2))
  u0, state = tx.update(jnp.ones(2), state)  # schedule(0) = 1
  u1, state = tx.update(jnp.ones(2), state)  # schedule(1) = 0.1
  _close(u0, [-1.0, -1.0])
  _close(u1, [-0.1, -0.1])
  assert int(state.count) == 2


def test_learning_rate_schedule_in_lars_first_step():
  # The first lars step uses schedule(0): with schedule(0) = 0 the params do not move.
  sched = optax.linear_schedule(0.0, 1.0, 10)
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  tx = lars_jax.lars(sched, trust_coefficient=0.01)
  state = tx.init(w)
  u0, state = tx.update(g, state, w)
  u1, state = tx.update(g, state, w)
  np.testing.assert_array_equal(u0, jnp.zeros(2))
  _close(u1, -0.1 * 0.05 * np.array([0.6, 0.8]))  # schedule(1) = 0.1, ratio 0.05, v0 = 0


@pytest.mark.parametrize(
  "factory",
  [
    lars_jax.scale_by_learning_rate,
    lars_jax.lars,
    lars_jax.tf_lars,
    lars_jax.torch_lars,
    lambda lr: lars_jax.larc(optax.sgd(0.1), lr),
  ],
)
def test_learning_rate_none_is_an_error(factory):
  """None used to be the identity: lars(None) then stepped uphill by r * u."""
  with pytest.raises(TypeError, match="`learning_rate` is None"):
    factory(None)


# ----------------------------------------------------------------------------
# trace


def test_trace_values():
  tx = lars_jax.trace(0.9)
  state = tx.init(jnp.zeros(1))
  u1, state = tx.update(jnp.array([1.0]), state)  # t = 1
  u2, state = tx.update(jnp.array([2.0]), state)  # t = 2 + 0.9 = 2.9
  _close(u1, [1.0])
  _close(u2, [2.9])
  _close(state.trace, [2.9])


def test_trace_nesterov_values():
  tx = lars_jax.trace(0.9, nesterov=True)
  state = tx.init(jnp.zeros(1))
  u1, state = tx.update(jnp.array([1.0]), state)  # t = 1, out = 1 + 0.9 * 1
  _close(u1, [1.9])
  _close(state.trace, [1.0])
  u2, state = tx.update(jnp.array([2.0]), state)  # t = 2.9, out = 2 + 0.9 * 2.9
  _close(u2, [4.61])
  _close(state.trace, [2.9])


def test_trace_accumulator_dtype():
  tx = lars_jax.trace(0.5, accumulator_dtype=jnp.float32)
  p = jnp.zeros(3, jnp.bfloat16)
  state = tx.init(p)
  assert state.trace.dtype == jnp.float32
  u, state = tx.update(jnp.ones(3, jnp.bfloat16), state)
  assert u.dtype == jnp.bfloat16 and state.trace.dtype == jnp.float32


def test_lars_two_steps_by_hand():
  # |w| = 5, |g| = 1, eta = 0.01 -> r = 0.05; lr = 0.1, mu = 0.9.
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  tx = lars_jax.lars(0.1, trust_coefficient=0.01, momentum=0.9)
  state = tx.init(w)
  u, state = tx.update(g, state, w)
  _close(u, -0.005 * np.array([0.6, 0.8]))  # v = lr * r * g
  w1 = w + u  # |w1| = 5 - 0.005
  u, state = tx.update(g, state, w1)
  r1 = 0.01 * (5 - 0.005)
  _close(u, -(0.9 * 0.005 + 0.1 * r1) * np.array([0.6, 0.8]))


# ----------------------------------------------------------------------------
# Low precision


@pytest.mark.parametrize(
  "dtype,scale,size",
  [
    (jnp.float16, 1e-4, 16),  # squares ~1e-8 underflow to 0 in float16
    (jnp.float16, 300.0, 16),  # squares ~9e4 overflow float16's 65504
    (jnp.bfloat16, 1e-4, 16),  # eps = 1e-8 is lost when added to ~1e-4 in bfloat16
    (jnp.bfloat16, 1.0, 1 << 16),  # a bfloat16 running sum stalls at 256 + 1 == 256
  ],
)
def test_low_precision_norms(dtype, scale, size):
  key1, key2 = jax.random.split(jax.random.PRNGKey(0))
  w = (scale * jax.random.uniform(key1, (size,), minval=0.5, maxval=1.0)).astype(dtype)
  g = (2 * scale * jax.random.uniform(key2, (size,), minval=0.5, maxval=1.0)).astype(dtype)
  eps = 1e-8
  tx = lars_jax.scale_by_trust_ratio(1.0, eps=eps)
  u = _update(tx, g, w)
  assert u.dtype == dtype
  assert np.all(np.isfinite(np.asarray(u, np.float32)))
  # The ratio from the exact norms of the same (rounded) values, in float64.
  w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
  r = np.linalg.norm(w64) / (np.linalg.norm(g64) + eps)
  assert 0.3 < r < 0.7  # the ratio really is applied (not the fallback 1)
  # Float32 norms are exact to ~1e-6; the tolerance is one rounding of the output:
  # relative for normal numbers, half the spacing 2^-24 for float16's subnormals (below
  # 6.1e-5, which this scale reaches with some random draws).
  tol = 2**-8 if dtype == jnp.bfloat16 else 2**-11
  _close(np.asarray(u, np.float64), r * g64, rtol=tol, atol=2**-25 if dtype == jnp.float16 else 0)
  # Bit for bit what the float32 upcast gives, rounded once to `dtype`.
  u32 = _update(tx, g.astype(jnp.float32), w.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(u), np.asarray(u32.astype(dtype)))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_lars_eps_never_nan(dtype):
  # fp16 with eps = 1e-8 is a known NaN source when norms are taken in fp16.
  w = {
    "small": jnp.full((8,), 1e-4, dtype),
    "big": jnp.full((8,), 300.0, dtype),
    "zero": jnp.zeros(8, dtype),
  }
  g = {
    "small": jnp.full((8,), 2e-4, dtype),
    "big": jnp.full((8,), 600.0, dtype),
    "zero": jnp.zeros(8, dtype),
  }
  tx = lars_jax.lars(1.0, weight_decay=1e-4, eps=1e-8, nesterov=True)
  state = tx.init(w)
  for _ in range(3):
    u, state = jax.jit(tx.update)(g, state, w)
    for leaf in jax.tree.leaves(u) + jax.tree.leaves(state):
      assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(u))
    w = optax.apply_updates(w, u)
  # Each step moves the small and big leaves by about lr * eta * |w| per leaf.
  assert float(jnp.abs(w["small"][0] - 1e-4)) > 0


_DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32, jnp.complex64]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
  dtype=st.sampled_from(_DTYPES),
  leaves=st.lists(
    st.tuples(
      st.sampled_from([(), (1,), (4,), (3, 5), (2, 1, 3)]),
      st.integers(-3, 2) | st.none(),  # log10 scale of the param; None: all zeros
      st.integers(-3, 2) | st.none(),  # log10 scale of the gradient
    ),
    min_size=1,
    max_size=4,
  ),
  eta=st.sampled_from([0.001, 0.1, 1.0, 10.0]),
  eps=st.sampled_from([0.0, 1e-8, 1e-3]),
  seed=st.integers(0, 2**16),
)
def test_trust_ratio_property(dtype, leaves, eta, eps, seed):
  """Any dtype, shapes and scales: the update is r * g with r from exact norms of the
  (rounded) inputs, rounded once to the grad's dtype; never NaN; fallback r = 1."""
  rng = np.random.default_rng(seed)

  def sample(shape, scale):
    if scale is None:
      return np.zeros(shape)
    x = rng.normal(size=shape) * 10.0**scale
    if dtype == jnp.complex64:
      x = x + 1j * rng.normal(size=shape) * 10.0**scale
    return x

  params = [jnp.asarray(sample(shape, sw), dtype) for shape, sw, _ in leaves]
  grads = [jnp.asarray(sample(shape, sg), dtype) for shape, _, sg in leaves]
  tx = lars_jax.scale_by_trust_ratio(eta, eps=eps)
  updates = _update(tx, grads, params)
  info = jnp.finfo(dtype)
  # One rounding to `dtype` (half an ulp, 2^-mant), float32 norms (~1e-6), and the
  # half-spacing of subnormals for outputs that land there.
  rtol = max(2.0**-info.nmant, 4e-6)
  for u, p, g in zip(updates, params, grads):
    assert u.dtype == dtype
    assert np.all(np.isfinite(np.asarray(u)))
    p64 = np.asarray(p).astype(np.complex128 if dtype == jnp.complex64 else np.float64)
    g64 = np.asarray(g).astype(p64.dtype)
    pn, gn = np.linalg.norm(p64.ravel()), np.linalg.norm(g64.ravel())
    r = eta * pn / (gn + eps) if pn > 0 and gn > 0 else 1.0
    expected = r * g64
    np.testing.assert_allclose(
      np.asarray(u).astype(p64.dtype), expected, rtol=rtol, atol=float(info.smallest_subnormal)
    )


# ----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_learning_rate(value):
  with pytest.raises(ValueError, match="learning_rate"):
    lars_jax.scale_by_learning_rate(value)
  with pytest.raises(ValueError, match="learning_rate"):
    lars_jax.lars(value)


def test_bad_learning_rate_array():
  with pytest.raises(ValueError, match="learning_rate"):
    lars_jax.lars(jnp.array(-1.0))
  with pytest.raises(TypeError, match="learning_rate"):
    lars_jax.lars(jnp.ones(3))
  with pytest.raises(TypeError, match="learning_rate"):
    lars_jax.lars("0.1")


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan")])
def test_bad_momentum(value):
  with pytest.raises(ValueError, match="decay"):
    lars_jax.trace(value)
  with pytest.raises(ValueError, match="momentum"):
    lars_jax.lars(0.1, momentum=value)


@pytest.mark.parametrize(
  "kwargs,arg",
  [
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(trust_coefficient=-0.001), "trust_coefficient"),
    (dict(trust_coefficient=float("inf")), "trust_coefficient"),
    (dict(eps=-1e-8), "eps"),
  ],
)
def test_bad_hyperparameters(kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    lars_jax.lars(0.1, **kwargs)
  factory = lars_jax.add_decayed_weights if arg == "weight_decay" else lars_jax.scale_by_trust_ratio
  with pytest.raises(ValueError, match=arg):
    factory(**kwargs)


def test_bad_flags():
  with pytest.raises(TypeError, match="nesterov"):
    lars_jax.trace(0.9, nesterov="yes")
  with pytest.raises(TypeError, match="flip_sign"):
    lars_jax.scale_by_learning_rate(0.1, flip_sign=1)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_non_float_params(dtype):
  params = {"w": jnp.ones(2), "step": jnp.zeros(2, dtype)}
  for tx in [
    lars_jax.lars(0.1),
    lars_jax.add_decayed_weights(0.1),
    lars_jax.scale_by_trust_ratio(),
    lars_jax.trace(0.9),
  ]:
    with pytest.raises(TypeError, match=r"'step'.*" + jnp.dtype(dtype).name):
      tx.init(params)


def test_non_float_params_in_update():
  good = {"w": jnp.ones(2), "step": jnp.ones(2)}
  bad = {"w": jnp.ones(2), "step": jnp.ones(2, jnp.int32)}
  for tx in [lars_jax.add_decayed_weights(0.1), lars_jax.scale_by_trust_ratio()]:
    with pytest.raises(TypeError, match="'step'"):
      tx.update(good, tx.init(good), bad)


@pytest.mark.parametrize(
  "tx",
  [lars_jax.lars(0.1), lars_jax.add_decayed_weights(0.1), lars_jax.scale_by_trust_ratio()],
  ids=["lars", "add_decayed_weights", "scale_by_trust_ratio"],
)
def test_update_without_params(tx):
  g = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="params"):
    tx.update(g, tx.init(g))


def test_params_tree_mismatch():
  g = {"w": jnp.ones(2), "b": jnp.ones(1)}
  for tx in [lars_jax.lars(0.1, weight_decay=0.1), lars_jax.scale_by_trust_ratio()]:
    state = tx.init(g)
    with pytest.raises(ValueError, match="params"):
      tx.update(g, state, {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="params"):
      tx.update(g, state, [jnp.ones(2), jnp.ones(1)])


@pytest.mark.parametrize("which", ["weight_decay_mask", "trust_ratio_mask"])
def test_mask_mismatch(which):
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  tx = lars_jax.lars(0.1, weight_decay=0.1, **{which: {"w": True, "c": False}})
  with pytest.raises(ValueError, match="`(weight_decay|trust_ratio)_mask`"):
    tx.init(params)
  tx = lars_jax.lars(0.1, weight_decay=0.1, **{which: {"w": True, "b": 1.0}})
  with pytest.raises(TypeError, match="`(weight_decay|trust_ratio)_mask`"):
    tx.init(params)
