"""Ray Tune PBT as a user would write it for the task of scripts/peer_optuna_lean.py.

  pip install 'ray[tune]'; python scripts/peer_ray_pbt.py --seed=0 [--members=8 --steps=3000]

Imports nothing of jaxtrain. Each trial is a Ray actor running the same lean jitted
step as the Optuna loop (learning rate and weight decay as traced arrays, so exploits and
reset_config never recompile), `--interval` steps per iteration, then test accuracy;
PopulationBasedTraining exploits and explores every iteration (truncation at 25%,
factors 0.8 / 1.25, resampling with probability 0.25), reuse_actors=True, one CPU per
trial. Prints {"t": seconds since this process started, "trial", "step", "accuracy"}
per result on stdout, then {"done": true, "t": ...}.
"""

import time

START = time.time()  # Before the heavy imports: they count.

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import PopulationBasedTraining  # noqa: E402


class Member(tune.Trainable):
  """One trial: the lean MNIST-1D MLP step, `interval` steps per iteration."""

  def setup(self, config, interval=250):
    # pylint: disable=g-import-not-at-top
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from mnist1d.data import get_dataset_args, make_dataset
    # pylint: enable=g-import-not-at-top

    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        for width in (100, 100):
          x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(10)(x)

    data = make_dataset(get_dataset_args())
    x, y = jnp.asarray(data["x"], jnp.float32), jnp.asarray(data["y"], jnp.int32)
    x_test, y_test = jnp.asarray(data["x_test"], jnp.float32), jnp.asarray(data["y_test"])
    n, bs, model = x.shape[0], 100, MLP()
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=1e-4)

    def loss_fn(params, xb, yb):
      logits = model.apply({"params": params}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def train_chunk(params, opt_state, key, start_step):
      def body(carry, step):
        params, opt_state = carry
        order = jax.random.permutation(jax.random.fold_in(key, step // (n // bs)), n)
        idx = jax.lax.dynamic_slice_in_dim(order, (step % (n // bs)) * bs, bs)
        grads = jax.grad(loss_fn)(params, x[idx], y[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None
      return jax.lax.scan(body, (params, opt_state), start_step + jnp.arange(interval))[0]

    self.jax, self.jnp, self.interval = jax, jnp, interval
    self.train_chunk = train_chunk
    self.accuracy = jax.jit(
        lambda params: (model.apply({"params": params}, x_test).argmax(-1) == y_test).mean())
    self.key = jax.random.PRNGKey(abs(hash(self.trial_id)) % (2**31))
    self.params = model.init(self.key, x[:1])["params"]
    self.opt_state = tx.init(self.params)
    self.step_count = 0
    self.reset_config(config)

  def reset_config(self, new_config):
    hp = dict(self.opt_state.hyperparams)
    hp["learning_rate"] = self.jnp.float32(new_config["learning_rate"])
    hp["weight_decay"] = self.jnp.float32(new_config["weight_decay"])
    self.opt_state = self.opt_state._replace(hyperparams=hp)
    return True

  def step(self):
    self.params, self.opt_state = self.train_chunk(self.params, self.opt_state, self.key,
                                                   self.step_count)
    self.step_count += self.interval
    return {"accuracy": float(self.accuracy(self.params)), "steps": self.step_count}

  def save_checkpoint(self, checkpoint_dir):
    return {"params": self.jax.device_get(self.params),
            "opt_state": self.jax.device_get(self.opt_state), "steps": self.step_count}

  def load_checkpoint(self, checkpoint):
    config = {"learning_rate": float(self.opt_state.hyperparams["learning_rate"]),
              "weight_decay": float(self.opt_state.hyperparams["weight_decay"])}
    self.params, self.opt_state = checkpoint["params"], checkpoint["opt_state"]
    self.step_count = checkpoint["steps"]
    self.reset_config(config)  # The donor's state, this trial's (explored) values.


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--members", type=int, default=8)
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--interval", type=int, default=500)
  args = p.parse_args(argv)

  class Report(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
      print(json.dumps({"t": time.time() - START, "trial": trial.trial_id,
                        "step": result["steps"], "accuracy": result["accuracy"]}), flush=True)

  logging.getLogger("ray").setLevel(logging.WARNING)
  random.seed(args.seed)  # Ray's PBT and search space sample from Python's and numpy's RNGs.
  np.random.seed(args.seed)
  ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}})
  space = {"learning_rate": tune.loguniform(1e-4, 1e-1),
           "weight_decay": tune.loguniform(1e-6, 1e-1)}
  scheduler = PopulationBasedTraining(
      time_attr="training_iteration", perturbation_interval=1, hyperparam_mutations=space,
      quantile_fraction=0.25, resample_probability=0.25, perturbation_factors=(1.25, 0.8))
  tuner = tune.Tuner(
      tune.with_resources(tune.with_parameters(Member, interval=args.interval), {"cpu": 1}),
      param_space=space,
      tune_config=tune.TuneConfig(metric="accuracy", mode="max", scheduler=scheduler,
                                  num_samples=args.members, reuse_actors=True),
      run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="ray_pbt_"),
                                stop={"training_iteration": args.steps // args.interval},
                                verbose=0, callbacks=[Report()]))
  grid = tuner.fit()
  best = grid.get_best_result().metrics["accuracy"]
  ray.shutdown()
  print(json.dumps({"done": True, "t": time.time() - START, "best": best}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
