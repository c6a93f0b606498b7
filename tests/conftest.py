"""Shared fixtures. `x64`: float64 enabled for the test, through `jax.config`, restored after.

Use it instead of the `jax.enable_x64` context manager, which jax < 0.8 lacks (the suite
also runs at jax 0.4.35, `.ci/floors.txt`):

    def test_something_in_float64(x64):
      assert jnp.ones(2, jnp.float64).dtype == jnp.float64

For part of a test, or float64 only for some parameters: `with compat.enable_x64(on):`
(tests/compat.py).
"""

import pytest
from compat import enable_x64, versions_line


def pytest_report_header(config):
  return versions_line()


@pytest.fixture
def x64():
  """jax_enable_x64 on for the test; its previous value restored afterwards."""
  with enable_x64(True):
    yield
