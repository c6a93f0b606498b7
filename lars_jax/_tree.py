"""Tree helpers shared by the transforms: argument checks on trees, mesh axes, counts. All
run in Python at trace time on structure, shapes, dtypes and types, never on values."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from lars_jax import _checks, _numerics
from lars_jax import masks as masks_lib

AxisNames = Any  # None | str | tuple[str, ...] | PartitionSpec | pytree (prefix) of these


def leaf_path(tree: Any, i: int) -> str:
  """The '/'-joined path of leaf `i` of `tree`, for an error message."""
  return masks_lib.path_str(jax.tree_util.tree_flatten_with_path(tree)[0][i][0])


def leaves_like(
  name: str, updates: Any, tree: Any, what: str, label: str
) -> tuple[list[Any], list[Any], Any]:
  """(update leaves, leaves of `tree`, treedef): `tree` is the transform's argument or state
  `what`; raises ValueError if its structure differs or a leaf's shape does (a broadcastable
  one too: a (4, 1) gradient for a (4, 3) parameter is always a bug)."""
  u_leaves, treedef = jax.tree.flatten(updates)
  try:
    leaves = treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{name}: `{what}` does not have the structure of the updates. Updates: {treedef}; "
      f"{what}: {jax.tree.structure(tree)}. Pass {what} with the same tree structure as "
      f"the gradients. ({e})"
    ) from None
  for i, (u, r) in enumerate(zip(u_leaves, leaves)):
    if getattr(u, "shape", None) != getattr(r, "shape", None):
      raise ValueError(
        f"{name}: the update for {leaf_path(updates, i)!r} has shape {tuple(u.shape)} "
        f"but its {label} has shape {tuple(r.shape)}. Pass gradients computed for these "
        "parameters (same tree, same shapes)."
      )
  return u_leaves, leaves, treedef


def flat_update_args(
  name: str, updates: Any, params: Any, mask: masks_lib.Mask, arg: str = "mask"
) -> tuple[list[Any], list[Any], Any, list[bool]]:
  """What a masked, params-reading transform checks first in `update`: returns the update and
  param leaves, the treedef and `mask` (the factory's argument `arg`) resolved; raises if
  `params` is missing, does not match, holds non-float leaves or `mask` does not fit."""
  if params is None:
    raise ValueError(
      f"{name} needs the current parameters: call `tx.update(updates, state, params)`."
    )
  u_leaves, p_leaves, treedef = leaves_like(name, updates, params, "params", "parameter")
  _checks.check_float_leaves(name, params)
  return u_leaves, p_leaves, treedef, masks_lib.resolve(mask, params, arg=arg, owner=name)


def init_checks(
  name: str, params: Any, mask: masks_lib.Mask, arg: str, axis_name: AxisNames = None
) -> list[bool]:
  """What a masked, params-reading transform checks in `init`: float leaves, `mask` (the
  factory's argument `arg`; a rule that selects no leaf of a whole tree raises) and
  `axis_name`. Returns the resolved mask, [] on `optax.tree_map_params`' leafless
  placeholder."""
  _checks.check_float_leaves(name, params)
  if not jax.tree.leaves(params):
    return []
  bits = masks_lib.resolve(mask, params, arg=arg, owner=name, nonempty=True)
  leaf_axes(axis_name, params)
  return bits


def momentum_map(name: str, updates: Any, buffers: Any, step: Any) -> tuple[Any, Any]:
  """(outputs, new buffers) of a momentum transform: ``step(x, t) -> (out, new_t)`` per
  leaf, in the wide dtype of update and buffer, cast back to theirs; raises if the
  buffers do not match the updates."""
  x_leaves, t_leaves, treedef = leaves_like(
    name, updates, buffers, "state.trace", "momentum buffer"
  )
  out, new = [], []
  for x, t in zip(x_leaves, t_leaves):
    acc = jnp.promote_types(_numerics.wide_dtype(x.dtype), _numerics.wide_dtype(t.dtype))
    o, n = step(x.astype(acc), t.astype(acc))
    out.append(o.astype(x.dtype))
    new.append(n.astype(t.dtype))
  return treedef.unflatten(out), treedef.unflatten(new)


def _is_axis_leaf(x: Any) -> bool:
  return (
    x is None
    or isinstance(x, (str, PartitionSpec))
    or (isinstance(x, tuple) and len(x) > 0 and all(isinstance(a, str) for a in x))
  )


def _normalize_axes(a: Any) -> tuple[Hashable, ...]:
  """The mesh-axis names in an axis leaf (None, a name, a tuple of names, a PartitionSpec
  whose entries are None, a name or a tuple of names)."""
  entries = a if isinstance(a, (tuple, PartitionSpec)) else (a,)
  return tuple(
    x for e in entries for x in (e if isinstance(e, tuple) else (e,)) if isinstance(x, str)
  )


def leaf_axes(axis_name: AxisNames, tree: Any) -> list[tuple[Hashable, ...]]:
  """`axis_name` (a name, tuple, PartitionSpec or pytree prefix of them) as one tuple per
  leaf of `tree`: the mesh axes that leaf is split over (its squared norm is summed over)."""
  axes_leaves, axes_def = jax.tree.flatten(axis_name, is_leaf=_is_axis_leaf)
  try:
    subtrees = axes_def.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "`axis_name` must be a mesh-axis name, a tuple of names, a PartitionSpec, "
      "or a pytree of those with the params' structure (or a prefix of it). "
      f"Got structure {axes_def} for params {jax.tree.structure(tree)}. ({e})"
    ) from None
  out: list[tuple[Hashable, ...]] = []
  for a, sub in zip(axes_leaves, subtrees):
    out.extend([_normalize_axes(a)] * len(jax.tree.leaves(sub)))
  return out


def varying_axes(x: Any) -> frozenset[Hashable]:
  """The manual mesh axes `x` varies over under `shard_map` (empty where JAX's type
  says nothing: outside `shard_map`, or with ``check_vma=False``)."""
  typeof = getattr(jax, "typeof", None)
  if typeof is None or not isinstance(x, jax.core.Tracer):
    return frozenset()
  aval = typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9
  varying = getattr(manual, "varying", None) if manual is not None else getattr(aval, "vma", None)
  return frozenset(varying or ())


def _vma_typed(axis: Hashable) -> bool:
  """Whether JAX's types track variation over the bound mesh axis `axis` (`shard_map`
  with ``check_vma``, JAX's default): its `axis_index` then varies over it."""
  try:
    return axis in varying_axes(jax.lax.axis_index(axis))
  except Exception:  # not bound here (outside shard_map), or an older JAX
    return False


def checked_leaf_axes(
  name: str, axis_name: AxisNames, params: Any, idx: Sequence[int]
) -> list[tuple[Hashable, ...]]:
  """`leaf_axes` for the leaves `idx` whose norms `name` takes, checked against JAX's types:
  under `shard_map` (``check_vma``) a leaf that varies over an axis `axis_name` does not
  give it would get its slice's norm, and one given an axis it is replicated over would
  be counted once per device: both raise."""
  axes = leaf_axes(axis_name, params)
  p_leaves = jax.tree.leaves(params)
  typed = {ax: _vma_typed(ax) for i in idx for ax in axes[i]}
  for i in idx:
    varying = varying_axes(p_leaves[i])
    missing = varying - set(axes[i])
    if missing:
      ax = sorted(map(str, missing))
      raise ValueError(
        f"{name}: parameter {leaf_path(params, i)!r} varies over the mesh axis {ax} under "
        f"shard_map, but `axis_name` gives it {list(axes[i]) or 'no axis'}: its norm would be "
        f"the norm of this device's slice only. If the leaf is split over {ax}, pass "
        f"axis_name={ax[0]!r} (or the params' PartitionSpec tree); if it should be "
        "replicated, give it an in_spec without that axis (or pmean it)."
      )
    extra = [ax for ax in axes[i] if typed[ax] and ax not in varying]
    if extra:
      raise ValueError(
        f"{name}: parameter {leaf_path(params, i)!r} is replicated over the mesh axis "
        f"{extra} under shard_map, but `axis_name` gives it {list(axes[i])}: its squared norm "
        f"would be summed once per device over {extra}. Pass the params' PartitionSpec tree as "
        "`axis_name` (e.g. the in_specs of the params), so that each leaf names only the "
        "axes it is split over, and None for replicated leaves."
      )
  return [axes[i] for i in idx]


def count_state(counted: bool) -> optax.ScaleByScheduleState | optax.EmptyState:
  """The state of a transform that reads a schedule: a step count, or nothing."""
  if counted:
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))
  return optax.EmptyState()


def at_count(value: Any, state: Any) -> Any:
  """`value(state.count)` for a schedule, `value` itself otherwise."""
  return value(state.count) if callable(value) else value


def advance(state: Any) -> Any:
  """The count state one step later (unchanged if it holds no count)."""
  if isinstance(state, optax.ScaleByScheduleState):
    return optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return state
