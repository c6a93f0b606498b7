"""lars_jax: LARS and large-batch training for JAX and optax."""

from lars_jax import masks, schedules
from lars_jax.config import LARSConfig, OptimizerConfig
from lars_jax.diagnostics import diagnostics_to_floats, layer_diagnostics
from lars_jax.lars import lars
from lars_jax.presets import (
  ScaleByLarcState,
  ScaleBySumNormsTrustRatioState,
  TorchTraceState,
  keras_clip,
  larc,
  scale_by_larc,
  scale_by_sum_norms_trust_ratio,
  tf_lars,
  torch_lars,
  torch_trace,
)
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
  "LARSConfig",
  "OptimizerConfig",
  "ScaleByLarcState",
  "ScaleByLearningRateState",
  "ScaleBySumNormsTrustRatioState",
  "TorchTraceState",
  "TraceState",
  "add_decayed_weights",
  "diagnostics_to_floats",
  "keras_clip",
  "larc",
  "lars",
  "layer_diagnostics",
  "masks",
  "schedules",
  "scale_by_larc",
  "scale_by_learning_rate",
  "scale_by_sum_norms_trust_ratio",
  "scale_by_trust_ratio",
  "tf_lars",
  "torch_lars",
  "torch_trace",
  "trace",
  "trust_ratio",
]
