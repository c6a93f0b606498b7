"""Typed optimizer configs that live in YAML and build optax transformations.

Needs the ``config`` extra (``pip install lars_jax[config]``: pydantic v2 and PyYAML).
`LARSConfig` (TensorFlow Model Garden's, builds `lars_jax.tf_lars`) and `OptimizerConfig`
(per-name rules, exclusions, clipping and the schedule configs below over any LARS flavour
or optax optimizer) are pydantic models checked on creation, with errors that name the
field and the closest key of a typo, and Model Garden's ``ParamsDict`` methods:
``from_yaml``/``to_yaml``, ``from_dict``/``as_dict``, ``override(d, is_strict=True)``,
``lock()``, ``validate(restrictions)``. Schedules and rules are frozen models.
"""

from __future__ import annotations

import difflib
import inspect
import operator
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import jax
import numpy as np
import optax

try:
  import pydantic
  import yaml
  from pydantic_core import PydanticCustomError
except ImportError as e:  # the optimizers need neither
  raise ImportError(
    f"lars_jax's configs need pydantic v2 and PyYAML ({e}): pip install lars_jax[config]"
  ) from e

import lars_jax
from lars_jax import _checks, _compat
from lars_jax import masks as masks_lib
from lars_jax import schedules as schedules_lib

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

AxisNames = str | Sequence[str] | None
_NonNeg = Annotated[float, pydantic.Field(ge=0.0, strict=True, allow_inf_nan=False)]
_Positive = Annotated[float, pydantic.Field(gt=0.0, strict=True, allow_inf_nan=False)]
_Steps = Annotated[int, pydantic.Field(ge=0, strict=True)]
_PositiveSteps = Annotated[int, pydantic.Field(gt=0, strict=True)]


class ConfigKeyError(KeyError, ValueError):
  """An unknown key: a ``KeyError`` (as in Model Garden) that is also a ``ValueError``."""

  __str__ = ValueError.__str__  # the message, not KeyError's repr of it


class RestrictionError(KeyError, ValueError):
  """A violated ``validate`` restriction (a ``KeyError`` as in Model Garden)."""

  __str__ = ValueError.__str__


def _did_you_mean(key: Any, valid: Sequence[Any]) -> str:
  close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=3, cutoff=0.6)
  return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _checked(build: Callable[[], Any], prefix: str = "") -> None:
  """Runs `build` (a builder that checks its arguments); its errors become ValueErrors."""
  try:
    build()
  except (TypeError, ValueError) as e:
    raise ValueError(f"{prefix}{e}") from e


def _plain(x: Any) -> Any:
  """Tuples -> lists, mappings -> dicts, recursively (YAML-safe)."""
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


class _YamlLoader(yaml.SafeLoader):
  """SafeLoader that also reads ``1e-4`` (YAML 1.1 wants ``1.0e-4``) as a float."""


_YamlLoader.add_implicit_resolver(
  "tag:yaml.org,2002:float",
  re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
  list("-+0123456789."),
)


def _read_yaml(source: str | os.PathLike[str]) -> dict[str, Any]:
  is_str = isinstance(source, str)
  if isinstance(source, os.PathLike) or (is_str and "\n" not in source and os.path.isfile(source)):
    with open(source, encoding="utf-8") as f:
      text, where = f.read(), f"file {os.fspath(source)!r}"
  elif is_str:
    text, where = source, "YAML text"
  else:
    raise TypeError(f"from_yaml: pass a file path or YAML text, got {type(source).__name__}.")
  try:
    data = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)
  except yaml.YAMLError as e:
    raise ValueError(f"from_yaml: {where} is not valid YAML: {e}") from e
  if data is None or isinstance(data, dict):
    return data or {}
  if is_str and source.strip().endswith((".yaml", ".yml")):
    raise FileNotFoundError(f"from_yaml: no such file: {source!r}.")
  raise ValueError(f"from_yaml: {where} must hold a mapping of config keys, got {data!r}.")


_OPS = {"==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge}
_OPS |= {"<": operator.lt, ">": operator.gt}
_OP_RE = re.compile(r"(==|!=|<=|>=|<|>)")
_NUMBER_RE = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_WORDS = {"None": None, "null": None, "True": True, "true": True, "False": False, "false": False}
_KEY = object()  # what `_constant` returns for a token that is a key


def _constant(token: str) -> Any:
  if _NUMBER_RE.match(token):
    return float(token.replace("_", ""))
  if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
    return token[1:-1]
  return _WORDS.get(token, _KEY)


class _Model(pydantic.BaseModel):
  """A frozen model whose unknown keys are errors that name the closest field."""

  model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

  @pydantic.model_validator(mode="before")
  @classmethod
  def _known_keys(cls, data: Any, info: pydantic.ValidationInfo) -> Any:
    # Like extra='forbid', plus "did you mean". Configs with extra='allow' keep unknown
    # keys when validated with context {'is_strict': False}.
    relaxed = (
      cls.model_config.get("extra") == "allow" and (info.context or {}).get("is_strict") is False
    )
    unknown = [k for k in data if k not in cls.model_fields] if isinstance(data, Mapping) else []
    if not unknown or relaxed:
      return data
    valid, errors = list(cls.model_fields), []
    for k in unknown:
      msg = f"unknown key {k!r} for {cls.__name__}.{_did_you_mean(k, valid)} Valid keys: "
      error = PydanticCustomError("extra_forbidden", "{msg}", {"msg": msg + ", ".join(valid)})
      errors.append({"type": error, "loc": (k,), "input": data[k]})
    raise pydantic.ValidationError.from_exception_data(cls.__name__, errors)


class _Config(_Model):
  """A top-level config: YAML and dict round trips, override, lock, validate."""

  model_config = pydantic.ConfigDict(extra="allow", frozen=False)
  _locked: bool = pydantic.PrivateAttr(default=False)

  def as_dict(self) -> dict[str, Any]:
    """The config as plain Python (dicts, lists, numbers, strings, None), added keys too."""
    return _plain(self.model_dump())

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], *, is_strict: bool = True):
    """Builds a config from `data` (e.g. `as_dict()`); missing fields take their defaults.

    ``is_strict=False`` keeps unknown top-level keys as added keys (as after a
    non-strict `override`) instead of raising.
    """
    if not isinstance(data, Mapping):
      raise TypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}.")
    return cls.model_validate(dict(data), context={"is_strict": is_strict})

  @classmethod
  def from_yaml(cls, source: str | os.PathLike[str], *, is_strict: bool = True):
    """Reads a config from a YAML file path or from YAML text (see `from_dict`)."""
    return cls.from_dict(_read_yaml(source), is_strict=is_strict)

  def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
    """Returns the config as YAML text (and writes it to `path` if given)."""
    text = yaml.safe_dump(self.as_dict(), sort_keys=False, default_flow_style=False)
    if path is not None:
      with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text

  def override(self, overrides: Mapping[str, Any], is_strict: bool = True):
    """Returns a new, unlocked, validated config with `overrides` merged in.

    Nested dicts (a schedule, ``options``, added keys) merge key by key; a schedule
    given another ``kind`` is replaced whole; lists are replaced. An unknown key raises
    `ConfigKeyError` naming the closest ones (``is_strict=True``) or is added (False);
    keys of a free-form dict field (``options``) may always be added (they are checked).
    """
    free = [
      k for k, f in type(self).model_fields.items() if typing.get_origin(f.annotation) is dict
    ]

    def merge(base: dict, new: Mapping, prefix: str) -> dict:
      out = dict(base)
      for k, v in new.items():
        if k not in base and is_strict and prefix.rstrip(".") not in free:
          where = f" under {prefix.rstrip('.')!r}" if prefix else ""
          raise ConfigKeyError(
            f"{type(self).__name__}.override: the key {prefix + k!r} does not exist."
            f"{_did_you_mean(k, list(base))} Valid keys{where}: {', '.join(map(str, base))}."
            " To add new keys, use override(..., is_strict=False)."
          )
        old = base.get(k)
        if (
          isinstance(old, dict)
          and isinstance(v, Mapping)
          and v.get("kind") in (None, old.get("kind"))
        ):
          out[k] = merge(old, v, f"{prefix}{k}.")  # a new `kind` replaces a schedule whole
        else:
          out[k] = v
      return out

    if isinstance(overrides, _Config):
      overrides = overrides.as_dict()
    if not isinstance(overrides, Mapping):
      raise TypeError(f"override needs a mapping, got {type(overrides).__name__}.")
    return type(self).from_dict(_plain(merge(self.as_dict(), overrides, "")), is_strict=False)

  def lock(self):
    """Makes this config immutable (assignment raises ``ValueError``); returns it."""
    self._locked = True
    return self

  @property
  def is_locked(self) -> bool:
    """Whether `lock()` was called."""
    return self._locked

  def validate(self, restrictions: Sequence[str]):  # type: ignore[override]
    """Checks Model Garden restriction strings such as ``'a.b <= c.d'``; returns self.

    Each is ``left OP right``, OP one of ``== != < <= > >=``, each side a dotted key of
    `as_dict()` or a constant (a number, ``None``, ``True``, ``False``, a quoted string).

    Raises:
      ConfigKeyError: a key does not exist (a ``KeyError``, as in Model Garden).
      RestrictionError: a restriction does not hold (a ``KeyError`` and a ``ValueError``).
      ValueError: a restriction is not one relation, or its sides cannot be compared.
    """
    values = self.as_dict()
    for r in [restrictions] if isinstance(restrictions, str) else restrictions:
      if not isinstance(r, str):
        raise TypeError(f"validate: restrictions must be strings, got {r!r}.")
      sides = [t.strip() for t in _OP_RE.split(r)]
      if len(sides) != 3 or not sides[0] or not sides[2]:
        raise ValueError(
          f"validate: {r!r} must be one binary relation 'left OP right' (OP one of "
          f"{' '.join(_OPS)}) with a key or constant on both sides."
        )
      left, op, right = sides
      lv, rv = self._operand(left, values, r), self._operand(right, values, r)
      try:
        ok = bool(_OPS[op](lv, rv))
      except TypeError as e:
        raise ValueError(
          f"validate: cannot compare {left} = {lv!r} with {right} = {rv!r} in {r!r}: {e}."
        ) from e
      if not ok:
        shown = [f"{t} = {v!r}" for t, v in ((left, lv), (right, rv)) if _constant(t) is _KEY]
        raise RestrictionError(
          f"{type(self).__name__}: restriction {r!r} does not hold ({', '.join(shown)})."
        )
    return self

  def _operand(self, token: str, values: dict, restriction: str) -> Any:
    if (value := _constant(token)) is not _KEY:
      return value
    value, parts = values, token.split(".")
    for i, part in enumerate(parts):
      if not isinstance(value, dict) or part not in value:
        valid = list(value) if isinstance(value, dict) else []
        raise ConfigKeyError(
          f"validate: {restriction!r} refers to the key {token!r}, but "
          f"{'.'.join(parts[:i]) or type(self).__name__!r} has no key {part!r}."
          f"{_did_you_mean(part, valid)} Valid keys: {', '.join(map(str, valid))}."
        )
      value = value[part]
    return value

  def __setattr__(self, name: str, value: Any) -> None:
    if not name.startswith("_"):  # public fields: check the whole config with the new value
      cls, fields = type(self), list(type(self).model_fields)
      if self._locked:
        raise ValueError(f"{cls.__name__} is locked: cannot set {name!r}. Use `override`.")
      if name not in fields:
        raise ConfigKeyError(
          f"{cls.__name__} has no field {name!r}.{_did_you_mean(name, fields)} To add a "
          "key, use override({...}, is_strict=False)."
        )
      value = getattr(cls.from_dict({**self.model_dump(), name: value}, is_strict=False), name)
    super().__setattr__(name, value)

  def __delattr__(self, name: str) -> None:
    raise ValueError(f"{type(self).__name__}: fields cannot be deleted ({name!r}).")

  def __eq__(self, other: object) -> bool:  # locked or not, equal values are equal
    return type(self) is type(other) and self.as_dict() == other.as_dict()  # type: ignore[union-attr]


def _one_pattern(value: Any) -> Any:
  return (value,) if isinstance(value, str) else value


def _pattern(p: str) -> str:
  masks_lib.compile_patterns(p, "pattern")  # raises a ValueError naming the pattern
  return p


_Patterns = Annotated[tuple[str, ...] | None, pydantic.BeforeValidator(_one_pattern)]


class LARSConfig(_Config):
  r"""TensorFlow Model Garden's ``LARSConfig``; `build` gives `lars_jax.tf_lars`.

  Same fields and defaults as ``official/modeling/optimization/configs/
  optimizer_config.py``. The learning rate is not part of it (Model Garden takes it
  from the ``OptimizationConfig``): pass it, or a schedule, to `build`. Values are
  checked on creation and assignment: ``momentum`` in [0, 1), ``eeta > 0``, rates
  ``>= 0``, clip values ``> 0``, and what `lars_jax.tf_lars` checks (valid regular
  expressions, found with ``re.search`` in '/'-joined paths; not both ``clipnorm`` and
  ``global_clipnorm``, as in Keras).

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
    self, learning_rate: optax.ScalarOrSchedule = 0.01, *, axis_name: AxisNames = None
  ) -> optax.GradientTransformationExtraArgs:
    """Returns `lars_jax.tf_lars` with this config's values and `learning_rate`."""
    kw = {k: getattr(self, k) for k in type(self).model_fields if k != "name"}
    for k in ("exclude_from_weight_decay", "exclude_from_layer_adaptation"):
      kw[k] = None if kw[k] is None else list(kw[k])
    return lars_jax.tf_lars(learning_rate, **kw, axis_name=axis_name)


class _ScheduleConfig(_Model):
  """The shape of a schedule: `build(base)` gives it with the config's ``lr`` (or
  ``weight_decay``) as base. ``kind`` first, then ``warmup_steps`` (linear from 0)."""

  def build(self, base_value: float) -> optax.Schedule | float:
    """Returns the schedule (a Python float for a constant without warm-up)."""
    raise NotImplementedError

  @pydantic.model_validator(mode="after")
  def _builds(self) -> _ScheduleConfig:
    _checked(lambda: self.build(1.0))  # the schedule functions check their arguments
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
    if self.total_steps <= self.warmup_steps:
      raise ValueError(
        f"`total_steps` ({self.total_steps}) must exceed `warmup_steps` ({self.warmup_steps})."
      )
    w, t = self.warmup_steps, self.total_steps
    return optax.warmup_cosine_decay_schedule(0.0, base_value, w, t, self.end_value)


class WarmupPolynomialSchedule(_ScheduleConfig):
  """The MLPerf schedule, `lars_jax.schedules.warmup_polynomial_decay`."""

  kind: Literal["warmup_polynomial"] = "warmup_polynomial"
  warmup_steps: _Steps = 0
  total_steps: _PositiveSteps
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


class ParamGroupRule(_Model):
  """One rule of `OptimizerConfig.param_group_modifiers`.

  Selects parameters by ``name`` (the exact full path, '/'- or '.'-joined:
  ``backbone.cls_token`` and ``backbone/cls_token`` are the same) or by ``pattern``
  (a regular expression that must match the whole '/'-joined path, ``re.fullmatch``),
  and multiplies their learning rate by ``scale`` or sets their weight decay to
  ``value``: exactly one of each pair.
  """

  name: str | None = None
  pattern: Annotated[str, pydantic.AfterValidator(_pattern)] | None = None
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

  def matches(self, path: str) -> bool:
    """Whether this rule selects the parameter at '/'-joined `path`."""
    if self.name is not None:
      return self.name.replace(".", "/") == path.replace(".", "/")
    return re.fullmatch(self.pattern, path) is not None  # type: ignore[arg-type]

  def describe(self) -> str:
    sel = f"name={self.name!r}" if self.name is not None else f"pattern={self.pattern!r}"
    act = f"scale={self.scale!r}" if self.scale is not None else f"value={self.value!r}"
    return f"{sel}, {act}"


_LARS_KINDS = ("lars", "tf_lars", "torch_lars")
# Arguments that the config sets itself, with where to set them instead.
_RESERVED = {
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
}


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
    f"kind {kind!r} is not an optimizer.{_did_you_mean(kind, [*_LARS_KINDS, *names])} Use "
    "'lars', 'tf_lars', 'torch_lars', or an optax optimizer (a function of `learning_rate`): "
    f"{', '.join(names)}."
  )


def _kind(kind: str) -> str:
  _factory(kind)
  return kind


def _times(x: optax.ScalarOrSchedule, factor: float) -> optax.ScalarOrSchedule:
  if factor == 1.0:
    return x
  return (lambda count: x(count) * factor) if callable(x) else x * factor


class OptimizerConfig(_Config):
  r"""An optimizer with per-parameter rules; `build` gives one transformation.

  ``kind`` is ``'lars'``, ``'tf_lars'``, ``'torch_lars'`` or an optax optimizer (``'sgd'``,
  ``'optax.adamw'``...); ``options`` are its other keyword arguments, checked on creation.

  A parameter's learning rate is ``lr`` (or ``schedule`` with base ``lr``) times the
  ``scale`` of every rule that selects it. Its weight decay is ``weight_decay``, or the
  ``value`` of the one rule that sets it, or 0 under a default exclusion (last path
  component ``bias``; ``ndim <= 1``), times ``weight_decay_schedule(c) / weight_decay``.
  For the LARS kinds, no weight decay means no layer adaptation while
  ``exclude_from_adaptation_follows_weight_decay``. Optimizers without a ``weight_decay``
  argument get ``optax.add_decayed_weights`` first. ``clip_grad_value``, then
  ``clip_grad_norm``, clip the raw gradients.

  `build` runs one optimizer per group of equal (scale, weight decay, adaptation) in
  `optax.multi_transform`: the numbers of the optimizer built by hand with these masks.
  Rules are resolved at ``init``: one that selects nothing, two that set one parameter's
  weight decay, or a ``value`` where a default exclusion applies raise ``ValueError``
  naming the rules. `param_groups` shows the resolution.

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

  kind: Annotated[str, pydantic.AfterValidator(_kind)]
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
    params = inspect.signature(_factory(self.kind)).parameters
    valid = [
      p
      for p, v in params.items()
      if p not in _RESERVED and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
    ]
    for k in self.options:
      if k in _RESERVED and k in params:
        raise ValueError(f"options.{k}: the config sets {k!r} itself; {_RESERVED[k]}.")
      if k not in valid:
        raise ValueError(
          f"options.{k}: {self.kind!r} has no argument {k!r}.{_did_you_mean(k, valid)} "
          f"Valid options for {self.kind!r}: {', '.join(valid) or '(none)'}."
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
      self._group_tx(1.0, self.weight_decay, True, None)

    _checked(build, f"options: {self.kind!r} rejects {self.options!r}: ")
    return self

  def _group_tx(
    self, scale: float, wd: float, adapt: bool | None, axis_name: AxisNames
  ) -> optax.GradientTransformation:
    fn, opts = _factory(self.kind), dict(self.options)
    lr = _times(self.schedule.build(self.lr) if self.schedule else self.lr, scale)
    if wd != 0.0 and self.weight_decay_schedule is not None:
      wd = _times(self.weight_decay_schedule.build(self.weight_decay), wd / self.weight_decay)
    if self.kind == "lars":
      return fn(lr, weight_decay=wd, trust_ratio_mask=adapt, axis_name=axis_name, **opts)
    if self.kind == "tf_lars":
      opts["exclude_from_layer_adaptation"] = None if adapt else [".*"]
      return fn(lr, weight_decay_rate=wd, axis_name=axis_name, **opts)
    if self.kind == "torch_lars":
      return fn(lr, weight_decay=wd, axis_name=axis_name, **opts)
    if axis_name is not None:
      raise ValueError(f"build: axis_name is for the LARS kinds; optax.{fn.__name__} takes none.")
    if "weight_decay" in inspect.signature(fn).parameters:
      return fn(lr, weight_decay=wd, **opts)
    if callable(wd) or wd != 0.0:
      return optax.chain(optax.add_decayed_weights(wd), fn(lr, **opts))
    return fn(lr, **opts)

  def _resolve(self, tree: Any) -> list[tuple[str, float, float, bool | None]]:
    """(path, lr_scale, weight_decay, adapt) per leaf of `tree`; raises on bad rules."""
    paths, rules = jax.tree.leaves(masks_lib.tree_paths(tree)), self.param_group_modifiers
    hits, out = [0] * len(rules), []
    for path, leaf in zip(paths, jax.tree.leaves(tree)):
      ndim, default = np.ndim(leaf) if not hasattr(leaf, "ndim") else leaf.ndim, None
      if self.exclude_bias_from_weight_decay and re.split(r"[/.]", path)[-1] == "bias":
        default = "exclude_bias_from_weight_decay (its last path component is 'bias')"
      elif self.exclude_normalization_params_from_weight_decay and ndim <= 1:
        default = f"exclude_normalization_params_from_weight_decay (it has ndim {ndim} <= 1)"
      scale, wd, setter = 1.0, 0.0 if default else self.weight_decay, None
      for i, rule in enumerate(rules):
        if not rule.matches(path):
          continue
        hits[i] += 1
        here = f"param_group_modifiers[{i}] ({rule.describe()})"
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
      if self.kind in _LARS_KINDS:
        excluded = default is not None or (setter is not None and wd == 0.0)
        adapt = not excluded or not self.exclude_from_adaptation_follows_weight_decay
      out.append((path, scale, float(wd), adapt))
    for i, n in enumerate(hits):
      if n == 0 and paths:
        shown = ", ".join(repr(p) for p in paths[:8]) + (" ..." if len(paths) > 8 else "")
        how = "exact '/'- or '.'-joined path" if rules[i].name is not None else "re.fullmatch"
        raise ValueError(
          f"param_group_modifiers[{i}] ({rules[i].describe()}) matches no parameter "
          f"({how}). Parameter paths: {shown}."
        )
    return out

  def param_groups(self, params: optax.Params) -> dict[str, dict[str, Any]]:
    """What each parameter gets: ``{path: {lr_scale, weight_decay, adapt}}``.

    ``adapt`` (layer adaptation) is None for non-LARS kinds. Raises like ``init``.
    """
    keys = ("lr_scale", "weight_decay", "adapt")
    return {p: dict(zip(keys, g)) for p, *g in sorted(self._resolve(params))}

  def build(self, *, axis_name: AxisNames = None) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer: clipping, then one optimizer instance per parameter group.

    Args:
      axis_name: for the LARS kinds under `shard_map`, the mesh axes each leaf is
        split over (see `lars_jax.scale_by_trust_ratio`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.
    """

    def partition(tree: Any) -> optax.GradientTransformationExtraArgs:
      groups = [(s, w, a) for _, s, w, a in self._resolve(tree)]
      txs = {str(g): self._group_tx(*g, axis_name) for g in dict.fromkeys(groups)}
      labels = jax.tree.unflatten(jax.tree.structure(tree), [str(g) for g in groups])
      return optax.multi_transform(txs, labels)

    def init_fn(params):
      return partition(params).init(params)

    def update_fn(updates, state, params=None, **extra_args):
      return partition(updates).update(updates, state, params, **extra_args)

    clip = [optax.clip(self.clip_grad_value)] if self.clip_grad_value is not None else []
    if self.clip_grad_norm is not None:
      clip.append(optax.clip_by_global_norm(self.clip_grad_norm))
    return optax.chain(*clip, optax.GradientTransformationExtraArgs(init_fn, update_fn))
