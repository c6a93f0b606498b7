"""Orbax checkpoints of a training state that fail loudly instead of silently.

A thin layer over `orbax.checkpoint.CheckpointManager` (``pip install
lars_jax[checkpoint]``) for the params + optimizer state of a run (a Flax
``TrainState``, an NNX ``nnx.state((model, optimizer))``, or any pytree of arrays):

* `manager` makes a `CheckpointManager` that keeps the last ``max_to_keep`` steps and
  can read them back in a fresh process.
* `save` writes the state and, next to it in the same step, a manifest with every
  leaf's path, shape, dtype and CRC-32 checksum. It refuses to overwrite a step.
* `restore` reads a step into the structure of a ``target`` (e.g. a freshly initialised
  state). It checks the manifest against the target *before* reading any array and
  raises ``ValueError`` naming each mismatched path (a different model shape, a
  different optimizer or schedule), and verifies the checksums after reading:
  orbax alone restores a checkpoint with a flipped byte in its data without complaint.
  An unreadable step raises ``ValueError`` listing the steps still on disk.

Orbax writes each step to a temporary directory and renames it on success, and
deletes old steps only after a newer one is committed, so a failed save, a failed
restore or a corrupted step never removes an earlier step: restore it with
``step=``.

Checksums need each array on the host (``jax.device_get``); leaves that are not fully
addressable by this process (multi-host sharding) are saved without one.

Example:
  >>> import tempfile, jax.numpy as jnp, lars_jax
  >>> from lars_jax import checkpoint
  >>> params = {'w': jnp.ones((2, 3))}
  >>> tx = lars_jax.lars(0.1)
  >>> state = {'params': params, 'opt_state': tx.init(params)}
  >>> mngr = checkpoint.manager(tempfile.mkdtemp(), max_to_keep=2)
  >>> checkpoint.save(mngr, 10, state)
  True
  >>> restored = checkpoint.restore(mngr, state)  # latest step; target gives the structure
  >>> mngr.all_steps(), restored['params']['w'].shape
  ([10], (2, 3))
  >>> bigger = {'params': {'w': jnp.ones((4, 3))}}
  >>> bigger['opt_state'] = tx.init(bigger['params'])
  >>> try:
  ...   checkpoint.restore(mngr, bigger)
  ... except ValueError as e:
  ...   print(e)  # doctest: +ELLIPSIS
  checkpoint step 10 in ... does not match `target`: opt_state/3/trace/w: shape (2, 3) in
  the checkpoint, (4, 3) in target; params/w: shape (2, 3) in the checkpoint, (4, 3) in
  target. Build the target with the same model and optimizer configuration ...
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lars_jax import masks as masks_lib

__all__ = ["manager", "restore", "save"]

_STATE, _MANIFEST = "state", "manifest"
_FORMAT = "lars_jax.checkpoint/1"
_MAX_LISTED = 8


def manager(
  directory: str | os.PathLike[str],
  *,
  max_to_keep: int | None = 3,
  **options: Any,
) -> ocp.CheckpointManager:
  """A `CheckpointManager` for `save` and `restore`, usable from a fresh process.

  Args:
    directory: where steps are stored (created if missing); a local path or a URL
      orbax understands, such as ``gs://bucket/run1``.
    max_to_keep: how many of the newest steps to keep (None: all). Keep at least 2,
      so that a step corrupted on disk after its save still leaves an earlier one.
    **options: more `orbax.checkpoint.CheckpointManagerOptions` fields, e.g.
      ``save_interval_steps`` or ``enable_async_checkpointing``.

  Returns:
    An `orbax.checkpoint.CheckpointManager` (close it, or use it as a context manager).
  """
  if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
    raise ValueError(f"`max_to_keep` must be a positive int or None, got {max_to_keep!r}.")
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, **options)
  directory = os.fspath(directory)
  if "://" not in directory:  # keep gs://... and other remote paths as given
    directory = os.path.abspath(directory)
  return ocp.CheckpointManager(
    directory,
    options=opts,
    item_names=(_STATE, _MANIFEST),
    item_handlers={
      _STATE: ocp.StandardCheckpointHandler(),
      _MANIFEST: ocp.JsonCheckpointHandler(),
    },
  )


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  state: Any,
  *,
  force: bool = False,
  wait: bool = True,
) -> bool:
  """Saves `state` (a pytree of arrays) as `step`, with a checksum manifest.

  Args:
    mngr: from `manager`.
    step: the step number; a step that is already saved is never overwritten.
    state: e.g. a Flax ``TrainState`` or ``{'params': ..., 'opt_state': ...}``. Its
      leaves must be arrays or numbers (static fields of a ``flax.struct`` dataclass,
      such as ``apply_fn`` and ``tx``, are not leaves and are not saved).
    force: save even if the manager's ``save_interval_steps`` policy would skip it.
    wait: block until the step is committed to disk (with async checkpointing off,
      the default, `save` blocks anyway).

  Returns:
    Whether a checkpoint was written (False when the save policy skipped the step).
  """
  if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
    raise ValueError(f"`step` must be a non-negative int, got {step!r}.")
  step = int(step)
  if step in mngr.all_steps():
    raise ValueError(
      f"step {step} is already saved in {mngr.directory}; nothing was written. Save under "
      f"a new step number, or delete the old one first with `mngr.delete({step})`."
    )
  paths, leaves = _paths_and_leaves(state, "state")
  for path, x in zip(paths, leaves):
    if not hasattr(x, "shape") and not isinstance(x, (int, float, complex, np.number)):
      raise TypeError(
        f"`state` leaf {path!r} is a {type(x).__name__}, not an array; only arrays and "
        "numbers can be saved. Keep other objects out of the saved tree (e.g. as static "
        "fields of a flax.struct dataclass)."
      )
  manifest = {
    "format": _FORMAT,
    "leaves": {p: _describe(x, with_checksum=True) for p, x in zip(paths, leaves)},
  }
  saved = mngr.save(
    step,
    args=ocp.args.Composite(
      **{_STATE: ocp.args.StandardSave(state), _MANIFEST: ocp.args.JsonSave(manifest)}
    ),
    force=force,
  )
  if wait:
    mngr.wait_until_finished()
  return bool(saved)


def restore(mngr: ocp.CheckpointManager, target: Any, step: int | None = None) -> Any:
  """Restores a step saved by `save` into the structure of `target`.

  Args:
    mngr: from `manager`.
    target: a pytree with the structure, shapes and dtypes of the saved state: the
      state as initialised at the start of a run (arrays or ``jax.ShapeDtypeStruct``;
      their shardings are used to place the restored arrays). Non-array parts of it
      (``TrainState.apply_fn``, ``tx``) are kept.
    step: which step; defaults to the newest.

  Returns:
    The restored state, with the tree structure of `target`.

  Raises:
    FileNotFoundError: no such step in the directory.
    ValueError: the checkpoint does not match `target` (each mismatched path is
      named), or the step is incomplete or corrupted (earlier steps are listed).
  """
  steps = list(mngr.all_steps())
  if step is None:
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {mngr.directory}: `save` one first.")
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(
      f"no checkpoint step {step} in {mngr.directory}; the steps there are {steps}."
    )
  where = f"checkpoint step {step} in {mngr.directory}"
  others = sorted((s for s in steps if s != step), reverse=True)
  fallback = (
    f" The other steps saved there ({others}) are untouched: restore one with `step=`."
    if others
    else ""
  )

  try:
    manifest = mngr.restore(step, args=ocp.args.Composite(**{_MANIFEST: ocp.args.JsonRestore()}))[
      _MANIFEST
    ]
  except Exception as e:  # noqa: BLE001 (orbax raises many types; we say what happened)
    raise ValueError(
      f"{where} has no readable manifest: it is incomplete or corrupted, or was not "
      f"written by lars_jax.checkpoint.save ({_first_line(e)}).{fallback}"
    ) from e
  if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
    raise ValueError(f"{where}: unknown manifest format {manifest!r:.200}.{fallback}")
  saved = manifest["leaves"]

  paths, leaves = _paths_and_leaves(target, "target")
  wanted = {p: _describe(x, with_checksum=False) for p, x in zip(paths, leaves)}
  problems = [f"{p}: in target but not in the checkpoint" for p in wanted if p not in saved]
  problems += [f"{p}: in the checkpoint but not in target" for p in saved if p not in wanted]
  for p, want in wanted.items():
    have = saved.get(p)
    if have is None:
      continue
    for field in ("shape", "dtype"):
      if have[field] != want[field]:
        problems.append(
          f"{p}: {field} {_fmt(have[field])} in the checkpoint, {_fmt(want[field])} in target"
        )
  if problems:
    listed = "; ".join(problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise ValueError(
      f"{where} does not match `target`: {listed}{more}. Build the target with the "
      "same model and optimizer configuration as the run that saved it (a different "
      "layer size, optimizer, schedule or momentum setting changes the state)."
    )

  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_arrays(target))
  try:
    restored = mngr.restore(
      step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
    )[_STATE]
  except Exception as e:  # noqa: BLE001
    raise ValueError(
      f"{where} could not be read: its files are incomplete or corrupted "
      f"({_first_line(e)}).{fallback}"
    ) from e

  r_paths, r_leaves = _paths_and_leaves(restored, "restored state")
  by_path = dict(zip(r_paths, r_leaves))
  bad = [
    p
    for p in paths
    if saved[p].get("crc32") is not None
    and _describe(by_path[p], with_checksum=True)["crc32"] != saved[p]["crc32"]
  ]
  if bad:
    raise ValueError(
      f"{where} is corrupted: the data of {', '.join(bad[:_MAX_LISTED])} does not match "
      f"the checksum recorded when it was saved.{fallback}"
    )
  treedef = jax.tree.structure(target)
  return jax.tree.unflatten(treedef, [by_path[p] for p in paths])


# ----------------------------------------------------------------------------


def _paths_and_leaves(tree: Any, what: str) -> tuple[list[str], list[Any]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [masks_lib.path_str(p) for p, _ in flat]
  if len(set(paths)) != len(paths):
    dup = next(p for p in paths if paths.count(p) > 1)
    raise ValueError(f"`{what}` has two leaves with the path {dup!r}; paths must be unique.")
  return paths, [x for _, x in flat]


def _as_arrays(tree: Any) -> Any:
  """Python numbers (``TrainState.step`` starts as the int 0) become NumPy scalars of
  JAX's default dtype, so that they compare and restore like the saved arrays."""
  return jax.tree.map(
    lambda x: (
      x if hasattr(x, "shape") else np.asarray(x, jax.dtypes.canonicalize_dtype(np.result_type(x)))
    ),
    tree,
  )


def _describe(x: Any, *, with_checksum: bool) -> dict[str, Any]:
  if not hasattr(x, "shape"):
    x = np.asarray(x, jax.dtypes.canonicalize_dtype(np.result_type(x)))
  out: dict[str, Any] = {"shape": list(x.shape), "dtype": np.dtype(x.dtype).name}
  if with_checksum:
    addressable = getattr(x, "is_fully_addressable", True)
    out["crc32"] = (
      zlib.crc32(np.ascontiguousarray(jax.device_get(x)).tobytes()) if addressable else None
    )
  return out


def _fmt(value: Any) -> str:
  return str(tuple(value)) if isinstance(value, list) else str(value)


def _first_line(e: BaseException) -> str:
  """The gist of an orbax/TensorStore error: its first line, without the TensorStore
  spec dump, plus the array it was reading if the spec names one."""
  text = str(e).strip()
  line = (text.splitlines() or [""])[0].split(" See full TensorStore details")[0]
  arrays = re.findall(r"'path': '([^'/][^']*)/'", text)
  array = f" (array {arrays[-1]!r})" if arrays else ""
  return f"{type(e).__name__}: {line[:300]}{array}"
