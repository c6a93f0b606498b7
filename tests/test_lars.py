"""lars_jax.lars against the real optax.lars, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
  ours, ref = lars_jax.lars(lr, **kwargs), optax.lars(lr, **kwargs)
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
