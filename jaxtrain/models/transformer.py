"""Pre-LayerNorm transformer blocks and a decoder-only (causal) character language model.

`TransformerBlock` is shared with the ViT (`vit.py`, non-causal). Attention is
`jax.nn.dot_product_attention` (the library kernel; `is_causal` masks the
future); the projections are plain `Dense` layers named query/key/value/out,
so LoRA and freezing regexes can address them. Positions are either a learned
table added to the token embeddings or rotary embeddings (RoPE, Su et al.
2021) applied to queries and keys. Dropout (after the embeddings and on each
residual branch) takes its rate as an array, like every built-in model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain import errors
from jaxtrain.models import layers

POSITIONS = ("learned", "rotary")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  num_classes: int  # Vocabulary size: the model predicts the next token.
  max_len: int  # Sequence length the learned position table covers.
  width: int = 128  # Model (embedding) dimension.
  depth: int = 2  # Number of transformer blocks.
  num_heads: int = 4
  mlp_ratio: float = 4.0  # Hidden width of each block's MLP = mlp_ratio * width.
  positions: str = "learned"  # learned | rotary
  activation: str = "gelu"
  dropout: bool = False
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.


def rotary(x_BxTxNxH: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotates feature pairs (i, i + H/2) of every head by position-dependent angles.

  The dot product of a rotated query at position m and key at position n then
  depends on m - n only. Written out because neither jax nor flax.linen ships
  it (it is a few lines).
  """
  _, length, _, head_dim = x_BxTxNxH.shape
  half = head_dim // 2
  freqs_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_TxF = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs_F[None, :]
  sin = jnp.sin(angles_TxF)[None, :, None, :]
  cos = jnp.cos(angles_TxF)[None, :, None, :]
  x1, x2 = x_BxTxNxH[..., :half].astype(jnp.float32), x_BxTxNxH[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention (optionally causal, optionally rotary)."""
  num_heads: int
  causal: bool
  rotary: bool
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    batch, length, width = x_BxTxD.shape
    head_dim = width // self.num_heads

    def project(name):
      y = nn.Dense(width, dtype=self.dtype, name=name)(x_BxTxD)
      return y.reshape(batch, length, self.num_heads, head_dim)

    q, k, v = project("query"), project("key"), project("value")
    if self.rotary:
      q, k = rotary(q), rotary(k)
    out_BxTxNxH = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return nn.Dense(width, dtype=self.dtype, name="out")(
        out_BxTxNxH.reshape(batch, length, width))


class TransformerBlock(nn.Module):
  """x + Attention(LN(x)), then x + MLP(LN(x)); dropout on both residual branches."""
  num_heads: int
  mlp_dim: int
  activation: str
  causal: bool
  rotary: bool
  dropout: bool
  train: bool
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, dropout_rate: jax.Array) -> jax.Array:
    act = layers.ACTIVATIONS[self.activation]

    def drop(y):
      return layers.Dropout()(y, dropout_rate, train=self.train) if self.dropout else y

    y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x_BxTxD)
    y = SelfAttention(self.num_heads, self.causal, self.rotary, self.dtype, name="attention")(y)
    x_BxTxD = x_BxTxD + drop(y)
    y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x_BxTxD)
    y = act(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y))
    y = nn.Dense(x_BxTxD.shape[-1], dtype=self.dtype, name="mlp_out")(y)
    return x_BxTxD + drop(y)


def blocks(x_BxTxD: jax.Array, dropout_rate: jax.Array, *, depth: int, causal: bool,
           rotary_positions: bool, config, train: bool) -> jax.Array:
  """`depth` blocks named block1.. (remat'ed when `config.remat`); call in a compact method."""
  # nn.remat on the class: `train` is a module field, `dropout_rate` a traced array.
  block_cls = nn.remat(TransformerBlock) if config.remat else TransformerBlock
  for i in range(depth):
    x_BxTxD = block_cls(
        num_heads=config.num_heads, mlp_dim=int(round(config.mlp_ratio * config.width)),
        activation=config.activation, causal=causal, rotary=rotary_positions,
        dropout=config.dropout, train=train, dtype=config.dtype,
        name=f"block{i + 1}")(x_BxTxD, dropout_rate)
  return x_BxTxD


class TransformerLM(nn.Module):
  """Tokens [B, T] -> next-token logits [B, T, vocab]; position t sees tokens <= t only."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, *, train: bool,
               dropout_rate: jax.Array = 0.0) -> jax.Array:
    cfg = self.config
    if not jnp.issubdtype(tokens_BxT.dtype, jnp.integer):
      raise errors.UserError(
          f"model.name='transformer' needs integer token inputs, got {tokens_BxT.dtype}; "
          "use a token dataset such as data.name='charlm'")
    length = tokens_BxT.shape[1]
    init = nn.initializers.normal(stddev=0.02)
    x_BxTxD = nn.Embed(cfg.num_classes, cfg.width, embedding_init=init, dtype=cfg.dtype,
                       name="embed")(tokens_BxT)
    if cfg.positions == "learned":
      positions_TxD = self.param("position_embed", init, (cfg.max_len, cfg.width))
      x_BxTxD = x_BxTxD + positions_TxD[None, :length].astype(cfg.dtype)
    if cfg.dropout:
      x_BxTxD = layers.Dropout()(x_BxTxD, dropout_rate, train=train)
    x_BxTxD = blocks(x_BxTxD, dropout_rate, depth=cfg.depth, causal=True,
                     rotary_positions=cfg.positions == "rotary", config=cfg, train=train)
    x_BxTxD = nn.LayerNorm(dtype=cfg.dtype, name="final_norm")(x_BxTxD)
    return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="head")(x_BxTxD).astype(jnp.float32)
