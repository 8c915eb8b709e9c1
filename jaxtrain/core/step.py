"""The pure train and eval steps of one model (one population member).

No jit, donation or sharding here: callers apply those where they call the
step (the train loop jits it; the tuner vmaps it first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import errors, models
from jaxtrain.core import ema as ema_lib, lora, losses, metrics as metrics_lib, optim
from jaxtrain.core.state import TrainState


def _model_hparams(hparams: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The state's hyperparameters the model reads (`models.model_hparams`: dropout, a
  padded member's widths), and a padded LoRA member's rank and scale when it has them
  (core/lora.py)."""
  return {**models.model_hparams(hparams),
          **{k: hparams[k] for k in lora.HPARAMS if k in hparams}}


def train_step(model: models.Model, tx: optax.GradientTransformation,
               schedule: optax.Schedule, state: TrainState,
               batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on `batch`; returns (new state, per-step metrics).

  Metrics are means over the batch with `count` = 1, so accumulating them
  over steps and calling `metrics.compute` gives per-step averages.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  model_hparams = _model_hparams(state.hparams)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    logits, new_model_state = model.apply(variables, batch, rng, True, model_hparams)
    loss_B = losses.cross_entropy(logits, batch["labels"], state.hparams["label_smoothing"])
    return jnp.mean(loss_B), (logits, new_model_state)

  (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  mask = model.param_mask(model_hparams) if model.param_mask is not None else None
  if mask is not None:  # Padded parameters: no gradient, so no optimizer state either...
    grads = _masked(grads, mask)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if mask is not None:  # ...and no update (weight decay, Adam with eps=0).
    updates = _masked(updates, mask)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:  # train.ema_decay > 0
    new_ema = ema_lib.update(ema_params, params, state.hparams[ema_lib.KEY])
    applied = optim.update_applied(opt_state)
    # Once per optimizer update: with accumulation, the average moves every
    # accumulate_steps micro-steps, as it would with the k-times larger batch.
    ema_params = new_ema if applied is None else jax.tree.map(
        lambda n, o: jnp.where(applied, n, o), new_ema, ema_params)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32))
  learning_rate = (optim.get_hparams(state.opt_state)["learning_rate"]
                   * schedule(optim.update_count(state.opt_state)))
  step_metrics = {
      "loss": loss,
      "accuracy": accuracy,
      "grad_norm": optax.global_norm(grads),
      "update_norm": optax.global_norm(updates),
      "learning_rate": jnp.asarray(learning_rate, jnp.float32),
      "count": jnp.ones((), jnp.float32),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state={**state.model_state, **new_model_state},
                            opt_state=opt_state, ema_params=ema_params)
  return new_state, step_metrics


def _masked(tree, mask):
  """`tree` with the entries where `mask` is False set to exactly zero (a `where`, not a
  product: a NaN or Inf there does not leak through)."""
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, mask)


def predict(model: models.Model, state: TrainState, inputs: jax.Array) -> jax.Array:
  """The model's logits for `inputs` in eval mode (no dropout, batch statistics frozen)."""
  variables = {"params": state.params, **state.model_state}
  model_hparams = _model_hparams(state.hparams)
  return model.apply(variables, {"inputs": inputs}, state.rng, False, model_hparams)[0]


def eval_step(model: models.Model, state: TrainState,
              batch: dict[str, jax.Array], calibration_bins: int = 0) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the batch's unmasked examples; with
  `calibration_bins` > 0 also the confidence-bin sums of ECE under "calibration"
  ({bin_count, bin_correct, bin_confidence}, as `classification_report_sums`)."""
  variables = {"params": state.params, **state.model_state}
  model_hparams = _model_hparams(state.hparams)
  logits, _ = model.apply(variables, batch, state.rng, False, model_hparams)
  labels, mask = batch["labels"], batch.get("mask")
  per_token = labels.ndim > 1  # Language modelling: logits [B, T, V], labels [B, T].
  if per_token:  # Every unmasked token counts as one example in the sums.
    if mask is not None:
      mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)),
                              labels.shape).reshape(-1)
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
  loss_B = losses.cross_entropy(logits, labels)  # No smoothing at eval.
  sums = metrics_lib.classification_sums(logits, labels, loss_B, mask)
  if per_token:  # Mean loss in bits (log base 2) per token: bits per character.
    sums["bits_per_char"] = sums["loss"] / jnp.log(2.0)
  if calibration_bins:
    report = metrics_lib.classification_report_sums(logits, labels, mask,
                                                    num_bins=calibration_bins)
    sums["calibration"] = {k: report[k] for k in ("bin_count", "bin_correct", "bin_confidence")}
  return sums


def accumulate_train_step(model, tx, schedule, state, acc, batch):
  """`train_step` whose metrics are folded into the running sums `acc`."""
  state, step_metrics = train_step(model, tx, schedule, state, batch)
  return state, metrics_lib.merge(acc, step_metrics)


def guarded_train_step(model, tx, schedule, policy, state, acc, guard, batch):
  """`accumulate_train_step` with non-finite steps handled by `guard_nonfinite`."""
  new_state, step_metrics = train_step(model, tx, schedule, state, batch)
  new_state, step_metrics, guard = guard_nonfinite(policy, state, new_state, step_metrics, guard)
  return new_state, metrics_lib.merge(acc, step_metrics), guard


NAN_POLICIES = ("stop", "skip", "none")


def check_config(train_config) -> None:
  """Raises `UserError` for a bad `train.nan_policy` or `train.max_consecutive_skips`."""
  if train_config.nan_policy not in NAN_POLICIES:
    raise errors.unknown_choice("train.nan_policy", train_config.nan_policy, NAN_POLICIES)
  if train_config.max_consecutive_skips <= 0:
    raise errors.UserError(
        f"train.max_consecutive_skips={train_config.max_consecutive_skips} must be > 0")


def new_guard() -> dict[str, np.ndarray]:
  """Counters of non-finite steps (see `guard_nonfinite`), as host arrays."""
  return {"skipped": np.zeros((), np.int32), "streak": np.zeros((), np.int32),
          "first_nonfinite_step": np.full((), -1, np.int32)}


def guard_nonfinite(policy: str, old: TrainState, new: TrainState,
                    step_metrics: dict[str, jax.Array], guard: dict[str, jax.Array]):
  """Keeps non-finite updates out of the state; returns (state, metrics, guard).

  A step whose loss, gradient norm or update norm is NaN/Inf is not applied (the state keeps
  its parameters, optimizer and model state; only `step` advances, so the data
  order stays that of an uninterrupted run) and its metrics are not counted.
  With policy "stop", every step after the first non-finite one is skipped too
  (the loop stops when it sees `first_nonfinite_step`); with "skip", training
  goes on and `streak` counts consecutive skips. "none" applies every update.
  """
  if policy == "none":
    return new, step_metrics, guard
  # One fused test: x * 0 is NaN exactly when x is NaN or +-Inf, so the sum is
  # finite iff all three are (the same steps as three isfinite checks, one op).
  finite = jnp.isfinite(step_metrics["loss"] * 0 + step_metrics["grad_norm"] * 0
                        + step_metrics["update_norm"] * 0)
  apply = finite
  if policy == "stop":
    apply = finite & (guard["first_nonfinite_step"] < 0)
  state = jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old).replace(step=new.step)
  metrics = {k: jnp.where(apply, v, jnp.zeros_like(v)) for k, v in step_metrics.items()}
  first = guard["first_nonfinite_step"]
  guard = {
      "skipped": guard["skipped"] + (~apply).astype(jnp.int32),
      "streak": jnp.where(finite, 0, guard["streak"] + 1).astype(jnp.int32),
      "first_nonfinite_step": jnp.where((first < 0) & ~finite, old.step, first).astype(jnp.int32),
  }
  return state, metrics, guard
