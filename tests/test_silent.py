"""Issue 18: no silent wrong answers, round 2. One test per item; each failed on
863524c. Shared setup: P = {'k': ones((4, 4)), 'b': ones(4)}, G = 0.01 * P."""

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

P = {"k": jnp.ones((4, 4)), "b": jnp.ones(4)}
G = jax.tree.map(lambda x: 0.01 * x, P)


def _step(tx, params=P, grads=G):
  return tx.update(grads, tx.init(params), params)


# 1. Statistics say what was applied.
def test_item1_stats_only_for_applied_leaves():
  _, state = _step(lars_jax.torch_lars(0.1, keep_stats=True))  # Flash's wd = 0: no LARS
  assert lars_jax.layer_stats(state) == {}
  # A traced zero decay (inject_hyperparams): the leaves pass through, ratio 1, real norms.
  tx = optax.inject_hyperparams(lars_jax.torch_lars)(0.1, weight_decay=0.0, keep_stats=True)
  _, state = _step(tx)
  stats = lars_jax.layer_stats(state)
  assert stats["trust_ratio/k"] == 1.0 and stats["param_norm/k"] == pytest.approx(4.0)
  # Flash's guard (a zero gradient passes through): ratio 1 reported, not the formula's.
  tx = lars_jax.torch_lars(0.1, weight_decay=0.1, keep_stats=True)
  _, state = _step(tx, grads={"k": jnp.zeros((4, 4)), "b": G["b"]})
  assert lars_jax.layer_stats(state)["trust_ratio/k"] == 1.0


# 2. A shape or combined mask that selects nothing raises; inside partitions it is legal.
def test_item2_empty_callable_mask_raises_at_top_level():
  tx = lars_jax.lars(
    1.0, weight_decay=1e-4, weight_decay_mask=masks.min_ndim(3), trust_ratio_mask=masks.min_ndim(3)
  )
  with pytest.raises(
    ValueError, match=r"`trust_ratio_mask` \(min_ndim\(3\)\) selects no parameter"
  ):
    tx.init(P)
  combined = masks.all_of(masks.min_ndim(2), masks.only_names("b"))
  with pytest.raises(ValueError, match=r"all_of\) selects no parameter"):
    lars_jax.lars(1.0, trust_ratio_mask=combined).init(P)
  lars_jax.lars(1.0, trust_ratio_mask=False).init(P)  # False says "no leaf" on purpose
  part = optax.multi_transform(
    {"a": lars_jax.lars(1.0, trust_ratio_mask=masks.min_ndim(2)), "o": optax.sgd(0.1)},
    {"k": "o", "b": "a"},
  )
  _step(part)  # the LARS partition holds only the 1-D leaf: legal


# 3 and 11: shard_map with replicated leaves given an axis; run in a subprocess with 4
# host devices (the flag must be set before JAX starts).
SHARD_MAP = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np, lars_jax
  from jax.sharding import PartitionSpec as P, NamedSharding
  mesh = jax.make_mesh((4,), ('model',))
  params = {'k': jnp.arange(16.0).reshape(4, 4) + 1, 'b': jnp.ones(4)}
  specs = {'k': P('model'), 'b': P()}
  params = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)
  grads = jax.tree.map(lambda x: 0.01 * x, params)
  def run(axis_name):
    tx = lars_jax.lars(0.1, axis_name=axis_name)
    def step(g, p):
      return tx.update(g, tx.init(p), p)[0]
    f = jax.shard_map(step, mesh=mesh, in_specs=(specs, specs), out_specs=specs)
    return jax.jit(f)(grads, params)
  try:
    run('model')
    print('NO ERROR')
  except ValueError as e:
    print('ERROR', e)
  ours = run(specs)
  ref = lars_jax.lars(0.1).update(grads, lars_jax.lars(0.1).init(params), params)[0]
  print('MAXDIFF', max(float(jnp.max(jnp.abs(a - b))) for a, b in
                      zip(jax.tree.leaves(ours), jax.tree.leaves(ref))))
  """
)


def test_item3_replicated_leaf_given_an_axis_under_shard_map_raises():
  if not hasattr(jax, "shard_map") or not hasattr(jax, "typeof"):
    pytest.skip(f"jax {jax.__version__} has no jax.shard_map / jax.typeof (no varying types)")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run(
    [sys.executable, "-c", SHARD_MAP], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert (
    "ERROR scale_by_trust_ratio_with_decay: parameter 'b' is replicated over the mesh "
    "axis ['model']" in out.stdout
  )
  assert "PartitionSpec tree" in out.stdout
  assert float(out.stdout.split("MAXDIFF")[1]) < 1e-7


# 4. keep_stats with nothing adapted works (and reports nothing).
@pytest.mark.parametrize(
  "make",
  [
    lambda: lars_jax.scale_by_trust_ratio(mask=False, keep_stats=True),
    lambda: lars_jax.torch_lars(0.1, weight_decay=0.1, weight_decay_mask=False, keep_stats=True),
    lambda: lars_jax.tf_lars(0.1, exclude_from_weight_decay=["k", "b"], keep_stats=True),
    lambda: optax.multi_transform(
      {
        "a": lars_jax.lars(0.1, trust_ratio_mask=masks.min_ndim(2), keep_stats=True),
        "o": optax.sgd(0.1),
      },
      {"k": "o", "b": "a"},
    ),
  ],
  ids=["scale_by_trust_ratio", "torch_lars", "tf_lars", "partition"],
)
def test_item4_keep_stats_with_nothing_adapted(make):
  tx = make()
  u, state = jax.jit(tx.update)(G, tx.init(P), P)
  assert lars_jax.layer_stats(state) == {}
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(u))


# 5. Schedules where only numbers work fail at construction, naming the argument.
@pytest.mark.parametrize("arg", ["trust_coefficient", "eps", "momentum"])
def test_item5_schedule_for_a_number_raises_at_construction(arg):
  with pytest.raises(TypeError, match=f"`{arg}` must be a number here, not a schedule"):
    lars_jax.lars(0.1, **{arg: optax.constant_schedule(1e-3)})


# 6. Continuing from optax.lars: inject_hyperparams, dtypes, clear errors.
def test_item6_state_from_optax_lars():
  theirs = optax.inject_hyperparams(optax.lars)(0.1, weight_decay=1e-4, momentum=0.8)
  ours = optax.inject_hyperparams(lars_jax.lars)(0.1, weight_decay=1e-4, momentum=0.9)
  s = theirs.init(P)
  for _ in range(2):
    _, s = theirs.update(G, s, P)
  converted = lars_jax.state_from_optax_lars(s, ours.init(P))
  assert float(converted.hyperparams["momentum"]) == pytest.approx(0.8)  # carried over
  u1, _ = theirs.update(G, s, P)
  u2, _ = ours.update(G, converted, P)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
  with pytest.raises(
    ValueError,
    match=r"`init_state` must be lars_jax.lars.*Got a 3-tuple "
    r"\(EmptyState, EmptyState, EmptyState\)",
  ):
    lars_jax.state_from_optax_lars(optax.lars(0.1).init(P), lars_jax.torch_lars(0.1).init(P))
  with pytest.raises(ValueError, match="arguments look swapped"):
    lars_jax.state_from_optax_lars(lars_jax.lars(0.1).init(P), optax.lars(0.1).init(P))
  with pytest.raises(
    ValueError, match=r"Got a 4-tuple \(EmptyState, EmptyState, EmptyState, TraceState\)"
  ):
    lars_jax.state_from_optax_lars(optax.lars(0.1).init(P), lars_jax.tf_lars(0.1).init(P))
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), P)
  out = lars_jax.state_from_optax_lars(optax.lars(0.1).init(P), lars_jax.lars(0.1).init(bf16))
  assert {x.dtype for x in jax.tree.leaves(out[-1].trace)} == {jnp.dtype(jnp.bfloat16)}
  masked = optax.masked(lars_jax.lars(0.1), {"k": True, "b": False}).init(P).inner_state
  with pytest.raises(ValueError, match=r"MaskedNode stands at no leaf in optax's, at \['b'\]"):
    lars_jax.state_from_optax_lars(optax.lars(0.1).init(P), masked)


# 7. Params on several devices, outside jit: as optax, same numbers.
MULTI_DEVICE = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np, optax, lars_jax
  d = jax.devices()
  params = {'a': jax.device_put(jnp.ones((3, 3)), d[0]),
            'b': jax.device_put(jnp.full(3, 2.0), d[1]),
            'c': jax.device_put(jnp.full(2, 3.0), d[1])}
  grads = jax.tree.map(lambda x: 0.1 * x, params)
  for tx in (lars_jax.lars(0.1, weight_decay=1e-3), optax.lars(0.1, weight_decay=1e-3)):
    state = tx.init(params)
    for _ in range(2):
      u, state = tx.update(grads, state, params)
    leaves = jax.tree.leaves(u)
    print([sorted(x.devices())[0].id for x in leaves], [np.asarray(x).tolist() for x in leaves])
  """
)


def test_item7_params_on_several_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(
    [sys.executable, "-c", MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  ours, theirs = out.stdout.strip().splitlines()
  assert ours.split("]")[0] == "[0, 1, 1"  # each update stays on its leaf's device
  a, b = eval(ours.split("] ", 1)[1]), eval(theirs.split("] ", 1)[1])
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-6)


# 8. layer_stats on a state without statistics says keep_stats=True is needed.
def test_item8_layer_stats_without_statistics():
  tx = lars_jax.lars(0.1)
  for bad in (tx.init(P), None, tx):
    with pytest.raises(ValueError, match="keep_stats=True"):
      lars_jax.layer_stats(bad)
  tx = lars_jax.lars(0.1, keep_stats=True)

  @jax.jit
  def step(state):
    _, state = tx.update(G, state, P)
    return lars_jax.layer_stats(state)

  with pytest.raises(ValueError, match="inside jit"):
    step(tx.init(P))


# 10. inject_hyperparams with bf16 params: float32 hyperparameters give lars's numbers.
def test_item10_inject_with_bf16_params_needs_float32_hyperparameters():
  params = {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(64, 64).astype(jnp.bfloat16)}
  grads = jax.tree.map(lambda x: (0.01 * x).astype(jnp.bfloat16), params)
  # Every float hyperparameter, defaults included, would be stored as bf16 otherwise.
  kw = dict(learning_rate=0.1, weight_decay=1e-4, momentum=0.9, trust_coefficient=1e-3, eps=0.0)

  def run(tx):
    state = tx.init(params)
    for _ in range(3):
      u, state = jax.jit(tx.update)(grads, state, params)
    return np.asarray(u["w"], np.float32), state

  want, _ = run(lars_jax.lars(**kw))
  inject = optax.inject_hyperparams(lars_jax.lars, hyperparam_dtype=jnp.float32)
  got, state = run(inject(**kw))
  np.testing.assert_array_equal(got, want)
  bad, bad_state = run(optax.inject_hyperparams(lars_jax.lars)(**kw))  # Python floats
  assert bad_state.hyperparams["learning_rate"].dtype == jnp.bfloat16  # 0.100098
  assert (bad != want).sum() > 1000
