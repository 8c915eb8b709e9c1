"""The pure train and eval steps of one model (one population member).

No jit, donation or sharding here: callers apply those where they call the
step (the train loop jits it; the tuner vmaps it first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxtrain import losses, metrics as metrics_lib, models, optim
from jaxtrain.state import TrainState


def train_step(model: models.Model, tx: optax.GradientTransformation,
               schedule: optax.Schedule, state: TrainState,
               batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on `batch`; returns (new state, per-step metrics).

  Metrics are means over the batch with `count` = 1, so accumulating them
  over steps and calling `metrics.compute` gives per-step averages.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  model_hparams = {k: state.hparams[k] for k in models.MODEL_HPARAMS}

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    logits, new_model_state = model.apply(variables, batch, rng, True, model_hparams)
    loss_B = losses.cross_entropy(logits, batch["labels"], state.hparams["label_smoothing"])
    return jnp.mean(loss_B), (logits, new_model_state)

  (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32))
  learning_rate = (optim.get_hparams(state.opt_state)["learning_rate"]
                   * schedule(optim.update_count(state.opt_state)))
  step_metrics = {
      "loss": loss,
      "accuracy": accuracy,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": jnp.asarray(learning_rate, jnp.float32),
      "count": jnp.ones((), jnp.float32),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state={**state.model_state, **new_model_state},
                            opt_state=opt_state)
  return new_state, step_metrics


def eval_step(model: models.Model, state: TrainState,
              batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the batch's unmasked examples."""
  variables = {"params": state.params, **state.model_state}
  model_hparams = {k: state.hparams[k] for k in models.MODEL_HPARAMS}
  logits, _ = model.apply(variables, batch, state.rng, False, model_hparams)
  loss_B = losses.cross_entropy(logits, batch["labels"])  # No smoothing at eval.
  return metrics_lib.classification_sums(logits, batch["labels"], loss_B, batch.get("mask"))


def accumulate_train_step(model, tx, schedule, state, acc, batch):
  """`train_step` whose metrics are folded into the running sums `acc`."""
  state, step_metrics = train_step(model, tx, schedule, state, batch)
  return state, metrics_lib.merge(acc, step_metrics)
