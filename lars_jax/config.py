"""Typed optimizer configs that live in YAML and build optax transformations.

Needs the ``config`` extra (pydantic v2, PyYAML). `LARSConfig` (TF Model Garden's, builds
`lars_jax.tf_lars`) and `OptimizerConfig` (per-name rules and schedules over any LARS kind or
optax optimizer) are checked on creation and have Model Garden's ``ParamsDict`` methods
(`lars_jax._params_dict`; README: Configs in YAML).
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal

import jax
import numpy as np
import optax

try:
  import pydantic
  import yaml  # noqa: F401 (the ParamsDict methods need it)
except ImportError as e:  # the optimizers need neither
  raise ImportError(
    f"lars_jax's configs need pydantic v2 and PyYAML ({e}): pip install lars_jax[config]"
  ) from e

import lars_jax
from lars_jax import _checks, _compat
from lars_jax import masks as masks_lib
from lars_jax import schedules as schedules_lib
from lars_jax._params_dict import (
  ConfigKeyError,
  ParamsDict,
  RestrictionError,
  StrictModel,
  did_you_mean,
)
from lars_jax._tree import AxisNames

__all__ = [
  "ConfigKeyError",
  "RestrictionError",
  "LARSConfig",
  "OptimizerConfig",
  "ParamGroupRule",
  "ConstantSchedule",
  "WarmupCosineSchedule",
  "WarmupPolynomialSchedule",
  "PiecewiseSchedule",
  "Schedule",
]

_NonNeg = Annotated[float, pydantic.Field(ge=0.0, strict=True, allow_inf_nan=False)]
_Positive = Annotated[float, pydantic.Field(gt=0.0, strict=True, allow_inf_nan=False)]
_Steps = Annotated[int, pydantic.Field(ge=0, strict=True)]
_PositiveSteps = Annotated[int, pydantic.Field(gt=0, strict=True)]


def _checked(build: Callable[[], Any], prefix: str = "") -> None:
  """Runs `build` (a builder that checks its arguments); its errors become ValueErrors."""
  try:
    build()
  except (TypeError, ValueError) as e:
    raise ValueError(f"{prefix}{e}") from e


_Patterns = Annotated[
  tuple[str, ...] | None, pydantic.BeforeValidator(lambda v: (v,) if isinstance(v, str) else v)
]


class LARSConfig(ParamsDict):
  r"""TensorFlow Model Garden's ``LARSConfig``; `build` gives `lars_jax.tf_lars`.

  Model Garden's fields and defaults, checked on creation and assignment (their bounds, and
  what `tf_lars` checks); the learning rate (or a schedule) goes to `build`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, lars_jax
    >>> cfg = lars_jax.LARSConfig.from_yaml('''
    ... momentum: 0.9
    ... weight_decay_rate: 1e-4
    ... exclude_from_weight_decay: [bias]
    ... ''')
    >>> cfg.weight_decay_rate, cfg.exclude_from_weight_decay
    (0.0001, ('bias',))
    >>> cfg = cfg.override({'eeta': 0.01}).lock()
    >>> cfg.validate(['momentum < 1', 'weight_decay_rate <= eeta']).eeta
    0.01
    >>> params = {'dense': {'kernel': jnp.array([[1.0, 2.0], [3.0, 4.0]]),
    ...                     'bias': jnp.array([0.5, -0.5])}}
    >>> def f(p): return jnp.sum((p['dense']['kernel'] @ jnp.ones(2) + p['dense']['bias']) ** 2)
    >>> solver = cfg.build(learning_rate=0.05)
    >>> state = solver.init(params)
    >>> for _ in range(3):
    ...   updates, state = solver.update(jax.grad(f)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f'{f(params):.2f}')
    44.09
    28.14
    12.73
  """

  name: str = "LARS"
  momentum: Annotated[float, pydantic.Field(ge=0.0, lt=1.0, strict=True, allow_inf_nan=False)] = 0.9
  eeta: _Positive = 0.001
  weight_decay_rate: _NonNeg = 0.0
  nesterov: pydantic.StrictBool = False
  classic_momentum: pydantic.StrictBool = True
  exclude_from_weight_decay: _Patterns = None
  exclude_from_layer_adaptation: _Patterns = None
  clipnorm: _Positive | None = None
  clipvalue: _Positive | None = None
  global_clipnorm: _Positive | None = None

  @pydantic.model_validator(mode="after")
  def _tf_lars_accepts(self) -> LARSConfig:
    _checked(self.build)  # tf_lars's checks: the patterns, clipnorm vs global_clipnorm
    return self

  def build(
    self,
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    axis_name: AxisNames = None,
    keep_stats: bool = False,
  ) -> optax.GradientTransformationExtraArgs:
    """`lars_jax.tf_lars` with this config's values and these arguments."""
    kw = {k: getattr(self, k) for k in type(self).model_fields if k != "name"}
    return lars_jax.tf_lars(learning_rate, **kw, axis_name=axis_name, keep_stats=keep_stats)


class _ScheduleConfig(StrictModel):
  """A schedule: ``build(base)`` gives it with the config's ``lr`` (or ``weight_decay``)
  as base (a Python float for a constant without warm-up). ``warmup_steps``: linear from 0."""

  @pydantic.model_validator(mode="after")
  def _builds(self) -> _ScheduleConfig:
    _checked(lambda: self.build(1.0))  # type: ignore[attr-defined] (the functions check)
    return self


class ConstantSchedule(_ScheduleConfig):
  """The base value, after an optional linear warm-up (`optax.warmup_constant_schedule`)."""

  kind: Literal["constant"] = "constant"
  warmup_steps: _Steps = 0

  def build(self, base_value: float) -> optax.Schedule | float:
    if self.warmup_steps == 0:
      return float(base_value)
    return optax.warmup_constant_schedule(0.0, base_value, self.warmup_steps)


class WarmupCosineSchedule(_ScheduleConfig):
  """`optax.warmup_cosine_decay_schedule` from 0 with ``decay_steps=total_steps`` (which
  includes the warm-up): cosine decay to `end_value` at `total_steps`, then constant."""

  kind: Literal["warmup_cosine"] = "warmup_cosine"
  warmup_steps: _Steps = 0
  total_steps: _PositiveSteps
  end_value: _NonNeg = 0.0

  def build(self, base_value: float) -> optax.Schedule:
    w, t = self.warmup_steps, self.total_steps
    if t <= w:
      raise ValueError(f"`total_steps` ({t}) must exceed `warmup_steps` ({w}).")
    return optax.warmup_cosine_decay_schedule(0.0, base_value, w, t, self.end_value)


class WarmupPolynomialSchedule(_ScheduleConfig):
  """The MLPerf schedule, `lars_jax.schedules.warmup_polynomial_decay`."""

  kind: Literal["warmup_polynomial"] = "warmup_polynomial"
  # MLPerf's arithmetic gives fractional step counts (706.5 warm-up steps at batch 32768).
  warmup_steps: _NonNeg = 0
  total_steps: _Positive
  end_value: _NonNeg = 1e-4
  power: _Positive = 2.0

  def build(self, base_value: float) -> optax.Schedule:
    return schedules_lib.warmup_polynomial_decay(base_value, **self.model_dump(exclude={"kind"}))


class PiecewiseSchedule(_ScheduleConfig):
  """Step decay by factors of the base value, `lars_jax.schedules.warmup_piecewise_constant`."""

  kind: Literal["piecewise"] = "piecewise"
  warmup_steps: _Steps = 0
  boundaries: tuple[_PositiveSteps, ...]
  factors: tuple[_NonNeg, ...]

  def build(self, base_value: float) -> optax.Schedule:
    return schedules_lib.warmup_piecewise_constant(base_value, **self.model_dump(exclude={"kind"}))


Schedule = Annotated[
  ConstantSchedule | WarmupCosineSchedule | WarmupPolynomialSchedule | PiecewiseSchedule,
  pydantic.Field(discriminator="kind"),
]
"""Any schedule config, chosen by its ``kind`` field in YAML."""


_Regex = Annotated[str, pydantic.AfterValidator(lambda p: masks_lib.only_names(p) and p)]


class ParamGroupRule(StrictModel):
  """One rule of `OptimizerConfig.param_group_modifiers`.

  Selects by ``name`` (the full path, '/'- or '.'-joined) or ``pattern`` (``re.fullmatch``
  on the '/'-joined path), and multiplies the learning rate by ``scale`` or sets the
  weight decay to ``value``: exactly one of each pair. `mask` is the selection.

  Examples:
    >>> from lars_jax.config import ParamGroupRule
    >>> ParamGroupRule(name='head.kernel', scale=0.1).mask()({'head': {'kernel': 1, 'bias': 0}})
    {'head': {'bias': False, 'kernel': True}}
  """

  name: str | None = None
  pattern: _Regex | None = None
  scale: _NonNeg | None = None
  value: _NonNeg | None = None

  @pydantic.model_validator(mode="after")
  def _exactly_one(self) -> ParamGroupRule:
    for a, b, what in [
      ("name", "pattern", "an exact path or a regex over '/'-joined paths"),
      ("scale", "value", "multiplies the learning rate or sets the weight decay"),
    ]:
      if (getattr(self, a) is None) == (getattr(self, b) is None):
        raise ValueError(
          f"a param_group_modifiers rule needs exactly one of `{a}` or `{b}` ({what}), got "
          f"{a}={getattr(self, a)!r}, {b}={getattr(self, b)!r}."
        )
    return self

  def mask(self) -> Callable[[Any], Any]:
    """The selection: `lars_jax.masks.only_names` with ``match='fullmatch'``."""
    if self.name is None:
      return masks_lib.only_names(self.pattern, match="fullmatch")  # type: ignore[arg-type]
    exact = "[./]".join(map(re.escape, re.split(r"[./]", self.name)))  # '.' and '/' alike
    return masks_lib.only_names(exact, match="fullmatch")

  def __str__(self) -> str:  # the selection and the action: one of each pair is set
    return ", ".join(f"{k}={v!r}" for k, v in self if v is not None)


_LARS_KINDS = ("lars", "tf_lars", "torch_lars")
# Arguments that the config sets itself, with where to set them instead.
_RESERVED = types.MappingProxyType(
  {
    "learning_rate": "set `lr` and `schedule`",
    "weight_decay": "set `weight_decay`, `weight_decay_schedule` and rules with `value`",
    "weight_decay_rate": "set `weight_decay`",
    "weight_decay_mask": "use the exclude_* fields and param_group_modifiers",
    "trust_ratio_mask": "use exclude_from_adaptation_follows_weight_decay",
    "mask": "use the exclude_* fields and param_group_modifiers",
    "exclude_from_weight_decay": "use the exclude_* fields and param_group_modifiers",
    "exclude_from_layer_adaptation": "use exclude_from_adaptation_follows_weight_decay",
    "global_clipnorm": "set `clip_grad_norm`",
    "axis_name": "pass it to build(axis_name=...)",
    "keep_stats": "pass it to build(keep_stats=True)",
  }
)


def _optax_optimizer(name: str) -> Callable[..., optax.GradientTransformation] | None:
  """optax's optimizer `name` (a public function of `learning_rate`), else None."""
  fn = getattr(optax, name, None)
  if name.startswith(("_", "scale_by")) or name == "lars" or not inspect.isfunction(fn):
    return None  # 'lars' is lars_jax.lars
  return fn if list(inspect.signature(fn).parameters)[:1] == ["learning_rate"] else None


def _factory(kind: str) -> Callable[..., optax.GradientTransformation]:
  """The function that `kind` names (see `OptimizerConfig`)."""
  if kind in _LARS_KINDS:
    return getattr(lars_jax, kind)
  if (fn := _optax_optimizer(kind.removeprefix("optax."))) is not None:
    return fn
  names = [n for n in dir(optax) if _optax_optimizer(n)]
  raise ValueError(
    f"kind {kind!r} is not an optimizer.{did_you_mean(kind, [*_LARS_KINDS, *names])} Use "
    "'lars', 'tf_lars', 'torch_lars', or an optax optimizer (a function of `learning_rate`): "
    f"{', '.join(names)}."
  )


def _times(x: optax.ScalarOrSchedule, factor: float) -> optax.ScalarOrSchedule:
  if factor == 1.0:
    return x
  return (lambda count: x(count) * factor) if callable(x) else x * factor


class OptimizerConfig(ParamsDict):
  r"""An optimizer with per-parameter rules; `build` gives one transformation.

  ``kind`` is ``'lars'``, ``'tf_lars'``, ``'torch_lars'`` or an optax optimizer (``'sgd'``,
  ``'optax.adamw'``...); ``options`` are its other keyword arguments, checked on creation.

  A parameter's learning rate is ``lr`` (or ``schedule``) times the ``scale`` of every
  rule that selects it; its weight decay is ``weight_decay``, the ``value`` of the rule
  that sets it, or 0 under a default exclusion (``bias``; ``ndim <= 1``). The LARS kinds
  adapt no leaf without weight decay while ``exclude_from_adaptation_follows_weight_decay``.
  `param_groups` shows the resolution (README: Configs in YAML).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> cfg = lars_jax.OptimizerConfig.from_yaml('''
    ... kind: lars
    ... lr: 2.0
    ... weight_decay: 1e-4
    ... options: {momentum: 0.9, trust_coefficient: 0.001}
    ... param_group_modifiers:
    ...   - {name: head.kernel, scale: 0.1}
    ... schedule: {kind: warmup_cosine, warmup_steps: 10, total_steps: 100}
    ... ''')
    >>> params = {'body': {'kernel': jnp.ones((3, 3)), 'bias': jnp.zeros(3)},
    ...           'head': {'kernel': jnp.ones((3, 2))}}
    >>> for path, group in cfg.param_groups(params).items():
    ...   print(path, group)
    body/bias {'lr_scale': 1.0, 'weight_decay': 0.0, 'adapt': False}
    body/kernel {'lr_scale': 1.0, 'weight_decay': 0.0001, 'adapt': True}
    head/kernel {'lr_scale': 0.1, 'weight_decay': 0.0001, 'adapt': True}
    >>> state = cfg.build().init(params)
  """

  kind: Annotated[str, pydantic.AfterValidator(lambda k: _factory(k) and k)]  # raises if unknown
  lr: _Positive
  weight_decay: _NonNeg = 0.0
  clip_grad_value: _Positive | None = None
  clip_grad_norm: _Positive | None = None
  options: dict[str, Any] = pydantic.Field(default_factory=dict)
  param_group_modifiers: tuple[ParamGroupRule, ...] = ()
  exclude_bias_from_weight_decay: pydantic.StrictBool = True
  exclude_normalization_params_from_weight_decay: pydantic.StrictBool = True
  exclude_from_adaptation_follows_weight_decay: pydantic.StrictBool = True
  schedule: Schedule | None = None
  weight_decay_schedule: Schedule | None = None

  @pydantic.model_validator(mode="after")
  def _check(self) -> OptimizerConfig:
    params = inspect.signature(_factory(self.kind)).parameters.values()
    var = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    valid = [p.name for p in params if p.name not in _RESERVED and p.kind not in var]
    for k in self.options:
      if k in _RESERVED and k in {p.name for p in params}:
        raise ValueError(f"options.{k}: the config sets {k!r} itself; {_RESERVED[k]}.")
      if k not in valid:
        raise ValueError(
          f"options.{k}: {self.kind!r} has no argument {k!r}."
          + did_you_mean(k, valid, f"Valid options for {self.kind!r}")
        )
    if self.weight_decay_schedule is not None and self.weight_decay == 0:
      raise ValueError("weight_decay_schedule needs weight_decay > 0 (the schedule's base).")
    _compat.check_decay_schedule(self.kind, self.weight_decay_schedule)
    if self.kind == "torch_lars" and not self.exclude_from_adaptation_follows_weight_decay:
      raise ValueError(
        "exclude_from_adaptation_follows_weight_decay=False is not possible with kind "
        "'torch_lars' (PyTorch/Flash LARS never adapts a parameter without weight decay); "
        "use kind 'lars' or 'tf_lars'."
      )

    def build() -> None:  # the optimizer checks the values of `options`
      if self.options.get("momentum") is not None:  # optax.sgd does not check it
        _checks.check_momentum("momentum", self.options["momentum"])
      self._group_tx(1.0, self.weight_decay, True)

    _checked(build, f"options: {self.kind!r} rejects {self.options!r}: ")
    return self

  def _group_tx(self, scale: float, wd: float, adapt: bool | None, **lars_kw: Any):
    """One group's optimizer; `lars_kw` (axis_name, keep_stats) go to the LARS kinds."""
    fn, opts = _factory(self.kind), dict(self.options)
    lr = _times(self.schedule.build(self.lr) if self.schedule else self.lr, scale)
    if wd != 0.0 and self.weight_decay_schedule is not None:
      wd = _times(self.weight_decay_schedule.build(self.weight_decay), wd / self.weight_decay)
    if self.kind == "lars":
      return fn(lr, weight_decay=wd, trust_ratio_mask=adapt, **opts, **lars_kw)
    if self.kind == "tf_lars":
      opts["exclude_from_layer_adaptation"] = None if adapt else [".*"]
      return fn(lr, weight_decay_rate=wd, **opts, **lars_kw)
    if self.kind == "torch_lars":
      return fn(lr, weight_decay=wd, **opts, **lars_kw)
    if "weight_decay" in inspect.signature(fn).parameters:
      return fn(lr, weight_decay=wd, **opts)
    if callable(wd) or wd != 0.0:
      return optax.chain(optax.add_decayed_weights(wd), fn(lr, **opts))
    return fn(lr, **opts)

  def _resolve(self, tree: Any) -> list[tuple[str, float, float, bool | None]]:
    """(path, lr_scale, weight_decay, adapt) per leaf of `tree`; raises on bad rules."""
    rules, selected = self.param_group_modifiers, []
    for i, rule in enumerate(rules):
      try:  # lars_jax.masks raises if the rule selects no parameter: say which rule
        selected.append(jax.tree.leaves(rule.mask()(tree)))
      except ValueError as e:
        raise ValueError(f"param_group_modifiers[{i}] ({rule}): {e}") from None
    paths = jax.tree.leaves(masks_lib.tree_paths(tree))
    out = []
    for j, (path, matrix) in enumerate(zip(paths, jax.tree.leaves(masks_lib.min_ndim(2)(tree)))):
      default = None
      if self.exclude_bias_from_weight_decay and re.split(r"[/.]", path)[-1] == "bias":
        default = "exclude_bias_from_weight_decay (its last path component is 'bias')"
      elif self.exclude_normalization_params_from_weight_decay and not matrix:
        default = "exclude_normalization_params_from_weight_decay (it has ndim <= 1)"
      scale, wd, setter = 1.0, 0.0 if default else self.weight_decay, None
      for i, rule in ((i, r) for i, r in enumerate(rules) if selected[i][j]):
        here = f"param_group_modifiers[{i}] ({rule})"
        if rule.scale is not None:
          scale *= rule.scale
        elif setter is not None:
          raise ValueError(
            f"Two rules set the weight decay of {path!r}: {setter} and {here}. Keep one."
          )
        elif default is not None:
          raise ValueError(
            f"{here} sets the weight decay of {path!r}, which {default} already sets to 0. "
            "Narrow the rule, or turn that exclusion off."
          )
        else:
          setter, wd = here, rule.value
      adapt = None
      if self.kind in _LARS_KINDS:  # torch_lars never adapts without weight decay
        no_wd = default is not None or (wd == 0.0 and (setter or self.kind == "torch_lars"))
        adapt = not no_wd or not self.exclude_from_adaptation_follows_weight_decay
      out.append((path, scale, float(wd), adapt))
    return out

  def param_groups(self, params: optax.Params) -> dict[str, dict[str, Any]]:
    """What each parameter gets: ``{path: {lr_scale, weight_decay, adapt}}``; ``adapt``
    (layer adaptation) is None for non-LARS kinds. Raises like ``init``."""
    keys = ("lr_scale", "weight_decay", "adapt")
    return {p: dict(zip(keys, g)) for p, *g in sorted(self._resolve(params))}

  def build(
    self, *, axis_name: AxisNames = None, keep_stats: bool = False
  ) -> optax.GradientTransformationExtraArgs:
    """The optimizer: clipping, then `optax.multi_transform` of one optimizer per group
    (built at the first ``init`` on a tree structure); `axis_name` and `keep_stats` go to
    the LARS kinds (as in `lars_jax.lars`)."""
    if self.kind not in _LARS_KINDS and (axis_name is not None or keep_stats is not False):
      arg = "axis_name" if axis_name is not None else "keep_stats"
      raise ValueError(f"build: {arg} is for the LARS kinds; {self.kind!r} takes none.")
    lars_kw = {"axis_name": axis_name, "keep_stats": keep_stats}
    built: dict[Any, optax.GradientTransformationExtraArgs] = {}  # by (treedef, ranks)

    def partition(tree: Any) -> optax.GradientTransformationExtraArgs:
      leaves, treedef = jax.tree.flatten(tree)
      key = (treedef, tuple(map(np.ndim, leaves)))  # all that the groups depend on
      if key not in built:
        groups = [(s, w, a) for _, s, w, a in self._resolve(tree)]
        txs = {str(g): self._group_tx(*g, **lars_kw) for g in dict.fromkeys(groups)}
        built[key] = optax.multi_transform(txs, jax.tree.unflatten(treedef, map(str, groups)))
      return built[key]

    def update_fn(updates, state, params=None, **extra_args):
      return partition(updates).update(updates, state, params, **extra_args)

    clip = [optax.clip(self.clip_grad_value)] if self.clip_grad_value else []
    clip += [optax.clip_by_global_norm(self.clip_grad_norm)] if self.clip_grad_norm else []
    init_fn = lambda params: partition(params).init(params)
    return optax.chain(*clip, optax.GradientTransformationExtraArgs(init_fn, update_fn))
