"""Masks: which parameters a transform applies to (README: Masks).

Every `mask=` argument accepts ``None``/``True`` (every leaf), ``False``, a pytree of
Python bools shaped like the params or a prefix of them, or a callable ``params -> bool
pytree`` such as the builders below (``True``: decay / adapt). Paths are key paths joined
with ``/`` (``params/Dense_0/kernel``; an NNX ``Variable`` adds no component).

Example:
  >>> import jax.numpy as jnp
  >>> from lars_jax import masks
  >>> params = {'conv': {'kernel': jnp.ones((3, 3, 1, 8)), 'bias': jnp.zeros(8)},
  ...           'bn': {'scale': jnp.ones(8)}}
  >>> masks.exclude_names('bias', 'bn/')(params)
  {'bn': {'scale': False}, 'conv': {'bias': False, 'kernel': True}}
  >>> masks.min_ndim(2)(params)
  {'bn': {'scale': False}, 'conv': {'bias': False, 'kernel': True}}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import jax
import numpy as np
import optax

from lars_jax import _compat

Mask = Any  # bool | pytree of bools (or a prefix) | Callable[[params], pytree]
MatchMode = Literal["search", "fullmatch", "component"]

__all__ = [
  "all_of",
  "any_of",
  "exclude_names",
  "min_ndim",
  "only_names",
  "path_str",
  "resolve",
  "tree_paths",
]


def path_str(path: Sequence[Any]) -> str:
  """Joins a JAX key path into our ``a/b/0/kernel`` convention: each entry's dict key,
  attribute name or index (jax's entries, or any with one of those attributes)."""
  names = (next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)), k) for k in path)
  return "/".join(map(str, names))


def _paths(tree: Any) -> list[tuple[str, bool]]:
  """(path, is an ``optax.MaskedNode`` placeholder) in order: one per leaf of
  ``jax.tree.leaves`` (an NNX Variable's ``value`` key dropped) and one per placeholder."""
  out, stop = [], (optax.MaskedNode, *_compat.nnx_variable_types())
  for path, node in jax.tree_util.tree_flatten_with_path(tree, lambda x: isinstance(x, stop))[0]:
    masked = isinstance(node, optax.MaskedNode)
    out += [(path_str(path), masked)] * (1 if masked else len(jax.tree.leaves(node)))
  return out


def _first_six(items: list[str]) -> str:
  more = f" (and {len(items) - 6} more)" if len(items) > 6 else ""
  return ", ".join(items[:6]) + more


def _check_params(params: Any, name: str) -> None:
  """Raises for what `optax.inject_hyperparams` passes a schedule: a scalar integer."""
  dtype = getattr(params, "dtype", type(params))  # a Python int's type is its dtype
  if getattr(params, "shape", ()) == () and np.issubdtype(dtype, np.integer):
    raise TypeError(
      f"{name}: this mask was called with a step counter ({params!r}), not a params tree: "
      "probably by optax.inject_hyperparams, which calls every callable argument that is "
      "not in its `static_args` as a schedule of the step. Name the mask arguments in "
      "`static_args`, e.g. `optax.inject_hyperparams(lars_jax.lars, "
      "static_args=('weight_decay_mask', 'trust_ratio_mask'))(...)`, or "
      "`static_args='mask'` for add_decayed_weights and scale_by_trust_ratio."
    )


def tree_paths(tree: Any) -> Any:
  """Returns a pytree with the structure of `tree` whose leaves are path strings.

  Example:
    >>> tree_paths({'a': {'kernel': 1.0}, 'b': [2.0, 3.0]})
    {'a': {'kernel': 'a/kernel'}, 'b': ['b/0', 'b/1']}
  """
  return jax.tree.unflatten(jax.tree.structure(tree), [p for p, m in _paths(tree) if not m])


def compile_patterns(patterns: Sequence[str], arg: str) -> list[re.Pattern[str]]:
  """Compiles the patterns; an error names `arg` (the argument they came from)."""
  compiled = []
  for p in patterns:
    if not isinstance(p, str):
      raise TypeError(f"`{arg}`: patterns must be strings, got {p!r}.")
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"`{arg}`: {p!r} is not a valid regular expression: {e}.") from e
  return compiled


def _name_mask(
  patterns: Sequence[str], match: MatchMode, keep_matches: bool, what: str
) -> Callable[[Any], Any]:
  if match not in get_args(MatchMode):
    raise ValueError(f"`match` must be 'search', 'fullmatch' or 'component', got {match!r}.")
  compiled = compile_patterns(patterns, what)
  name = f"{what}({', '.join(repr(r.pattern) for r in compiled)})"

  def test(r: re.Pattern[str], path: str) -> bool:
    if match != "component":
      return bool(getattr(r, match)(path))
    c = path.split("/")  # the whole of one component, or of a run of them
    runs = ("/".join(c[i:j]) for i in range(len(c)) for j in range(i + 1, len(c) + 1))
    return any(map(r.fullmatch, runs))

  def mask_fn(params: Any) -> Any:
    _check_params(params, name)
    paths = _paths(params)
    hits = [[test(r, p) for r in compiled] for p, _ in paths]
    # A pattern that matches only other partitions' leaves (MaskedNode) is not a typo.
    for j, r in enumerate(compiled):
      if paths and not any(h[j] for h in hits):
        masked = any(m for _, m in paths)
        note = (
          " Paths of other partitions (optax.MaskedNode) count as matches, but an optax.masked "
          "mask that is a prefix of the params (`{'backbone': False, ...}`) replaces a whole "
          "subtree with one MaskedNode and hides the paths below it; give optax.masked a "
          "per-leaf mask there, e.g. `masks.only_names('^head/')`."
        )
        raise ValueError(
          f"{what}: pattern {r.pattern!r} matches no parameter "
          f"(match={match!r} over '/'-joined paths). Parameter paths look like: "
          f"{_first_six([repr(p) for p, _ in paths])}.{note if masked else ''}"
        )
    values = [any(h) == keep_matches for h, (_, m) in zip(hits, paths) if not m]
    return jax.tree.unflatten(jax.tree.structure(params), values)

  mask_fn.__name__ = name
  mask_fn.by_name = True  # checked per pattern above, not by `resolve(nonempty=True)`
  return mask_fn


def exclude_names(*patterns: str, match: MatchMode = "search") -> Callable[[Any], Any]:
  """Mask that is False for parameters whose path matches any pattern; a pattern that
  matches no parameter raises ``ValueError`` naming it and a few real paths.

  Args:
    *patterns: regular expressions over '/'-joined paths.
    match: how a pattern is tested on a path such as ``encoder/block_1/b``:
      ``'search'`` anywhere in it (TF Model Garden's ``exclude_from_weight_decay``;
      ``'b'`` then also finds ``block_1``), ``'fullmatch'`` the whole path
      (big_vision), ``'component'`` the whole of one ``/``-separated component or
      of a run of them (``'b'`` finds only a component ``b``: a haiku bias).
  """
  return _name_mask(patterns, match, keep_matches=False, what="exclude_names")


def only_names(*patterns: str, match: MatchMode = "search") -> Callable[[Any], Any]:
  """Mask that is True only for parameters whose path matches some pattern (an unmatched
  pattern raises ``ValueError``, as in `exclude_names`).

  Args:
    *patterns: regular expressions over '/'-joined paths.
    match: ``'search'``, ``'fullmatch'`` or ``'component'``, as in `exclude_names`.
  """
  return _name_mask(patterns, match, keep_matches=True, what="only_names")


def min_ndim(n: int = 2) -> Callable[[Any], Any]:
  """Mask that is True for parameters with at least `n` dimensions: ``min_ndim(2)`` is
  the common "skip biases and normalisation scales" rule."""
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ValueError(f"`n` must be a non-negative int, got {n!r}.")

  def mask_fn(params: Any) -> Any:
    _check_params(params, mask_fn.__name__)
    return jax.tree.map(lambda x: np.ndim(x) >= n, params)

  mask_fn.__name__ = f"min_ndim({n})"
  return mask_fn


def _combine(masks: Sequence[Mask], op: Callable[[Sequence[bool]], bool], name: str):
  if not masks:
    raise ValueError(f"{name} needs at least one mask.")

  def mask_fn(params: Any) -> Any:
    _check_params(params, name)
    bits = [resolve(m, params, arg=name) for m in masks]
    return jax.tree.unflatten(jax.tree.structure(params), [op(b) for b in zip(*bits)])

  mask_fn.__name__ = name
  return mask_fn


def _check_selects(where: str, arg: str, mask: Any, tree: Any, bits: Sequence[bool]) -> None:
  """Raises if a callable mask selects no leaf of a whole params tree (a bug, as a name
  pattern that matches nothing); in an optax partition (MaskedNode present) it is legal."""
  paths = _paths(tree)
  if paths and not any(m for _, m in paths) and not any(bits):
    rule = getattr(mask, "__name__", type(mask).__name__)
    shapes = _first_six([f"{p!r} {np.shape(x)}" for (p, _), x in zip(paths, jax.tree.leaves(tree))])
    raise ValueError(
      f"{where}`{arg}` ({rule}) selects no parameter of this tree ({shapes}): every leaf "
      "would be left out. Check the rule, or pass False if you mean no leaf."
    )


def all_of(*masks: Mask) -> Callable[[Any], Any]:
  """Mask that is True where every given mask is True (e.g. name rule AND rank rule)."""
  return _combine(masks, all, "all_of")


def any_of(*masks: Mask) -> Callable[[Any], Any]:
  """Mask that is True where any given mask is True."""
  return _combine(masks, any, "any_of")


def resolve(
  mask: Mask, tree: Any, *, arg: str = "mask", owner: str = "", nonempty: bool = False
) -> list[bool]:
  """Resolves any accepted mask form against `tree`; one Python bool per leaf.

  Args:
    mask: None, a bool, a bool pytree (or prefix) or a callable returning one.
    tree: the params (or updates) the mask is for.
    arg: the argument name used in error messages.
    owner: the transformation whose argument it is, named first in error messages.
    nonempty: raise if a callable mask other than a name rule selects no leaf of a
      whole params tree (not an optax partition).
  """
  leaves, treedef = jax.tree.flatten(tree)
  where = f"{owner}: " if owner else ""
  if mask is None or isinstance(mask, (bool, np.bool_)):
    return [mask is None or bool(mask)] * len(leaves)
  if callable(mask):
    bits = resolve(mask(tree), tree, arg=arg, owner=owner)
    if nonempty and not getattr(mask, "by_name", False):
      _check_selects(where, arg, mask, tree, bits)
    return bits
  try:
    expanded = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{where}`{arg}` does not match the parameter tree: a mask must have the params' "
      f"structure, or be a prefix of it, with a Python bool at each leaf. "
      f"Mask structure: {jax.tree.structure(mask)}; params structure: {treedef}. ({e})"
    ) from None
  bits = jax.tree.leaves(expanded)
  for b in bits:
    if not isinstance(b, (bool, np.bool_)):
      raise TypeError(
        f"{where}`{arg}` must hold Python bools (static under jit), got {type(b).__name__} "
        f"{b!r}. Build masks from names, shapes and dtypes, not from values."
      )
  return [bool(b) for b in bits]  # one per leaf: each mask leaf filled its subtree
