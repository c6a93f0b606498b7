"""lars_jax: LARS and large-batch training for JAX and optax."""

from lars_jax import masks
from lars_jax.diagnostics import diagnostics_to_floats, layer_diagnostics
from lars_jax.lars import lars
from lars_jax.transforms import (
  AddDecayedWeightsState,
  ScaleByLearningRateState,
  TraceState,
  add_decayed_weights,
  scale_by_learning_rate,
  scale_by_trust_ratio,
  trace,
  trust_ratio,
)

__version__ = "0.1.0"

__all__ = [
  "AddDecayedWeightsState",
  "ScaleByLearningRateState",
  "TraceState",
  "add_decayed_weights",
  "diagnostics_to_floats",
  "lars",
  "layer_diagnostics",
  "masks",
  "scale_by_learning_rate",
  "scale_by_trust_ratio",
  "trace",
  "trust_ratio",
]
