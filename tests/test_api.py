"""The public surface (issue 21 §4, in the style of dm_pix's api_test): every name in
`lars_jax.__all__` is in the README's API tables, every public function has a doctest,
and its options after the first few hyperparameters are keyword-only."""

import inspect
import types

import pytest
from readme_blocks import section

import lars_jax

API = section("API")
FUNCTIONS = [
  n
  for n in lars_jax.__all__
  if inspect.isfunction(getattr(lars_jax, n)) and not isinstance(getattr(lars_jax, n), type)
]


@pytest.mark.parametrize("name", lars_jax.__all__)
def test_in_the_readme_api_tables(name):
  assert f"`{name}" in API or f"`{name}." in API or f"{name}." in API, name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_has_a_doctest(name):
  assert ">>>" in (getattr(lars_jax, name).__doc__ or ""), name


@pytest.mark.parametrize("name", ["masks", "schedules", "sharding"])
def test_public_modules_say_what_is_public(name):
  module = getattr(lars_jax, name)
  assert isinstance(module, types.ModuleType)
  for public in module.__all__:
    assert not public.startswith("_") and hasattr(module, public)


FLAGS = {
  "nesterov",
  "keep_stats",
  "axis_name",
  "accumulator_dtype",
  "positive_norms_only",
  "adapt_without_decay",
  "clip_learning_rate",
  "guard",
  "trust_clip",
  "always_adapt",
  "flip_sign",
  "clip",
}
# optax.lars's and the mimicked frameworks' own positional orders are kept for drop-in use.
POSITIONAL_BY_DESIGN = {
  ("lars", "nesterov"),
  ("tf_lars", "nesterov"),
  ("torch_lars", "nesterov"),
  ("trace", "nesterov"),
  ("trace", "accumulator_dtype"),
  ("tf_lars", "classic_momentum"),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_flags_are_keyword_only(name):
  params = inspect.signature(getattr(lars_jax, name)).parameters
  for p in params.values():
    if p.name in FLAGS and (name, p.name) not in POSITIONAL_BY_DESIGN:
      assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
