"""lars_jax/_compat.py: each version branch, at whichever end this run installed.

`.ci/run` runs this file at the newest releases and at `.ci/floors.txt` (jax 0.4.35,
optax 0.2.4, Flax 0.10.4), so both sides of every branch are tested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compat import FLAX_VERSION

import lars_jax
from lars_jax import _compat


def test_version_parsing():
  assert _compat.version("0.4.35") == (0, 4, 35)
  assert _compat.version("0.5.3.dev20250101") == (0, 5, 3)
  assert _compat.version("0.10.2rc1") == (0, 10, 2)
  assert _compat.version("2.0") == (2, 0, 0)
  assert _compat.version("1.26.4+local") == (1, 26, 4)
  assert _compat.JAX_VERSION == _compat.version(jax.__version__)


def _problem():
  params = {"w": jnp.linspace(-1.0, 2.0, 12).reshape(3, 4), "b": jnp.array([0.5, -0.25])}
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x), params)
  return params, grads


def test_barrier_keeps_values_and_differentiates_and_vmaps():
  """The decayed-update path (weight decay on, traced) under jit, grad and vmap: what
  needs the barrier's differentiation and batching rules (jax >= 0.5.3) or its absence."""
  params, grads = _problem()
  tx = lars_jax.lars(0.1, weight_decay=1e-2, momentum=0.0)

  def update(p, g):
    return tx.update(g, tx.init(p), p)[0]

  eager = update(params, grads)
  jax.tree.map(np.testing.assert_array_equal, jax.jit(update)(params, grads), eager)
  # The update is linear in the learning rate: d sum(u) / d lr == sum(u) / lr.
  lr_grad = jax.grad(
    lambda lr: sum(
      jnp.sum(x)
      for x in jax.tree.leaves(
        lars_jax.lars(lr, weight_decay=1e-2, momentum=0.0).update(grads, tx.init(params), params)[0]
      )
    )
  )(0.1)
  np.testing.assert_allclose(
    lr_grad, sum(float(jnp.sum(x)) for x in jax.tree.leaves(eager)) / 0.1, rtol=1e-5
  )
  # Through params too (what meta-learning does), finite everywhere.
  dp = jax.jit(jax.grad(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(update(p, grads)))))(
    params
  )
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(dp))
  # vmap over a stack of two problems equals each problem alone.
  stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), (params, grads))
  batched = jax.jit(jax.vmap(update))(*stacked)
  second = update(jax.tree.map(lambda x: 2 * x, params), jax.tree.map(lambda x: 2 * x, grads))
  for b, a0, a1 in zip(jax.tree.leaves(batched), jax.tree.leaves(eager), jax.tree.leaves(second)):
    np.testing.assert_allclose(b[0], a0, rtol=1e-6)
    np.testing.assert_allclose(b[1], a1, rtol=1e-6)


def test_barrier_branch_matches_the_version():
  if _compat.JAX_VERSION >= (0, 5, 3):
    assert _compat.optimization_barrier is jax.lax.optimization_barrier
  else:
    x = jnp.ones(3)
    assert _compat.optimization_barrier(x) is x


def test_decay_schedule_check():
  for kind in ("lars", "tf_lars", "torch_lars"):
    _compat.check_decay_schedule(kind, optax.constant_schedule(0.1))
  _compat.check_decay_schedule("adamw", None)
  if _compat.OPTAX_VERSION >= (0, 2, 7):
    _compat.check_decay_schedule("adamw", optax.constant_schedule(0.1))
  else:
    with pytest.raises(ValueError, match=r"kind 'adamw'.*optax 0\.2\.7.*this is optax"):
      _compat.check_decay_schedule("adamw", optax.constant_schedule(0.1))


def test_nnx_variables_found_and_unwrapped():
  nnx = pytest.importorskip("flax.nnx")
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  types = _compat.nnx_variable_types()
  wrapped = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, types))
  assert len(wrapped) == 2 and all(isinstance(x, types) for x in wrapped)
  if FLAX_VERSION < (0, 11, 0):
    assert any(t.__name__ == "VariableState" for t in types)
  values = _compat.nnx_values(state)
  leaves = jax.tree.leaves(values, is_leaf=lambda x: isinstance(x, types))
  assert [x.shape for x in leaves] == [(3,), (2, 3)]
  assert not any(isinstance(x, types) for x in leaves)
  assert _compat.nnx_values({"a": jnp.ones(2)})["a"].shape == (2,)
