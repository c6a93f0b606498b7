"""layer_stats: the per-layer numbers the optimizer applied, read from its state.

References are float64 NumPy norms of the decayed gradient and the parameters, and
the update the optimizer actually returned (the ratio must be the one applied).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compat import enable_x64, nnx_update

import lars_jax
from lars_jax import masks

RTOL = 1e-6  # float32 norms vs float64 references


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  return {
    "conv": {"kernel": f(3, 3, 2, 4), "bias": f(4)},
    "BatchNorm_0": {"scale": 1.0 + 0.1 * f(4), "bias": f(4)},
    "head": {"kernel": f(4, 3)},
  }


def _grads(seed):
  return jax.tree.map(lambda x: 0.1 * x, _params(seed))


def test_hand_values():
  # |w| = 5, u = g + 0.1 w = (0.6, 0.8): |u| = 1, ratio 0.001 * 5 / 1.
  tx = lars_jax.lars(1.0, weight_decay=0.1, keep_stats=True)
  w, g = {"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([0.3, 0.4])}
  _, state = tx.update(g, tx.init(w), w)
  stats = lars_jax.layer_stats(state)
  assert stats == pytest.approx({"param_norm/w": 5.0, "update_norm/w": 1.0, "trust_ratio/w": 0.005})


@pytest.mark.parametrize("jit", [False, True])
def test_stats_are_what_lars_applied(jit):
  """Norms equal float64 references; the ratio times u is the update lars returned
  (first step, so momentum's output is its input); excluded leaves have no entry."""
  wd, lr = 0.05, 0.3
  adapt = masks.exclude_names("bias", "BatchNorm")
  tx = lars_jax.lars(lr, weight_decay=wd, weight_decay_mask=adapt, trust_ratio_mask=adapt,
                     keep_stats=True)  # fmt: skip
  params, grads = _params(), _grads(1)
  update = jax.jit(tx.update) if jit else tx.update
  updates, state = update(grads, tx.init(params), params)
  stats = lars_jax.layer_stats(state)
  assert sorted({k.split("/", 1)[1] for k in stats}) == ["conv/kernel", "head/kernel"]
  for path in ("conv/kernel", "head/kernel"):
    w = np.asarray(params[path.split("/")[0]]["kernel"], np.float64)
    g = np.asarray(grads[path.split("/")[0]]["kernel"], np.float64)
    u = g + wd * w
    np.testing.assert_allclose(stats[f"param_norm/{path}"], np.linalg.norm(w), rtol=RTOL)
    np.testing.assert_allclose(stats[f"update_norm/{path}"], np.linalg.norm(u), rtol=RTOL)
    applied = np.asarray(updates[path.split("/")[0]]["kernel"], np.float64)
    np.testing.assert_allclose(applied, -lr * stats[f"trust_ratio/{path}"] * u, rtol=1e-5)


def test_keep_stats_changes_no_number_and_adds_no_reduction():
  params, grads = _params(), _grads(2)
  kw = dict(weight_decay=1e-3, trust_ratio_mask=masks.min_ndim(2))
  on, off = lars_jax.lars(0.1, **kw, keep_stats=True), lars_jax.lars(0.1, **kw)
  s_on, s_off = on.init(params), off.init(params)
  for i in range(3):
    g = _grads(10 + i)
    u_on, s_on = on.update(g, s_on, params)
    u_off, s_off = off.update(g, s_off, params)
    jax.tree.map(np.testing.assert_array_equal, u_on, u_off)

  def reductions(tx):
    jaxpr = jax.make_jaxpr(tx.update)(grads, tx.init(params), params)
    return str(jaxpr).count("reduce_sum")

  assert reductions(on) == reductions(off) > 0
  with pytest.raises(ValueError, match="keep_stats=True"):  # issue 18 item 8
    lars_jax.layer_stats(s_off)


@pytest.mark.parametrize(
  "wrap",
  ["chain", "inject_hyperparams", "multi_steps", "masked", "multi_transform"],
)
def test_found_inside_optax_wrappers(wrap):
  params, grads = _params(), _grads(3)
  base = dict(weight_decay=1e-3, keep_stats=True)
  if wrap == "chain":
    tx = optax.chain(optax.clip_by_global_norm(1e3), lars_jax.lars(0.1, **base))
  elif wrap == "inject_hyperparams":
    tx = optax.inject_hyperparams(lars_jax.lars)(learning_rate=0.1, **base)
  elif wrap == "multi_steps":
    tx = optax.MultiSteps(lars_jax.lars(0.1, **base), every_k_schedule=1)
  elif wrap == "masked":
    tx = optax.masked(lars_jax.lars(0.1, **base), masks.min_ndim(2))
  else:
    labels = jax.tree.map(lambda x: "lars" if x.ndim >= 2 else "sgd", params)
    tx = optax.multi_transform(
      {"lars": lars_jax.lars(0.1, **base), "sgd": lars_jax.lars(0.5, **base)}, labels
    )
  _, state = tx.update(grads, tx.init(params), params)
  stats = lars_jax.layer_stats(state)
  direct = lars_jax.lars(0.1, **base)
  _, s = direct.update(grads, direct.init(params), params)
  expected = lars_jax.layer_stats(s)
  if wrap == "masked":
    expected = {k: v for k, v in expected.items() if k.endswith("kernel")}
  assert stats.keys() == expected.keys()
  for k in stats:
    np.testing.assert_allclose(stats[k], expected[k], rtol=RTOL, err_msg=k)


def test_presets_keep_what_they_applied():
  """Each preset reports its own rule: Flash/LARC divide by |g| + wd |w| (raw gradient)."""
  w, g = {"k": jnp.array([[3.0, 4.0]])}, {"k": jnp.array([[0.6, 0.8]])}
  for tx, ratio in [
    (lars_jax.tf_lars(1.0, weight_decay_rate=0.0, eeta=0.001, keep_stats=True), 0.005),
    (lars_jax.tf_lars(1.0, eeta=0.001, classic_momentum=False, keep_stats=True), 0.005),
    (lars_jax.torch_lars(1.0, weight_decay=0.1, eps=0.0, keep_stats=True), 0.005 / 1.5),
    (lars_jax.larc(optax.sgd(1.0), 1.0, eps=0.0, clip=False, keep_stats=True), 0.1),
  ]:
    _, state = tx.update(g, tx.init(w), w)
    stats = lars_jax.layer_stats(state)
    np.testing.assert_allclose(stats["trust_ratio/k"], ratio, rtol=RTOL)
    np.testing.assert_allclose(stats["param_norm/k"], 5.0, rtol=RTOL)
    np.testing.assert_allclose(stats["update_norm/k"], 1.0, rtol=RTOL)


def test_nan_and_inf_are_reported_as_they_are():
  """A diverging layer must not look healthy: NaN/Inf norms and ratios pass through."""
  tx = lars_jax.lars(0.1, keep_stats=True)
  w = {"a": jnp.ones(3), "b": jnp.ones(3)}
  g = {"a": jnp.array([1.0, jnp.nan, 1.0]), "b": jnp.array([1.0, jnp.inf, 1.0])}
  _, state = tx.update(g, tx.init(w), w)
  stats = lars_jax.layer_stats(state)
  assert np.isnan(stats["update_norm/a"]) and np.isnan(stats["trust_ratio/a"])
  assert np.isinf(stats["update_norm/b"]) and stats["trust_ratio/b"] == 0.0
  w_nan = {"a": jnp.array([1.0, jnp.nan, 1.0]), "b": jnp.ones(3)}
  _, state = tx.update({"a": jnp.ones(3), "b": jnp.ones(3)}, tx.init(w_nan), w_nan)
  assert np.isnan(lars_jax.layer_stats(state)["param_norm/a"])


def test_zero_norms_report_ratio_one():
  tx = lars_jax.lars(0.1, keep_stats=True)
  w = {"zero_w": jnp.zeros(2), "zero_g": jnp.ones(2)}
  g = {"zero_w": jnp.ones(2), "zero_g": jnp.zeros(2)}
  _, state = tx.update(g, tx.init(w), w)
  stats = lars_jax.layer_stats(state)
  assert stats["trust_ratio/zero_w"] == 1.0 and stats["trust_ratio/zero_g"] == 1.0


def test_state_is_jit_and_scan_stable():
  """Same state structure and dtypes after a step (lax.scan and donation need this),
  float64 stats for float64 params, no retrace."""
  params = _params()
  tx = lars_jax.lars(0.1, keep_stats=True)

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  gs = jax.tree.map(lambda x: jnp.stack([x, x]), _grads(4))
  (_, state), _ = jax.lax.scan(step, (params, tx.init(params)), gs)
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
  with enable_x64(True):
    p64 = {"w": jnp.ones(3, jnp.float64)}
    s64 = tx.init(p64)
    assert jax.tree.leaves(s64[0].stats)[0].dtype == jnp.float64
    _, s64 = tx.update(p64, s64, p64)
    assert jax.tree.leaves(s64[0].stats)[0].dtype == jnp.float64


def test_nnx_optimizer_state():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.dense(x)

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, lars_jax.lars(0.1, keep_stats=True), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3))) ** 2))(model)
  nnx_update(optimizer, model, grads)
  stats = lars_jax.layer_stats(optimizer.opt_state)
  assert set(stats) == {f"{s}/dense/{k}" for s in ("param_norm", "update_norm", "trust_ratio")
                        for k in ("kernel", "bias")}  # fmt: skip
  assert lars_jax.layer_stats(nnx.state(optimizer)) == stats


def test_keep_stats_with_the_state_sharding_recipe():
  """The README's pods recipe derives state shardings with optax.tree_map_params: the
  stats scalars must not take their parameters' shardings (they are not params)."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh((1,), ("model",))
  params = {"k": jnp.ones((4, 4)), "b": jnp.ones(4)}
  param_sh = {"k": NamedSharding(mesh, P(None, "model")), "b": NamedSharding(mesh, P("model"))}
  tx = lars_jax.lars(0.1, keep_stats=True)
  state_sh = optax.tree_map_params(
    tx,
    lambda _, s: s,
    jax.eval_shape(tx.init, params),
    param_sh,
    transform_non_params=lambda _: NamedSharding(mesh, P()),
  )
  assert state_sh[-1].trace == param_sh
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  _, state = jax.jit(tx.update)(params, state, params)
  assert set(lars_jax.layer_stats(state)) == {
    f"{s}/{k}" for s in ("param_norm", "update_norm", "trust_ratio") for k in ("k", "b")
  }


def test_empty_tree():
  tx = lars_jax.lars(0.1, keep_stats=True)
  state = tx.init({})
  _, new = jax.jit(tx.update)({}, state, {})
  assert jax.tree.structure(new) == jax.tree.structure(state)
  assert lars_jax.layer_stats(new) == {}


def test_state_stacked_by_vmap():
  """Several models trained at once (vmap over learning rates): one array per key."""
  params, grads = _params(), _grads(5)

  def update(lr):
    tx = optax.inject_hyperparams(lars_jax.lars)(learning_rate=lr, keep_stats=True)
    return tx.update(grads, tx.init(params), params)[1]

  stacked = jax.vmap(update)(jnp.array([0.1, 0.2, 0.4]))
  stats = lars_jax.layer_stats(stacked)
  single = lars_jax.layer_stats(update(0.2))
  assert stats.keys() == single.keys()
  for k, v in stats.items():
    assert v.shape == (3,)
    np.testing.assert_allclose(v[1], single[k], rtol=RTOL)


def test_a_key_seen_twice_names_its_place_in_the_state():
  # Two trust-ratio transforms in one chain both keep stats for 'w': the second key of
  # each stat gets its path in the state, and each value is the one its transform used.
  w, g = {"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([0.6, 0.8])}  # |w| = 5, |g| = 1
  tx = optax.chain(
    lars_jax.scale_by_trust_ratio(0.1, keep_stats=True),  # r = 0.5, update norm 0.5
    lars_jax.scale_by_trust_ratio(0.1, keep_stats=True),  # r = 0.1 * 5 / 0.5 = 1
  )
  _, state = tx.update(g, tx.init(w), w)
  stats = lars_jax.layer_stats(state)
  assert stats == pytest.approx(
    {
      "param_norm/w": 5.0,
      "update_norm/w": 1.0,
      "trust_ratio/w": 0.5,
      "param_norm/1/stats/w": 5.0,
      "update_norm/1/stats/w": 0.5,
      "trust_ratio/1/stats/w": 1.0,
    }
  )
