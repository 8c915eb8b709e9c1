"""The larger built-in architectures: ResNet, ViT and the Transformer language model.

Config checks and typed-config construction for them, kept out of
`models/__init__.py` so that file stays a short registry. Every field read
here is a `config.model` key (see jaxtrain/config.py), so a tuner can search
it; all of them change shapes, so they are static settings (one compiled
program per distinct value).
"""

from __future__ import annotations

from jaxtrain import errors
from jaxtrain.models import resnet, transformer, vit

NAMES = ("resnet", "vit", "transformer")
# Models whose outputs are per token ([B, T, C]); the rest output [B, C].
TOKEN_MODELS = ("transformer",)


def check_config(model_config) -> None:
  """Raises `UserError` for a bad ResNet / ViT / Transformer field (any model name)."""
  if model_config.resnet_depth not in resnet.STAGES:
    raise errors.UserError(
        f"model.resnet_depth={model_config.resnet_depth!r} is not a ResNet depth; choose one "
        f"of: {', '.join(map(str, resnet.STAGES))} (10 is the tiny test variant)")
  if model_config.resnet_stem not in resnet.STEMS:
    raise errors.unknown_choice("model.resnet_stem", model_config.resnet_stem, resnet.STEMS)
  if model_config.pooling not in vit.POOLINGS:
    raise errors.unknown_choice("model.pooling", model_config.pooling, vit.POOLINGS)
  if model_config.positions not in transformer.POSITIONS:
    raise errors.unknown_choice("model.positions", model_config.positions,
                                transformer.POSITIONS)
  for key in ("resnet_width", "width", "depth", "num_heads", "patch_size", "mlp_ratio"):
    if model_config[key] <= 0:
      raise errors.UserError(f"model.{key}={model_config[key]!r} must be > 0")
  if model_config.name in ("vit", "transformer"):
    width, heads = model_config.width, model_config.num_heads
    if width % heads:
      raise errors.UserError(
          f"model.num_heads={heads} must divide model.width={width}; "
          f"e.g. model.num_heads={_divisor_near(width, heads)}")
    if (model_config.name == "transformer" and model_config.positions == "rotary"
        and (width // heads) % 2):
      raise errors.UserError(
          f"model.positions='rotary' needs an even head size, but model.width={width} / "
          f"model.num_heads={heads} = {width // heads}; change either")


def _divisor_near(n: int, k: int) -> int:
  return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))


def check_for_data(model_config, input_shape: tuple[int, ...],
                   label_shape: tuple[int, ...] | None = None) -> None:
  """Raises `UserError` when the model cannot take this dataset's inputs or labels.

  Call it before anything is compiled: per-token labels need a token model (and
  the reverse), images need (H, W[, C]) inputs that the ViT patch size divides,
  the language model needs token sequences (T,). `label_shape` None: not checked.
  """
  name = model_config.name
  if label_shape and name not in TOKEN_MODELS:
    raise errors.UserError(
        f"model.name={name!r} predicts one label per example, but the dataset has a label "
        f"per token (shape {label_shape}); use model.name='transformer'")
  if name not in NAMES:
    return
  if label_shape == () and name in TOKEN_MODELS:
    raise errors.UserError(
        f"model.name={name!r} predicts a label per token, but the dataset has one label per "
        "example; use a token dataset such as data.name='charlm'")
  if name in ("resnet", "vit") and len(input_shape) not in (2, 3):
    raise errors.UserError(
        f"model.name={name!r} needs image inputs of shape (H, W) or (H, W, C); got "
        f"{input_shape}; use model.name='cnn' (or 'gru'/'lstm') for 1D signals")
  if name == "vit":
    height, width = input_shape[:2]
    if height % model_config.patch_size or width % model_config.patch_size:
      raise errors.UserError(
          f"model.patch_size={model_config.patch_size} must divide the image size "
          f"{height}x{width}")
  if name == "transformer" and len(input_shape) != 1:
    raise errors.UserError(
        f"model.name='transformer' needs token sequences of shape (T,); got {input_shape}; "
        "use a token dataset such as data.name='charlm'")


def build(model_config, num_classes: int, input_shape: tuple[int, ...], common: dict):
  """The Flax module for a zoo model; `common` holds the shared typed-config fields
  (activation, dropout, dtype, remat) that `models.build` computed."""
  c = model_config
  shared = dict(num_classes=num_classes, activation=common["activation"],
                dropout=common["dropout"], dtype=common["dtype"], remat=common["remat"])
  name = c.name
  check_for_data(c, input_shape)
  if name == "resnet":
    stem = resnet.stem_for(input_shape) if c.resnet_stem == "auto" else c.resnet_stem
    return resnet.ResNet(resnet.ResNetConfig(
        depth=c.resnet_depth, width=c.resnet_width, stem=stem, **shared))
  if name == "vit":
    return vit.ViT(vit.ViTConfig(
        patch_size=c.patch_size, width=c.width, depth=c.depth, num_heads=c.num_heads,
        mlp_ratio=float(c.mlp_ratio), pooling=c.pooling, **shared))
  return transformer.TransformerLM(transformer.TransformerConfig(
      max_len=input_shape[0], width=c.width, depth=c.depth, num_heads=c.num_heads,
      mlp_ratio=float(c.mlp_ratio), positions=c.positions, **shared))
