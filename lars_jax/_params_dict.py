"""Model Garden's ``ParamsDict`` methods on pydantic models (for `lars_jax.config`):
`StrictModel` (frozen; an unknown key names the closest field) and `ParamsDict` (YAML and
dict round trips, ``override``, ``lock``, ``validate``), as ``params_dict.py``."""

from __future__ import annotations

import ast
import difflib
import operator
import os
import pathlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
import yaml
from pydantic_core import PydanticCustomError

__all__ = ["ConfigKeyError", "RestrictionError", "StrictModel", "ParamsDict", "did_you_mean"]


class ConfigKeyError(KeyError, ValueError):
  """An unknown key: a ``KeyError`` (as in Model Garden) that is also a ``ValueError``."""

  __str__ = ValueError.__str__  # the message, not KeyError's repr of it


class RestrictionError(KeyError, ValueError):
  """A violated ``validate`` restriction (a ``KeyError`` as in Model Garden)."""

  __str__ = ValueError.__str__


def did_you_mean(key: Any, valid: Sequence[Any], listed: str = "") -> str:
  """' Did you mean 'x'?' (or '' if no valid key is close), then ' <listed>: <valid keys>.'."""
  close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=3, cutoff=0.6)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  return hint + (f" {listed}: {', '.join(map(str, valid)) or '(none)'}." if listed else "")


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

# `validate`'s restrictions: 'left OP right', each side a dotted key or a constant; OP's
# function in `operator` (read-only: no module-level mutable state).
_OPS = types.MappingProxyType(
  {"==": "eq", "!=": "ne", "<=": "le", ">=": "ge", "<": "lt", ">": "gt"}
)
_OP_RE = re.compile(f"({'|'.join(_OPS)})")  # two-character operators first


class StrictModel(pydantic.BaseModel):
  """A frozen model whose unknown keys are errors that name the closest field."""

  model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

  @pydantic.model_validator(mode="before")
  @classmethod
  def _known_keys(cls, data: Any, info: pydantic.ValidationInfo) -> Any:
    # extra='forbid' plus "did you mean"; a config (extra='allow') validated with context
    # {'is_strict': False} keeps unknown keys as added keys.
    if cls.model_config.get("extra") == "allow" and (info.context or {}).get("is_strict") is False:
      return data
    valid, errors = list(cls.model_fields), []
    for k in [k for k in data if k not in valid] if isinstance(data, Mapping) else []:
      msg = f"unknown key {k!r} for {cls.__name__}.{did_you_mean(k, valid, 'Valid keys')}"
      error = PydanticCustomError("extra_forbidden", "{msg}", {"msg": msg})
      errors.append({"type": error, "loc": (k,), "input": data[k]})
    if errors:
      raise pydantic.ValidationError.from_exception_data(cls.__name__, errors)
    return data


class ParamsDict(StrictModel):
  """A top-level config: YAML and dict round trips, override, lock, validate."""

  model_config = pydantic.ConfigDict(extra="allow", frozen=False)
  _locked: bool = pydantic.PrivateAttr(default=False)

  def as_dict(self) -> dict[str, Any]:
    """The config as plain Python (dicts, lists, numbers, strings, None), added keys too."""
    return _plain(self.model_dump())

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], *, is_strict: bool = True):
    """Builds a config from `data` (e.g. `as_dict()`); missing fields take their defaults,
    and ``is_strict=False`` keeps unknown top-level keys as added keys."""
    if not isinstance(data, Mapping):
      raise TypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}.")
    return cls.model_validate(dict(data), context={"is_strict": is_strict})

  @classmethod
  def from_yaml(cls, source: str | os.PathLike[str], *, is_strict: bool = True):
    """Reads a config from a YAML file path or from YAML text (see `from_dict`)."""
    if not isinstance(source, (str, os.PathLike)):
      raise TypeError(f"from_yaml: pass a file path or YAML text, got {type(source).__name__}.")
    where = "YAML text"
    if not isinstance(source, str) or ("\n" not in source and os.path.isfile(source)):
      where = f"file {os.fspath(source)!r}"
      source = pathlib.Path(source).read_text(encoding="utf-8")
    try:
      data = yaml.load(source, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
      raise ValueError(f"from_yaml: {where} is not valid YAML: {e}") from e
    if data is not None and not isinstance(data, dict):
      if where == "YAML text" and source.strip().endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"from_yaml: no such file: {source!r}.")
      raise ValueError(f"from_yaml: {where} must hold a mapping of config keys, got {data!r}.")
    return cls.from_dict(data or {}, is_strict=is_strict)

  def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
    """Returns the config as YAML text (and writes it to `path` if given)."""
    text = yaml.safe_dump(self.as_dict(), sort_keys=False, default_flow_style=False)
    if path is not None:
      pathlib.Path(path).write_text(text, encoding="utf-8")
    return text

  def override(self, overrides: Mapping[str, Any], is_strict: bool = True):
    """A new, unlocked, validated config with `overrides` merged in: dicts key by key (a
    schedule of another ``kind`` whole), lists replaced. An unknown key raises
    `ConfigKeyError` (``is_strict=True``) or is added; ``options`` may always gain keys."""
    fields = type(self).model_fields.items()
    free = {f"{k}." for k, f in fields if typing.get_origin(f.annotation) is dict}

    def merge(base: dict, new: dict, prefix: str) -> dict:
      out = dict(base)
      for k, v in new.items():
        if k not in base and is_strict and prefix not in free:
          where = f" under {prefix.rstrip('.')!r}" if prefix else ""
          raise ConfigKeyError(
            f"{type(self).__name__}.override: the key {prefix + k!r} does not exist."
            f"{did_you_mean(k, list(base), f'Valid keys{where}')}"
            " To add new keys, use override(..., is_strict=False)."
          )
        old = base.get(k)  # dicts merge, unless a new `kind` replaces a schedule whole
        if (
          isinstance(old, dict) and isinstance(v, dict) and v.get("kind") in (None, old.get("kind"))
        ):
          v = merge(old, v, f"{prefix}{k}.")
        out[k] = v
      return out

    if isinstance(overrides, ParamsDict):
      overrides = overrides.as_dict()
    if not isinstance(overrides, Mapping):
      raise TypeError(f"override needs a mapping, got {type(overrides).__name__}.")
    return type(self).from_dict(merge(self.as_dict(), _plain(overrides), ""), is_strict=False)

  def lock(self):
    """Makes this config immutable (assignment raises ``ValueError``); returns it."""
    self._locked = True
    return self

  @property
  def is_locked(self) -> bool:
    """Whether `lock()` was called."""
    return self._locked

  def validate(self, restrictions: Sequence[str]):  # type: ignore[override]
    """Checks Model Garden restrictions ``'left OP right'`` (OP one of ``== != < <= > >=``,
    each side a dotted key or a constant); returns self. Raises `ConfigKeyError` for an
    unknown key, `RestrictionError` where one does not hold, ValueError if malformed."""
    for r in [restrictions] if isinstance(restrictions, str) else restrictions:
      if not isinstance(r, str):
        raise TypeError(f"validate: restrictions must be strings, got {r!r}.")
      sides = [t.strip() for t in _OP_RE.split(r)]
      if len(sides) != 3 or not sides[0] or not sides[2]:
        raise ValueError(
          f"validate: {r!r} must be one binary relation 'left OP right' (OP one of "
          f"{' '.join(_OPS)}) with a key or constant on both sides."
        )
      (left, op, right), keys = sides, {}
      lv, rv = (self._operand(t, r, keys) for t in (left, right))
      try:
        ok = bool(getattr(operator, _OPS[op])(lv, rv))
      except TypeError as e:
        raise ValueError(
          f"validate: cannot compare {left} = {lv!r} with {right} = {rv!r} in {r!r}: {e}."
        ) from e
      if not ok:
        shown = ", ".join(f"{k} = {v!r}" for k, v in keys.items())
        raise RestrictionError(f"{type(self).__name__}: restriction {r!r} does not hold ({shown}).")
    return self

  def _operand(self, token: str, restriction: str, keys: dict[str, Any]) -> Any:
    """One side of a restriction: a Python constant (or YAML's null, true, false), else the
    value of a dotted key (kept in `keys`)."""
    try:
      return ast.literal_eval({"null": "None", "true": "True", "false": "False"}.get(token, token))
    except (ValueError, TypeError, SyntaxError):  # not a constant: a key
      pass
    value, parts = self.as_dict(), token.split(".")
    for i, part in enumerate(parts):
      if not isinstance(value, dict) or part not in value:
        raise ConfigKeyError(
          f"validate: {restriction!r} refers to the key {token!r}, but "
          f"{'.'.join(parts[:i]) or type(self).__name__!r} has no key {part!r}."
          + did_you_mean(part, list(value) if isinstance(value, dict) else [], "Valid keys")
        )
      value = value[part]
    keys[token] = value
    return value

  def __setattr__(self, name: str, value: Any) -> None:
    if not name.startswith("_"):  # public fields: check the whole config with the new value
      cls, fields = type(self), list(type(self).model_fields)
      if self._locked:
        raise ValueError(f"{cls.__name__} is locked: cannot set {name!r}. Use `override`.")
      if name not in fields:
        raise ConfigKeyError(
          f"{cls.__name__} has no field {name!r}.{did_you_mean(name, fields)} To add a "
          "key, use override({...}, is_strict=False)."
        )
      value = getattr(cls.from_dict({**self.model_dump(), name: value}, is_strict=False), name)
    super().__setattr__(name, value)

  def __delattr__(self, name: str) -> None:
    raise ValueError(f"{type(self).__name__}: fields cannot be deleted ({name!r}).")

  def __eq__(self, other: object) -> bool:  # locked or not, equal values are equal
    return type(self) is type(other) and self.as_dict() == other.as_dict()  # type: ignore[union-attr]
