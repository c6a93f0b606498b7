"""lars_jax.lars against the real optax.lars, step by step."""

import doctest
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compat import OPTAX_LARS_SCHEDULED_DECAY, OPTAX_VERSION, optax_lars
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import LarsReference  # tests/reference.py

import lars_jax

RTOL = 1e-6  # f32 step-by-step parity with optax.lars (same equations, same order)


def _params(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4)), "bias": jnp.zeros(4)},
    "dense": [jax.random.normal(k2, (4, 3)), jax.random.normal(k3, (3,))],
  }


CASES = [
  dict(),
  dict(weight_decay=1e-2),
  dict(weight_decay=1e-2, nesterov=True, eps=1e-3, momentum=0.8),
  dict(
    weight_decay=0.1,
    weight_decay_mask=lars_jax.masks.min_ndim(2),
    trust_ratio_mask={"conv": {"kernel": True, "bias": False}, "dense": True},
  ),
  dict(weight_decay=optax.exponential_decay(0.1, 2, 0.5), trust_coefficient=0.01),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("schedule", [False, True])
def test_matches_optax_lars(kwargs, schedule):
  lr = optax.warmup_cosine_decay_schedule(0.0, 2.0, 3, 10) if schedule else 0.7
  ours, ref = lars_jax.lars(lr, **kwargs), optax_lars(lr, **kwargs)
  params = _params(jax.random.PRNGKey(0))
  p_ours, p_ref = params, params
  s_ours, s_ref = ours.init(params), ref.init(params)
  for i in range(8):
    g = jax.tree.map(lambda x, i=i: jax.random.normal(jax.random.PRNGKey(100 + i), x.shape), params)
    u_ours, s_ours = ours.update(g, s_ours, p_ours)
    u_ref, s_ref = ref.update(g, s_ref, p_ref)
    # Updates: rtol 1e-6 plus an absolute floor of 1e-6 * max|u| per leaf, because
    # momentum can cancel to values far below the leaf's scale, where a 1-ulp
    # difference in a norm shows up as a large *relative* error.
    for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * float(jnp.max(jnp.abs(b))))
    p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)


# ----------------------------------------------------------------------------
# Property-based parity over random trees, masks, schedules and hyperparameters.

# Against the float64 reference, step by step from the params our float32 run holds
# (so float32 rounding of earlier steps is not amplified along the trajectory): each
# element must lie within REF_RTOL of the sum of the magnitudes of the terms that made
# it (`LarsReference.update_scale`), the bound rounding obeys even where momentum
# cancels. A step is ~10 float32 roundings (6e-8 each) plus norms of <= 6 elements,
# about 1e-6 at worst; 600 random examples gave at most 3.1e-7.
REF_RTOL = 2e-6
STEPS = 4


class _Leaf:
  """A leaf of a tree *spec*: its shape, a zero initial param, an always-zero grad."""

  def __init__(self, shape, zero_param, zero_grad):
    self.shape, self.zero_param, self.zero_grad = shape, zero_param, zero_grad

  def __repr__(self):
    return f"Leaf({self.shape}, zero_param={self.zero_param}, zero_grad={self.zero_grad})"


_leaves = st.builds(
  _Leaf, st.sampled_from([(), (1,), (3,), (5,), (2, 3), (3, 1, 2)]), st.booleans(), st.booleans()
)
_trees = st.recursive(
  _leaves,
  lambda children: st.one_of(
    st.lists(children, min_size=1, max_size=3),
    st.lists(children, min_size=1, max_size=2).map(tuple),
    st.dictionaries(
      st.sampled_from(["kernel", "bias", "scale", "emb"]), children, min_size=1, max_size=3
    ),
  ),
  max_leaves=6,
)
_SCHEDULES = {
  "linear": lambda: optax.linear_schedule(0.0, 1.0, 3),
  "exponential": lambda: optax.exponential_decay(1.5, 2, 0.5),
  "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6),
  "piecewise": lambda: optax.piecewise_constant_schedule(0.5, {2: 0.1}),
}


def _children(spec):
  if isinstance(spec, dict):
    return [spec[k] for k in sorted(spec)]
  if isinstance(spec, (list, tuple)):
    return list(spec)
  return None


@st.composite
def _masks(draw, spec):
  """A mask in one of the accepted forms, and the bool per leaf it stands for."""
  leaves, treedef = jax.tree.flatten(spec)
  kind = draw(st.sampled_from(["default", "tree", "prefix", "callable", "min_ndim"]))
  if kind == "default":
    return True, [True] * len(leaves)
  if kind == "min_ndim":
    bits = [len(leaf.shape) >= 1 for leaf in leaves]
    # A callable rule that selects no leaf of a whole tree raises (issue 18 item 2,
    # tests/test_silent.py); `False` is how a user says "no leaf".
    return (lars_jax.masks.min_ndim(1) if any(bits) else False), bits
  if kind == "prefix":
    children = _children(spec)
    if children is None:
      b = draw(st.booleans())
      return b, [b]
    top = draw(st.lists(st.booleans(), min_size=len(children), max_size=len(children)))
    bits = [b for b, c in zip(top, children) for _ in jax.tree.leaves(c)]
    if isinstance(spec, dict):
      return dict(zip(sorted(spec), top)), bits
    return type(spec)(top), bits
  bits = draw(st.lists(st.booleans(), min_size=len(leaves), max_size=len(leaves)))
  mask = jax.tree.unflatten(treedef, bits)
  if kind == "callable" and any(bits):
    return (lambda tree: jax.tree.unflatten(jax.tree.structure(tree), bits)), bits
  return mask, bits


@st.composite
def _problems(draw):
  spec = draw(_trees)
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  leaves, treedef = jax.tree.flatten(spec)

  def sample(zero, shape):
    return np.zeros(shape, np.float32) if zero else rng.normal(size=shape).astype(np.float32)

  params = [sample(leaf.zero_param, leaf.shape) for leaf in leaves]
  grads = [[sample(leaf.zero_grad, leaf.shape) for leaf in leaves] for _ in range(STEPS)]
  lr = draw(st.one_of(st.sampled_from(sorted(_SCHEDULES)), st.floats(0.01, 2.0)))
  wd = draw(st.sampled_from([0.0, 1e-4, 0.1, "schedule"]))
  wd_mask, wd_bits = draw(_masks(spec))
  tr_mask, tr_bits = draw(_masks(spec))
  hyper = dict(
    learning_rate=_SCHEDULES[lr]() if isinstance(lr, str) else lr,
    weight_decay=optax.linear_schedule(0.1, 0.0, 4) if wd == "schedule" else wd,
    weight_decay_mask=wd_mask,
    trust_ratio_mask=tr_mask,
    trust_coefficient=draw(st.sampled_from([0.001, 0.02, 1.0])),
    eps=draw(st.sampled_from([0.0, 1e-8, 1e-3])),
    momentum=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])),
    nesterov=draw(st.booleans()),
  )
  return treedef, params, grads, hyper, wd_bits, tr_bits


def _assert_updates_close(actual, desired, rtol, what):
  # rtol plus an absolute floor of rtol * max|u| per leaf (momentum cancellation).
  for i, (a, b) in enumerate(zip(actual, desired)):
    b = np.asarray(b)
    floor = rtol * float(np.max(np.abs(b), initial=0.0))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=floor, err_msg=f"{what}, leaf {i}")


def _assert_within_scale(actual, desired, scales, rtol, what):
  # |a - b| <= rtol * (magnitude of the terms summed into b), elementwise.
  for i, (a, b, scale) in enumerate(zip(actual, desired, scales)):
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    bad = err > rtol * scale
    assert not np.any(bad), (
      f"{what}, leaf {i}: |error| {err[bad]} exceeds {rtol} * term scale {scale[bad]}"
    )


@settings(
  max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_problems())
def test_matches_optax_and_reference_on_random_trees(problem):
  """Each step: ours vs optax.lars (own trajectories) and vs the float64 reference.

  Tolerances: updates vs optax as `test_matches_optax_lars` (rtol 1e-6, floor 1e-6 *
  max|u| per leaf); params vs optax rtol 1e-6 plus 1e-6 * the magnitude of all terms
  summed into each element (p0 and every step: a param that cancels to ~0 keeps the
  absolute error of its larger terms); vs the reference see REF_RTOL.
  """
  treedef, params, grads, hyper, wd_bits, tr_bits = problem
  ours, theirs = lars_jax.lars(**hyper), optax_lars(**hyper)
  ref = LarsReference(
    **{k: v for k, v in hyper.items() if not k.endswith("_mask")}, wd_mask=wd_bits, tr_mask=tr_bits
  )
  p_ours = p_theirs = treedef.unflatten([jnp.asarray(p) for p in params])
  s_ours, s_theirs = ours.init(p_ours), theirs.init(p_theirs)
  for step, g in enumerate(grads):
    g_tree = treedef.unflatten([jnp.asarray(x) for x in g])
    u_ours, s_ours = ours.update(g_tree, s_ours, p_ours)
    u_theirs, s_theirs = theirs.update(g_tree, s_theirs, p_theirs)
    u_ref, _ = ref.step([np.asarray(x, np.float64) for x in jax.tree.leaves(p_ours)], g)
    u_ours_l = jax.tree.leaves(u_ours)
    assert all(np.all(np.isfinite(u)) for u in u_ours_l)
    _assert_updates_close(u_ours_l, jax.tree.leaves(u_theirs), RTOL, f"vs optax, step {step}")
    _assert_within_scale(u_ours_l, u_ref, ref.update_scale, REF_RTOL, f"vs reference, step {step}")
    p_ours = optax.apply_updates(p_ours, u_ours)
    p_theirs = optax.apply_updates(p_theirs, u_theirs)
    p_theirs_l = jax.tree.leaves(p_theirs)
    scales = [np.abs(np.asarray(b, np.float64)) + s for b, s in zip(p_theirs_l, ref.param_scale)]
    _assert_within_scale(jax.tree.leaves(p_ours), p_theirs_l, scales, RTOL, f"params, step {step}")


def test_traced_hyperparameters_are_not_branched_on():
  # lars built inside jit from traced hyperparameters: checks skip them, no Python
  # branch on their values, same numbers as with Python floats.
  params = _params(jax.random.PRNGKey(1))
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x), params)

  def run(lr, wd, eta, eps, mu):
    tx = lars_jax.lars(
      lr, weight_decay=wd, trust_coefficient=eta, eps=eps, momentum=mu, nesterov=True
    )
    p, state = params, tx.init(params)
    for _ in range(3):
      u, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, u)
    return p

  hyper = (0.5, 1e-2, 0.02, 1e-3, 0.9)
  traced = jax.jit(run)(*hyper)
  eager = run(*hyper)
  # Same operations; XLA may fuse (and round) differently under jit: a few ulps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7), traced, eager)
  # Traced zeros are not the Python-zero shortcut but give the same numbers.
  traced = jax.jit(run)(0.5, 0.0, 0.02, 0.0, 0.0)
  eager = run(0.5, 0.0, 0.02, 0.0, 0.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7), traced, eager)


def test_docstring_example_lowers_the_loss():
  # The doctest runs in CI via --doctest-modules; here we also check what it shows:
  # a loss that visibly decreases (optax's own example prints one value five times).
  finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
  for test in finder.find(lars_jax.lars, "lars"):
    runner.run(test)
  assert runner.tries > 0 and runner.failures == 0
  shown = [
    float(v) for v in re.findall(r"^\s*Objective function: (\S+)$", lars_jax.lars.__doc__, re.M)
  ]
  assert len(shown) == 5
  assert all(a > b for a, b in zip(shown, shown[1:]))
  assert shown[-1] < shown[0] / 100


def test_mask_errors_name_the_lars_argument():
  """A mask that does not fit names the `lars` keyword it came from, not only `mask`."""
  WHO = "scale_by_trust_ratio_with_decay: "  # noqa: N806
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match=WHO + r"`weight_decay_mask` does not match"):
    lars_jax.lars(1.0, weight_decay=0.1, weight_decay_mask={"w": True, "x": False}).init(params)
  with pytest.raises(ValueError, match=WHO + r"`trust_ratio_mask` does not match"):
    lars_jax.lars(1.0, trust_ratio_mask=[True]).init(params)
  with pytest.raises(TypeError, match=WHO + r"`trust_ratio_mask` must hold Python bools"):
    lars_jax.lars(1.0, trust_ratio_mask={"w": 1, "b": 0}).init(params)


# ----------------------------------------------------------------------------
# lars() is the chain of the public pieces (issue 12).


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("jit", [False, True])
def test_chain_of_public_transforms_equals_lars(kwargs, jit):
  """lars() fuses decay and trust ratio into one transform for speed; the chain of the
  pure public pieces gives the same updates, step for step (rtol 1e-6, jitted or not)."""
  kw = dict(dict(weight_decay=0.0, trust_coefficient=0.001, eps=0.0, momentum=0.9), **kwargs)
  lr = optax.warmup_cosine_decay_schedule(0.0, 2.0, 3, 10)
  chain = optax.chain(
    lars_jax.add_decayed_weights(kw["weight_decay"], mask=kw.get("weight_decay_mask")),
    lars_jax.scale_by_trust_ratio(
      kw["trust_coefficient"], kw["eps"], mask=kw.get("trust_ratio_mask")
    ),
    lars_jax.scale_by_learning_rate(lr),
    lars_jax.trace(kw["momentum"], nesterov=kw.get("nesterov", False)),
  )
  ours = lars_jax.lars(lr, **kwargs)
  params = _params(jax.random.PRNGKey(1))
  s_c, s_o = chain.init(params), ours.init(params)
  upd_c = jax.jit(chain.update) if jit else chain.update
  upd_o = jax.jit(ours.update) if jit else ours.update
  p_c = p_o = params
  for i in range(6):
    g = jax.tree.map(lambda x, i=i: jax.random.normal(jax.random.PRNGKey(7 + i), x.shape), params)
    u_c, s_c = upd_c(g, s_c, p_c)
    u_o, s_o = upd_o(g, s_o, p_o)
    for a, b in zip(jax.tree.leaves(u_o), jax.tree.leaves(u_c)):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * float(jnp.max(jnp.abs(b))))
    p_c, p_o = optax.apply_updates(p_c, u_c), optax.apply_updates(p_o, u_o)


# ----------------------------------------------------------------------------
# Non-finite values propagate as in optax (issue 11, section 1).

NONFINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("where", ["grad", "param"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_nonfinite_values_match_optax_lars(bad, where, wd):
  """A NaN/Inf in a gradient or parameter gives optax.lars's values, NaN positions
  included: the zero-norm fallback (norm == 0) never turns a NaN norm into 1."""
  params = {"w": jnp.ones((3, 3)), "ok": jnp.full((2,), 2.0)}
  grads = {"w": jnp.ones((3, 3)), "ok": jnp.ones(2)}
  tree = grads if where == "grad" else params
  tree["w"] = tree["w"].at[1, 1].set(bad)
  ours, ref = lars_jax.lars(0.1, weight_decay=wd), optax_lars(0.1, weight_decay=wd)
  u, _ = ours.update(grads, ours.init(params), params)
  u_ref, _ = ref.update(grads, ref.init(params), params)
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=RTOL)
  assert not np.all(np.isfinite(u["w"]))  # never laundered into a finite step
  np.testing.assert_allclose(u["ok"], u_ref["ok"], rtol=RTOL)  # other leaves unaffected


def test_nan_gradient_is_not_a_plain_sgd_step():
  """The issue's case: one NaN used to give -0.1 (an SGD step, 100x LARS) elsewhere."""
  g = jnp.ones((3, 3)).at[0, 0].set(jnp.nan)
  tx = lars_jax.lars(0.1)
  u, _ = tx.update(g, tx.init(jnp.ones((3, 3))), jnp.ones((3, 3)))
  assert np.all(np.isnan(u))


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_zero_norms_give_no_nan_even_through_the_gradient(wd):
  """Exact zero norms fall back to ratio 1, and differentiating through the update at
  a zero parameter or gradient gives finite derivatives."""
  tx = lars_jax.lars(0.1, weight_decay=wd)

  def loss(p, g):
    u, _ = tx.update(g, tx.init(p), p)
    return jnp.sum(u**2)

  for p, g in [(jnp.zeros(3), jnp.ones(3)), (jnp.ones(3), jnp.zeros(3)), (jnp.zeros(3),) * 2]:
    u, _ = tx.update(g, tx.init(p), p)
    assert np.all(np.isfinite(u))
    dp, dg = jax.grad(loss, argnums=(0, 1))(p, g)
    assert np.all(np.isfinite(dp)) and np.all(np.isfinite(dg))


# ----------------------------------------------------------------------------
# Continuing from an optax.lars state (issue 11, section 6).

CONVERT_CASES = [
  dict(),
  dict(weight_decay=1e-2, nesterov=True),
  dict(
    weight_decay=optax.exponential_decay(0.1, 2, 0.5),
    weight_decay_mask=lars_jax.masks.min_ndim(2),
    trust_ratio_mask=lars_jax.masks.min_ndim(2),
  ),
]


@pytest.mark.parametrize("kwargs", CONVERT_CASES)
@pytest.mark.parametrize("schedule", [False, True])
@pytest.mark.parametrize("keep_stats", [False, True])
def test_state_from_optax_lars_continues_bit_for_bit(kwargs, schedule, keep_stats):
  if callable(kwargs.get("weight_decay")) and OPTAX_VERSION < (0, 2, 7):
    pytest.skip(OPTAX_LARS_SCHEDULED_DECAY)
  lr = optax.warmup_cosine_decay_schedule(0.0, 2.0, 3, 10) if schedule else 0.7
  ref, ours = optax.lars(lr, **kwargs), lars_jax.lars(lr, **kwargs, keep_stats=keep_stats)
  params = _params(jax.random.PRNGKey(2))

  def grads(i):
    return jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(50 + i), x.shape), params)

  step_ref, step_ours = jax.jit(ref.update), jax.jit(ours.update)
  p, s = params, ref.init(params)
  for i in range(4):  # train with optax.lars
    u, s = step_ref(grads(i), s, p)
    p = optax.apply_updates(p, u)
  p_ref, s_ref = p, s
  p_ours, s_ours = p, lars_jax.state_from_optax_lars(s, ours.init(p))
  for i in range(4, 8):  # continue with optax and with lars_jax
    u, s_ref = step_ref(grads(i), s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
    u, s_ours = step_ours(grads(i), s_ours, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
      np.testing.assert_array_equal(a, b)


def test_state_from_optax_lars_says_what_differs():
  params = _params(jax.random.PRNGKey(3))
  s = optax.lars(0.1).init(params)
  with pytest.raises(ValueError, match="counts learning-rate steps"):
    lars_jax.state_from_optax_lars(s, lars_jax.lars(optax.constant_schedule(0.1)).init(params))
  with pytest.raises(ValueError, match="must be the state of optax.lars"):
    lars_jax.state_from_optax_lars(lars_jax.lars(0.1).init(params), lars_jax.lars(0.1).init(params))
  with pytest.raises(ValueError, match="momentum buffers differ"):
    lars_jax.state_from_optax_lars(s, lars_jax.lars(0.1).init({"x": jnp.ones(2)}))


# ----------------------------------------------------------------------------
# Argument errors (issue 11, section 5).


def test_gradient_shape_mismatch_names_the_leaf():
  params = {"dense": {"kernel": jnp.ones((4, 3))}}
  tx = lars_jax.lars(0.1)
  for bad in [(3, 4), (4, 1)]:  # transposed; broadcastable but different
    shapes = rf"'dense/kernel' has shape \({bad[0]}, {bad[1]}\).*\(4, 3\)"
    with pytest.raises(ValueError, match=shapes):
      tx.update({"dense": {"kernel": jnp.ones(bad)}}, tx.init(params), params)


def test_integer_parameter_uses_the_path_format():
  with pytest.raises(TypeError, match=r"parameter 'opt/step' has dtype int32"):
    lars_jax.lars(0.1).init({"opt": {"step": jnp.zeros((), jnp.int32)}, "w": jnp.ones(2)})


def test_bad_accumulator_dtype_names_the_argument():
  for bad in ["float33", jnp.int32]:
    with pytest.raises(TypeError, match="`accumulator_dtype`"):
      lars_jax.lars(0.1, accumulator_dtype=bad)


@pytest.mark.parametrize(
  "make",
  [
    lambda m: lars_jax.lars(0.1, weight_decay=0.1, weight_decay_mask=m, trust_ratio_mask=m),
    lambda m: lars_jax.torch_lars(0.1, weight_decay=1e-2, weight_decay_mask=m),
    lambda m: lars_jax.scale_by_trust_ratio(mask=m),
  ],
)
def test_dict_masks_work_with_optax_tree_map_params(make):
  """tree_map_params (used to derive state shardings) calls init on a leafless
  placeholder: a dict mask must not be resolved against it (optax.lars handles this)."""
  params = {"k": jnp.ones((4, 4)), "b": jnp.ones(4)}
  tx = make({"k": False, "b": True})
  state = tx.init(params)
  mapped = optax.tree_map_params(tx, lambda x: x + 1, state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
