"""Vision Transformer classifier (Dosovitskiy et al. 2021) for small images.

Non-overlapping patches (a strided convolution) -> a class token or none ->
learned position embeddings -> pre-LayerNorm transformer blocks (shared with the
language model, without the causal mask) -> final LayerNorm -> the class
token's features or the mean over patches -> Dense head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models import layers, transformer

POOLINGS = ("cls", "mean")

# Published sizes (ViT-Ti/S from "How to train your ViT", Steiner et al. 2021),
# and a one-block variant for tests. Config files copy these into config.model.
PRESETS = {
    "tiny": dict(width=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "small": dict(width=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "test": dict(width=32, depth=1, num_heads=2, mlp_ratio=2.0),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  num_classes: int
  patch_size: int = 4
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  pooling: str = "cls"  # cls | mean
  activation: str = "gelu"
  dropout: bool = False
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.


class ViT(nn.Module):
  """Images [B, H, W(, C)] -> logits [B, num_classes]."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array = 0.0) -> jax.Array:
    cfg = self.config
    if x.ndim == 3:  # (B, H, W): add the channel axis.
      x = x[..., None]
    p = cfg.patch_size
    x = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", dtype=cfg.dtype,
                name="patch_embed")(x.astype(cfg.dtype))
    batch, rows, cols, width = x.shape
    x_BxTxD = x.reshape(batch, rows * cols, width)
    if cfg.pooling == "cls":
      cls_1x1xD = self.param("cls_token", nn.initializers.zeros, (1, 1, width))
      x_BxTxD = jnp.concatenate(
          [jnp.broadcast_to(cls_1x1xD.astype(cfg.dtype), (batch, 1, width)), x_BxTxD], axis=1)
    positions_TxD = self.param("position_embed", nn.initializers.normal(stddev=0.02),
                               x_BxTxD.shape[1:])
    x_BxTxD = x_BxTxD + positions_TxD[None].astype(cfg.dtype)
    if cfg.dropout:
      x_BxTxD = layers.Dropout()(x_BxTxD, dropout_rate, train=train)
    x_BxTxD = transformer.blocks(x_BxTxD, dropout_rate, depth=cfg.depth, causal=False,
                                 rotary_positions=False, config=cfg, train=train)
    x_BxTxD = nn.LayerNorm(dtype=cfg.dtype, name="final_norm")(x_BxTxD)
    x_BxD = x_BxTxD[:, 0] if cfg.pooling == "cls" else jnp.mean(x_BxTxD, axis=1)
    # A zero-initialized head, as in the ViT paper: training starts from uniform predictions.
    return nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros, dtype=cfg.dtype,
                    name="head")(x_BxD).astype(jnp.float32)
