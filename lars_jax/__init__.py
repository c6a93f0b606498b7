"""lars_jax: LARS and large-batch training for JAX and optax. The YAML configs
(`LARSConfig`, `OptimizerConfig`) need ``lars_jax[config]`` and are imported on first use.
"""

from typing import Any

from lars_jax import masks, schedules, sharding
from lars_jax._numerics import trust_ratio
from lars_jax._stats import LayerStats, TrustRatioState
from lars_jax.diagnostics import layer_stats
from lars_jax.lars import lars, state_from_optax_lars
from lars_jax.presets import byol_lars, flax_lars, keras_clip, larc, tf_lars, timm_lars, torch_lars
from lars_jax.transforms import (
  TorchTraceState,
  TraceState,
  add_decayed_weights,
  scale_by_learning_rate,
  scale_by_sum_norms_trust_ratio,
  scale_by_trust_ratio,
  scale_by_trust_ratio_with_decay,
  torch_trace,
  trace,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
  """Imports the config module (pydantic, PyYAML) only when a config is first used; its
  ImportError says which extra to install."""
  if name in ("LARSConfig", "OptimizerConfig"):
    from lars_jax import config

    return getattr(config, name)
  raise AttributeError(f"module 'lars_jax' has no attribute {name!r}")


__all__ = [
  "LARSConfig",
  "LayerStats",
  "OptimizerConfig",
  "TorchTraceState",
  "TraceState",
  "TrustRatioState",
  "add_decayed_weights",
  "byol_lars",
  "flax_lars",
  "keras_clip",
  "larc",
  "lars",
  "layer_stats",
  "masks",
  "schedules",
  "sharding",
  "scale_by_learning_rate",
  "scale_by_sum_norms_trust_ratio",
  "scale_by_trust_ratio",
  "scale_by_trust_ratio_with_decay",
  "state_from_optax_lars",
  "tf_lars",
  "timm_lars",
  "torch_lars",
  "torch_trace",
  "trace",
  "trust_ratio",
]
