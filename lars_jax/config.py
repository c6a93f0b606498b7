"""Typed optimizer configs that live in YAML and build optax transformations.

Two configs, validated by pydantic when created (so a bad experiment file fails before
a pod job starts, with an error naming the field):

* `LARSConfig`: TensorFlow Model Garden's ``LARSConfig`` (same fields, defaults and
  ``ParamsDict`` methods: ``override``, ``lock``, ``validate``, ``as_dict``); ``build``
  gives `lars_jax.tf_lars`.
* `OptimizerConfig`: noether-style per-name parameter-group rules over any LARS
  flavour or optax optimizer, with default exclusions, clipping and schedules.

Both read and write YAML (``from_yaml`` / ``to_yaml``) and plain dicts
(``from_dict`` / ``as_dict``) without loss. Shared methods:

* ``override(d, is_strict=True)`` returns a new config with ``d`` merged in (nested
  dicts merge). Strict: an unknown key raises `ConfigKeyError` (a ``KeyError``, as in
  Model Garden, and a ``ValueError``) naming it and the valid keys. Non-strict: unknown
  top-level keys are added (read them as attributes, in ``as_dict`` and in
  ``validate`` restrictions; ``build`` ignores them). Typed sub-configs (schedules,
  rules) always reject unknown keys, since ``build`` reads them.
* ``lock()`` makes the config immutable: assigning a field raises ``ValueError``.
  ``override`` still works and returns a new, unlocked config.
* ``validate(restrictions)`` checks Model Garden restriction strings such as
  ``'momentum < 1'`` or ``'train.warmup_steps <= train.total_steps'`` (operators
  ``== != < <= > >=``, dotted keys, numbers, ``None``, ``True``/``False``): an unknown
  key raises `ConfigKeyError`, a violated restriction `RestrictionError` (both a
  ``KeyError``, as Model Garden raises them, and a ``ValueError``), a malformed one
  ``ValueError``.

YAML numbers such as ``1e-4`` (no dot) are read as floats, not strings.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import jax
import numpy as np
import optax
import yaml
from pydantic import (
  BaseModel,
  ConfigDict,
  Field,
  PrivateAttr,
  StrictBool,
  field_validator,
  model_validator,
)

from lars_jax import _checks
from lars_jax import masks as masks_lib
from lars_jax import schedules as schedules_lib
from lars_jax.lars import lars
from lars_jax.transforms import AxisNames, ScalarOrSchedule

__all__ = [
  "ConfigKeyError",
  "RestrictionError",
  "LARSConfig",
  "OptimizerConfig",
  "ParamGroupRule",
]

_NonNeg = Annotated[float, Field(ge=0.0, strict=True, allow_inf_nan=False)]
_Positive = Annotated[float, Field(gt=0.0, strict=True, allow_inf_nan=False)]


class ConfigKeyError(KeyError, ValueError):
  """An unknown key: a ``KeyError`` (as in Model Garden) that is also a ``ValueError``."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


class RestrictionError(KeyError, ValueError):
  """A violated ``validate`` restriction (Model Garden raises ``KeyError``)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def _did_you_mean(key: Any, valid: Sequence[str]) -> str:
  close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=3, cutoff=0.6)
  return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _plain(x: Any) -> Any:
  """Tuples -> lists, mappings -> dicts, recursively (YAML-safe, JSON-like)."""
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return copy.deepcopy(x)


class _YamlLoader(yaml.SafeLoader):
  """SafeLoader that also reads ``1e-4`` and ``1.0e5`` (YAML 1.1 needs ``1.0e-4``) as floats."""


_YamlLoader.add_implicit_resolver(
  "tag:yaml.org,2002:float",
  re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
  list("-+0123456789."),
)


def _read_yaml(source: str | os.PathLike[str]) -> dict[str, Any]:
  if isinstance(source, os.PathLike) or (
    isinstance(source, str) and "\n" not in source and os.path.isfile(source)
  ):
    with open(source, encoding="utf-8") as f:
      text, where = f.read(), f"file {os.fspath(source)!r}"
  elif isinstance(source, str):
    text, where = source, "YAML text"
  else:
    raise TypeError(f"from_yaml: pass a file path or YAML text, got {type(source).__name__}.")
  try:
    data = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)
  except yaml.YAMLError as e:
    raise ValueError(f"from_yaml: {where} is not valid YAML: {e}") from e
  if data is None:
    return {}
  if not isinstance(data, dict):
    if isinstance(source, str) and source.strip().endswith((".yaml", ".yml")):
      raise FileNotFoundError(f"from_yaml: no such file: {source!r}.")
    raise ValueError(
      f"from_yaml: {where} must hold a mapping of config keys, got "
      f"{type(data).__name__} {data!r}. (Is it a path to a file that does not exist?)"
    )
  return data


_OPS: list[tuple[str, Callable[[Any, Any], bool]]] = [
  ("==", operator.eq),
  ("!=", operator.ne),
  ("<=", operator.le),
  (">=", operator.ge),
  ("<", operator.lt),
  (">", operator.gt),
]
_OP_RE = re.compile(r"==|!=|<=|>=|<|>")
_NUMBER_RE = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")


class _Config(BaseModel):
  """Shared machinery: YAML/dict round trip, override, lock, validate."""

  model_config = ConfigDict(extra="forbid", validate_assignment=True)

  _locked: bool = PrivateAttr(default=False)
  _added: dict[str, Any] = PrivateAttr(default_factory=dict)

  # Fields whose value is a free dict: a strict override may add keys to it (the
  # config validates them itself).
  _open_dicts: ClassVar[tuple[str, ...]] = ()

  @model_validator(mode="before")
  @classmethod
  def _known_keys(cls, data: Any) -> Any:
    if isinstance(data, Mapping):
      valid = list(cls.model_fields)
      for k in data:
        if k not in cls.model_fields:
          raise ValueError(
            f"unknown key {k!r} for {cls.__name__}.{_did_you_mean(k, valid)} "
            f"Valid keys: {', '.join(valid)}."
          )
    return data

  # -- dicts and YAML ---------------------------------------------------------

  def as_dict(self) -> dict[str, Any]:
    """The config as plain Python (dicts, lists, numbers, strings, None)."""
    out = _plain(self.model_dump())
    out.update(_plain(self._added))
    return out

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], *, is_strict: bool = True):
    """Builds a config from `data` (e.g. `as_dict()` output).

    Args:
      data: field values; missing fields take their defaults.
      is_strict: reject unknown keys (True), or keep them as added keys (False, as
        after a non-strict `override`).

    Returns:
      A new config.
    """
    if not isinstance(data, Mapping):
      raise TypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}.")
    for k in data:
      if not isinstance(k, str):
        raise TypeError(f"{cls.__name__}: keys must be strings, got {k!r}.")
    if is_strict:
      return cls.model_validate(dict(data))
    known = {k: v for k, v in data.items() if k in cls.model_fields}
    obj = cls.model_validate(known)
    obj._added = {k: copy.deepcopy(v) for k, v in data.items() if k not in cls.model_fields}
    return obj

  @classmethod
  def from_yaml(cls, source: str | os.PathLike[str], *, is_strict: bool = True):
    """Reads a config from a YAML file path or from YAML text (see `from_dict`)."""
    return cls.from_dict(_read_yaml(source), is_strict=is_strict)

  def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
    """Returns the config as YAML text (and writes it to `path` if given)."""
    try:
      text = yaml.safe_dump(self.as_dict(), sort_keys=False, default_flow_style=False)
    except yaml.YAMLError as e:
      raise TypeError(
        f"{type(self).__name__}.to_yaml: a value is not plain YAML data "
        f"(numbers, strings, bools, lists, dicts): {e}"
      ) from e
    if path is not None:
      with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text

  # -- override / lock / validate ----------------------------------------------

  def override(self, overrides: Mapping[str, Any], is_strict: bool = True):
    """Returns a new config with `overrides` merged in; this one is unchanged.

    Nested dicts (a schedule, ``options``, keys added earlier) are merged key by
    key; a schedule given a different ``kind`` is replaced whole; lists are replaced.

    Args:
      overrides: the keys to change.
      is_strict: unknown keys raise `ConfigKeyError` (True) or are added (False).

    Returns:
      A new, unlocked config of the same class.
    """
    if isinstance(overrides, _Config):
      overrides = overrides.as_dict()
    if not isinstance(overrides, Mapping):
      raise TypeError(f"override needs a mapping, got {type(overrides).__name__}.")
    merged = self._merge(self.as_dict(), overrides, is_strict, "")
    return type(self).from_dict(merged, is_strict=False)

  def _merge(self, base: dict, new: Mapping, strict: bool, prefix: str) -> dict:
    out = dict(base)
    for k, v in new.items():
      key = f"{prefix}{k}"
      if k not in base:
        open_dict = prefix.rstrip(".") in self._open_dicts
        if strict and not open_dict:
          where = f" under {prefix.rstrip('.')!r}" if prefix else ""
          raise ConfigKeyError(
            f"{type(self).__name__}.override: the key {key!r} does not exist."
            f"{_did_you_mean(k, list(base))} Valid keys{where}: "
            f"{', '.join(map(str, base))}. To add new keys, use override(..., "
            "is_strict=False)."
          )
        out[k] = copy.deepcopy(v)
      elif (
        isinstance(base[k], dict)
        and isinstance(v, Mapping)
        and not (
          prefix == ""
          and k not in self._open_dicts
          and "kind" in v
          and v["kind"] != base[k].get("kind")
        )
      ):
        out[k] = self._merge(base[k], v, strict, f"{key}.")
      else:
        out[k] = copy.deepcopy(v)
    return out

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

    Each restriction is ``left OP right`` with OP one of ``== != < <= > >=`` and each
    side a dotted key of `as_dict()` or a constant (a number, ``None``, ``True``,
    ``False``, or a quoted string).

    Raises:
      ConfigKeyError: a key in a restriction does not exist (a ``KeyError``).
      RestrictionError: a restriction does not hold (a ``KeyError``, as in Model
        Garden, and a ``ValueError``).
      ValueError: a restriction is not a single binary relation, or its two sides
        cannot be compared.
    """
    if isinstance(restrictions, str):
      restrictions = [restrictions]
    values = self.as_dict()
    for r in restrictions:
      if not isinstance(r, str):
        raise TypeError(f"validate: restrictions must be strings, got {r!r}.")
      ops = _OP_RE.findall(r)
      if len(ops) != 1:
        raise ValueError(
          f"validate: {r!r} must be one binary relation 'left OP right' with OP one of "
          f"{', '.join(op for op, _ in _OPS)}; found {len(ops)} operators."
        )
      op = ops[0]
      left, right = (t.strip() for t in r.split(op))
      if not left or not right:
        raise ValueError(f"validate: {r!r} needs a key or constant on both sides of {op!r}.")
      lv, rv = self._operand(left, values, r), self._operand(right, values, r)
      fn = dict(_OPS)[op]
      try:
        ok = bool(fn(lv, rv))
      except TypeError as e:
        raise ValueError(
          f"validate: cannot compare {left} = {lv!r} with {right} = {rv!r} in {r!r}: {e}."
        ) from e
      if not ok:
        shown = [f"{t} = {v!r}" for t, v in ((left, lv), (right, rv)) if not self._constant(t)]
        raise RestrictionError(
          f"{type(self).__name__}: restriction {r!r} does not hold ({', '.join(shown)})."
        )
    return self

  @staticmethod
  def _constant(token: str) -> bool:
    return bool(
      _NUMBER_RE.match(token)
      or token in ("None", "null", "True", "true", "False", "false")
      or (len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"")
    )

  def _operand(self, token: str, values: dict, restriction: str) -> Any:
    if _NUMBER_RE.match(token):
      return float(token.replace("_", ""))
    if token in ("None", "null"):
      return None
    if token in ("True", "true", "False", "false"):
      return token in ("True", "true")
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
      return token[1:-1]
    v: Any = values
    done: list[str] = []
    for part in token.split("."):
      if not isinstance(v, dict) or part not in v:
        where = ".".join(done) or type(self).__name__
        valid = list(v) if isinstance(v, dict) else []
        raise ConfigKeyError(
          f"validate: {restriction!r} refers to the key {token!r}, but {where!r} has "
          f"no key {part!r}.{_did_you_mean(part, valid)}"
          + (f" Valid keys: {', '.join(map(str, valid))}." if valid else "")
        )
      v = v[part]
      done.append(part)
    return v

  # -- attribute access -----------------------------------------------------------

  def __setattr__(self, name: str, value: Any) -> None:
    if not name.startswith("_"):
      if self._locked:
        raise ValueError(
          f"{type(self).__name__} is locked: cannot set {name!r}. Use "
          "`override({...})` to get a modified copy."
        )
      if name not in type(self).model_fields:
        raise ConfigKeyError(
          f"{type(self).__name__} has no field {name!r}."
          f"{_did_you_mean(name, list(type(self).model_fields))}"
          " To add a key, use override({...}, is_strict=False)."
        )
    super().__setattr__(name, value)

  def __delattr__(self, name: str) -> None:
    raise ValueError(f"{type(self).__name__}: fields cannot be deleted ({name!r}).")

  def __getattr__(self, name: str) -> Any:
    if not name.startswith("_"):
      try:
        added = object.__getattribute__(self, "__pydantic_private__") or {}
      except AttributeError:
        added = {}
      added = added.get("_added") or {}
      if name in added:
        return added[name]
    return super().__getattr__(name)  # type: ignore[misc]

  def __eq__(self, other: object) -> bool:
    return type(self) is type(other) and self.as_dict() == other.as_dict()  # type: ignore[union-attr]

  __hash__ = None  # type: ignore[assignment]


def _compile(pattern: str) -> re.Pattern[str]:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from e


# ----------------------------------------------------------------------------
# LARSConfig


class LARSConfig(_Config):
  r"""TensorFlow Model Garden's ``LARSConfig``; `build` gives `lars_jax.tf_lars`.

  Same fields and defaults as ``official/modeling/optimization/configs/
  optimizer_config.py``; see `lars_jax.tf_lars` for the update equations. The
  learning rate is not part of this config (in Model Garden it comes from the
  ``OptimizationConfig``): pass it, or a schedule, to `build`.

  Values are checked on creation and on assignment: ``momentum`` in [0, 1),
  ``eeta > 0``, ``weight_decay_rate >= 0``, clip values ``> 0`` (and, as in Keras, not
  both ``clipnorm`` and ``global_clipnorm``), patterns valid regular expressions
  (matched with ``re.search`` against '/'-joined parameter paths).

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
  momentum: Annotated[float, Field(ge=0.0, lt=1.0, strict=True, allow_inf_nan=False)] = 0.9
  eeta: _Positive = 0.001
  weight_decay_rate: _NonNeg = 0.0
  nesterov: StrictBool = False
  classic_momentum: StrictBool = True
  exclude_from_weight_decay: tuple[str, ...] | None = None
  exclude_from_layer_adaptation: tuple[str, ...] | None = None
  clipnorm: _Positive | None = None
  clipvalue: _Positive | None = None
  global_clipnorm: _Positive | None = None

  @field_validator("exclude_from_weight_decay", "exclude_from_layer_adaptation", mode="before")
  @classmethod
  def _one_pattern(cls, value: Any) -> Any:
    return (value,) if isinstance(value, str) else value

  @field_validator("exclude_from_weight_decay", "exclude_from_layer_adaptation")
  @classmethod
  def _regexes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for p in value or ():
      _compile(p)
    return value

  @model_validator(mode="after")
  def _clip_norms(self) -> LARSConfig:
    if self.clipnorm is not None and self.global_clipnorm is not None:
      raise ValueError(
        "clipnorm and global_clipnorm cannot both be set (Keras rejects this too): "
        "keep one of them."
      )
    return self

  def build(
    self, learning_rate: ScalarOrSchedule = 0.01, *, axis_name: AxisNames = None
  ) -> optax.GradientTransformationExtraArgs:
    """Returns ``lars_jax.tf_lars`` with this config's values.

    Args:
      learning_rate: a number or an optax schedule (e.g. from `lars_jax.schedules`).
      axis_name: mesh axes each leaf is split over under `shard_map` (see
        `lars_jax.scale_by_trust_ratio`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.
    """
    from lars_jax.presets import tf_lars  # noqa: PLC0415 (presets import this package)

    def patterns(p: tuple[str, ...] | None) -> list[str] | None:
      return None if p is None else list(p)

    return tf_lars(
      learning_rate,
      momentum=self.momentum,
      weight_decay_rate=self.weight_decay_rate,
      eeta=self.eeta,
      nesterov=self.nesterov,
      classic_momentum=self.classic_momentum,
      exclude_from_weight_decay=patterns(self.exclude_from_weight_decay),
      exclude_from_layer_adaptation=patterns(self.exclude_from_layer_adaptation),
      clipnorm=self.clipnorm,
      clipvalue=self.clipvalue,
      global_clipnorm=self.global_clipnorm,
      axis_name=axis_name,
    )


# ----------------------------------------------------------------------------
# OptimizerConfig


class ParamGroupRule(BaseModel):
  """One rule of `OptimizerConfig.param_group_modifiers`.

  Selects parameters by ``name`` (the exact full path, '/'- or '.'-joined:
  ``backbone.cls_token`` and ``backbone/cls_token`` are the same) or by ``pattern``
  (a regular expression that must match the whole '/'-joined path, ``re.fullmatch``),
  and either multiplies their learning rate by ``scale`` or sets their weight decay to
  ``value``: exactly one of each pair.
  """

  model_config = ConfigDict(extra="forbid", frozen=True)

  name: str | None = None
  pattern: str | None = None
  scale: _NonNeg | None = None
  value: _NonNeg | None = None

  @model_validator(mode="after")
  def _exactly_one(self) -> ParamGroupRule:
    if (self.name is None) == (self.pattern is None):
      raise ValueError(
        "a param_group_modifiers rule needs exactly one of `name` (an exact path such "
        "as 'backbone.cls_token') or `pattern` (a regex over '/'-joined paths), got "
        f"name={self.name!r}, pattern={self.pattern!r}."
      )
    if (self.scale is None) == (self.value is None):
      raise ValueError(
        "a param_group_modifiers rule needs exactly one of `scale` (multiplies the "
        "learning rate) or `value` (sets the weight decay), got "
        f"scale={self.scale!r}, value={self.value!r}."
      )
    if self.pattern is not None:
      _compile(self.pattern)
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


@functools.cache
def _optax_optimizers() -> tuple[str, ...]:
  names = []
  for n in dir(optax):
    f = getattr(optax, n)
    if n.startswith("_") or not inspect.isfunction(f) or n.startswith("scale_by"):
      continue
    try:
      params = list(inspect.signature(f).parameters)
    except (TypeError, ValueError):  # pragma: no cover
      continue
    if params[:1] == ["learning_rate"] and n != "lars":  # 'lars' is lars_jax.lars
      names.append(n)
  return tuple(names)


def _factory(kind: str) -> Callable[..., optax.GradientTransformation]:
  """The function that `kind` names (see `OptimizerConfig.kind`)."""
  if kind == "lars":
    return lars
  if kind in ("tf_lars", "torch_lars"):
    try:
      from lars_jax import presets  # noqa: PLC0415 (presets import this package)
    except ImportError as e:  # pragma: no cover
      raise ValueError(f"kind {kind!r} needs lars_jax.presets, which failed to import: {e}") from e
    return getattr(presets, kind)
  name = kind.removeprefix("optax.")
  if name in _optax_optimizers():
    return getattr(optax, name)
  valid = [*_LARS_KINDS, *_optax_optimizers()]
  raise ValueError(
    f"kind {kind!r} is not an optimizer.{_did_you_mean(name, valid)} Use 'lars', "
    "'tf_lars', 'torch_lars', or the name of an optax optimizer (a function of "
    f"`learning_rate`): {', '.join(_optax_optimizers())}."
  )


class OptimizerConfig(_Config):
  r"""An optimizer with noether-style per-parameter rules; `build` gives one transformation.

  **Optimizer.** ``kind`` is ``'lars'`` (`lars_jax.lars`), ``'tf_lars'``,
  ``'torch_lars'`` (`lars_jax.tf_lars`, `lars_jax.torch_lars`) or an optax optimizer
  such as ``'sgd'``, ``'adamw'``, ``'lamb'``. ``options`` holds its other keyword
  arguments (``momentum``, ``nesterov``, ``trust_coefficient``, ``eps``, ``b1``...),
  checked against its signature and values when the config is created; unset ones keep
  the function's defaults (e.g. ``momentum`` 0.9 for ``lars``, None for ``sgd``).

  **Learning rate** of a parameter: ``lr`` (the peak, or a ``schedule``'s base value)
  times the ``scale`` of every rule that selects it. **Weight decay**: ``weight_decay``,
  or the ``value`` of the one rule that sets it, or 0 where a default exclusion applies:
  ``exclude_bias_from_weight_decay`` (last path component ``bias``, '/'- or '.'-split)
  and ``exclude_normalization_params_from_weight_decay`` (every parameter with
  ``ndim <= 1``), as in noether. ``weight_decay_schedule`` scales every decayed
  parameter's rate by ``schedule(c) / weight_decay``. For the LARS kinds, a parameter
  excluded from weight decay (by a default or by a rule with ``value: 0``) is also not
  layer-adapted (trust ratio 1) while ``exclude_from_adaptation_follows_weight_decay``
  is True. For optax optimizers without a ``weight_decay`` argument, weight decay is
  added to the gradient first (``optax.add_decayed_weights``, PyTorch SGD/Adam style).

  **Clipping** of the raw gradients, before everything: ``clip_grad_value``
  (elementwise, `optax.clip`), then ``clip_grad_norm`` (global norm,
  `optax.clip_by_global_norm`).

  `build` partitions the parameters into groups of equal (learning-rate scale, weight
  decay, adaptation) and runs one instance of the optimizer per group
  (`optax.multi_transform`): numbers are those of the optimizer built by hand with
  these masks. Rules are resolved at ``init`` (and traced ``update``): a rule that
  selects no parameter, two rules setting the weight decay of one parameter, or a
  ``value`` rule on a parameter that a default exclusion already covers raise
  ``ValueError`` naming the rules. `param_groups` shows the resolution.

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
    >>> solver = cfg.build()
    >>> state = solver.init(params)
  """

  _open_dicts: ClassVar[tuple[str, ...]] = ("options",)

  kind: str
  lr: _Positive
  weight_decay: _NonNeg = 0.0
  clip_grad_value: _Positive | None = None
  clip_grad_norm: _Positive | None = None
  options: dict[str, Any] = Field(default_factory=dict)
  param_group_modifiers: tuple[ParamGroupRule, ...] = ()
  exclude_bias_from_weight_decay: StrictBool = True
  exclude_normalization_params_from_weight_decay: StrictBool = True
  exclude_from_adaptation_follows_weight_decay: StrictBool = True
  schedule: schedules_lib.Schedule | None = None
  weight_decay_schedule: schedules_lib.Schedule | None = None

  @field_validator("kind")
  @classmethod
  def _known_kind(cls, kind: str) -> str:
    _factory(kind)
    return kind

  @model_validator(mode="after")
  def _check(self) -> OptimizerConfig:
    fn = _factory(self.kind)
    params = inspect.signature(fn).parameters
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
    if self.weight_decay_schedule is not None:
      if self.weight_decay == 0:
        raise ValueError(
          "weight_decay_schedule needs weight_decay > 0: the schedule's base value is "
          "`weight_decay`."
        )
    if self.kind == "torch_lars" and not self.exclude_from_adaptation_follows_weight_decay:
      raise ValueError(
        "exclude_from_adaptation_follows_weight_decay=False is not possible with kind "
        "'torch_lars': PyTorch/Flash LARS never adapts a parameter without weight decay. "
        "Use kind 'lars' or 'tf_lars'."
      )
    try:  # the values in `options` are checked by the optimizer itself
      if self.options.get("momentum") is not None:  # optax.sgd does not check it
        _checks.check_momentum("momentum", self.options["momentum"])
      self._group_tx(1.0, self.weight_decay, True, None)
    except (TypeError, ValueError) as e:
      raise ValueError(f"options: {self.kind!r} rejects {self.options!r}: {e}") from e
    return self

  # -- building -----------------------------------------------------------------

  def _lr(self, scale: float) -> ScalarOrSchedule:
    base = self.schedule.build(self.lr) if self.schedule is not None else self.lr
    if scale == 1.0:
      return base
    if callable(base):
      return lambda count: base(count) * scale
    return base * scale

  def _wd(self, value: float) -> ScalarOrSchedule:
    if value == 0.0 or self.weight_decay_schedule is None:
      return value
    sched = self.weight_decay_schedule.build(self.weight_decay)
    if value == self.weight_decay:
      return sched
    ratio = value / self.weight_decay
    if callable(sched):
      return lambda count: sched(count) * ratio
    return sched * ratio

  def _group_tx(
    self, scale: float, wd: float, adapt: bool | None, axis_name: AxisNames
  ) -> optax.GradientTransformation:
    fn = _factory(self.kind)
    lr, wd_ = self._lr(scale), self._wd(wd)
    opts = dict(self.options)
    if self.kind == "lars":
      return fn(lr, weight_decay=wd_, trust_ratio_mask=bool(adapt), axis_name=axis_name, **opts)
    if self.kind == "tf_lars":
      return fn(
        lr,
        weight_decay_rate=wd_,
        exclude_from_layer_adaptation=None if adapt else [".*"],
        axis_name=axis_name,
        **opts,
      )
    if self.kind == "torch_lars":
      return fn(lr, weight_decay=wd_, axis_name=axis_name, **opts)
    if axis_name is not None:
      raise ValueError(f"build: axis_name is for the LARS kinds; optax.{fn.__name__} takes none.")
    if "weight_decay" in inspect.signature(fn).parameters:
      return fn(lr, weight_decay=wd_, **opts)
    tx = fn(lr, **opts)
    if callable(wd_) or wd_ != 0.0:
      return optax.chain(optax.add_decayed_weights(wd_), tx)
    return tx

  def _resolve(self, tree: Any) -> list[tuple[str, float, float, bool | None]]:
    """(path, lr_scale, weight_decay, adapt) per leaf of `tree`; raises on bad rules."""
    paths = jax.tree.leaves(masks_lib.tree_paths(tree))
    leaves = jax.tree.leaves(tree)
    rules = self.param_group_modifiers
    hits = [0] * len(rules)
    is_lars = self.kind in _LARS_KINDS
    out = []
    for path, leaf in zip(paths, leaves):
      ndim = leaf.ndim if hasattr(leaf, "ndim") else np.ndim(leaf)
      default = None
      if self.exclude_bias_from_weight_decay and re.split(r"[/.]", path)[-1] == "bias":
        default = "exclude_bias_from_weight_decay (its last path component is 'bias')"
      elif self.exclude_normalization_params_from_weight_decay and ndim <= 1:
        default = f"exclude_normalization_params_from_weight_decay (it has ndim {ndim} <= 1)"
      scale, wd_rule = 1.0, None
      for i, rule in enumerate(rules):
        if not rule.matches(path):
          continue
        hits[i] += 1
        if rule.scale is not None:
          scale *= rule.scale
          continue
        here = f"param_group_modifiers[{i}] ({rule.describe()})"
        if wd_rule is not None:
          raise ValueError(
            f"Two rules set the weight decay of {path!r}: param_group_modifiers"
            f"[{wd_rule}] ({rules[wd_rule].describe()}) and {here}. Keep one."
          )
        if default is not None:
          raise ValueError(
            f"{here} sets the weight decay of {path!r}, which {default} already sets "
            "to 0. Narrow the rule, or turn that exclusion off."
          )
        wd_rule = i
      if wd_rule is not None:
        wd = rules[wd_rule].value
      else:
        wd = 0.0 if default is not None else self.weight_decay
      excluded = default is not None or (wd_rule is not None and wd == 0.0)
      adapt = (
        (not excluded or not self.exclude_from_adaptation_follows_weight_decay) if is_lars else None
      )
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
    return {
      p: {"lr_scale": s, "weight_decay": w, "adapt": a}
      for p, s, w, a in sorted(self._resolve(params))
    }

  def build(self, *, axis_name: AxisNames = None) -> optax.GradientTransformationExtraArgs:
    """Returns the optimizer: clipping, then one optimizer instance per parameter group.

    Args:
      axis_name: for the LARS kinds under `shard_map`, the mesh axes each leaf is
        split over (see `lars_jax.scale_by_trust_ratio`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.
    """

    def partition(tree: Any) -> optax.GradientTransformationExtraArgs:
      resolved = self._resolve(tree)
      labels, groups = [], {}
      for _, scale, wd, adapt in resolved:
        label = f"lr_scale={scale!r},weight_decay={wd!r},adapt={adapt}"
        groups[label] = (scale, wd, adapt)
        labels.append(label)
      txs = {k: self._group_tx(*g, axis_name) for k, g in groups.items()}
      return optax.multi_transform(txs, jax.tree.unflatten(jax.tree.structure(tree), labels))

    def init_fn(params):
      return partition(params).init(params)

    def update_fn(updates, state, params=None, **extra_args):
      return partition(updates).update(updates, state, params, **extra_args)

    parts: list[optax.GradientTransformation] = []
    if self.clip_grad_value is not None:
      parts.append(optax.clip(self.clip_grad_value))
    if self.clip_grad_norm is not None:
      parts.append(optax.clip_by_global_norm(self.clip_grad_norm))
    return optax.chain(*parts, optax.GradientTransformationExtraArgs(init_fn, update_fn))
