"""Model-shaped parameter trees for the benchmarks and memory tests.

Shapes only (no model code): the trees have the exact leaf shapes of the named
architectures, in flax conventions (conv kernels HWIO, dense kernels (in, out)),
so an optimizer step on them moves the same bytes as on the real model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Shapes = dict[str, Any]  # nested dict of tuples


def resnet50_shapes(num_classes: int = 1000, base_width: int = 64) -> Shapes:
  """ResNet-50 (v1.5, torchvision layout): 25,557,032 params in 161 leaves.

  `base_width` < 64 gives the same 161 leaves, narrower (for fast tests).
  """
  b0 = base_width
  tree: Shapes = {"conv1": {"kernel": (7, 7, 3, b0)}, "bn1": {"scale": (b0,), "bias": (b0,)}}
  cin = b0
  widths = (b0, 2 * b0, 4 * b0, 8 * b0)
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), widths)):
    for b in range(blocks):
      blk: Shapes = {
        "conv1": {"kernel": (1, 1, cin, width)},
        "bn1": {"scale": (width,), "bias": (width,)},
        "conv2": {"kernel": (3, 3, width, width)},
        "bn2": {"scale": (width,), "bias": (width,)},
        "conv3": {"kernel": (1, 1, width, 4 * width)},
        "bn3": {"scale": (4 * width,), "bias": (4 * width,)},
      }
      if b == 0:
        blk["downsample"] = {
          "conv": {"kernel": (1, 1, cin, 4 * width)},
          "bn": {"scale": (4 * width,), "bias": (4 * width,)},
        }
      tree[f"layer{stage + 1}_{b}"] = blk
      cin = 4 * width
  tree["fc"] = {"kernel": (cin, num_classes), "bias": (num_classes,)}
  return tree


def transformer_block(d: int, heads: int, mlp: int) -> Shapes:
  """One pre-norm transformer block (flax layout): layer norms, head-split attention, MLP."""
  hd = d // heads
  return {
    "ln1": {"scale": (d,), "bias": (d,)},
    "attn": {
      "query": {"kernel": (d, heads, hd), "bias": (heads, hd)},
      "key": {"kernel": (d, heads, hd), "bias": (heads, hd)},
      "value": {"kernel": (d, heads, hd), "bias": (heads, hd)},
      "out": {"kernel": (heads, hd, d), "bias": (d,)},
    },
    "ln2": {"scale": (d,), "bias": (d,)},
    "mlp": {"fc1": {"kernel": (d, mlp), "bias": (mlp,)}, "fc2": {"kernel": (mlp, d), "bias": (d,)}},
  }


def vit_b16_shapes(num_classes: int = 1000, image: int = 224, patch: int = 16) -> Shapes:
  """ViT-B/16 (flax/big_vision layout): 86,567,656 params in 200 leaves."""
  d, mlp, heads, depth = 768, 3072, 12, 12
  tokens = (image // patch) ** 2 + 1
  tree: Shapes = {
    "embedding": {"kernel": (patch, patch, 3, d), "bias": (d,)},
    "cls": (1, 1, d),
    "pos_embedding": (1, tokens, d),
  }
  for i in range(depth):
    tree[f"encoderblock_{i}"] = transformer_block(d, heads, mlp)
  tree["encoder_norm"] = {"scale": (d,), "bias": (d,)}
  tree["head"] = {"kernel": (d, num_classes), "bias": (num_classes,)}
  return tree


def many_leaves_shapes(n_layers: int = 500, width: int = 64) -> Shapes:
  """An MLP-like tree with many small leaves: n_layers x (kernel, bias, scale)."""
  return {
    f"layer{i}": {"kernel": (width, width), "bias": (width,), "scale": (width,)}
    for i in range(n_layers)
  }


def flat_shapes(n_params: int, n_leaves: int) -> Shapes:
  """`n_leaves` 2-D leaves of about equal size, `n_params` elements in total."""
  per = max(1, n_params // n_leaves)
  cols = 256 if per >= 256 else per
  rows = max(1, per // cols)
  return {f"w{i:05d}": (rows, cols) for i in range(n_leaves)}


def is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def n_params(shapes: Shapes) -> int:
  return int(sum(np.prod(s) for s in jax.tree.leaves(shapes, is_leaf=is_shape)))


def n_leaves(shapes: Shapes) -> int:
  return len(jax.tree.leaves(shapes, is_leaf=is_shape))


def materialize(shapes: Shapes, seed: int = 0, dtype: Any = jnp.float32, scale: float = 0.05):
  """Random arrays with the given shapes (normal * scale; 1-D leaves get ones + noise)."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_shape)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  out = []
  for k, s in zip(keys, leaves):
    x = scale * jax.random.normal(k, s, dtype)
    if len(s) == 1:
      x = x + 1.0
    out.append(x)
  return treedef.unflatten(out)


TREES = {
  "resnet50": resnet50_shapes,
  "vit_b16": vit_b16_shapes,
  "many_leaves": many_leaves_shapes,
}
