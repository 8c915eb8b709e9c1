"""The strongest alternative to jaxtrain's tuner a user would write: a lean Optuna loop.

  python scripts/peer_optuna_lean.py --seed=0 [--trials=48 --steps=3000 --eval_every=500]

Imports nothing of jaxtrain. MNIST-1D (the `mnist1d` package's default 4,000 / 1,000
split, as jaxtrain's embedded dataset), an MLP 40-100-100-10 (ReLU), AdamW, batch 100,
learning rate log-uniform [1e-4, 1e-1] and weight decay log-uniform [1e-6, 1e-1], TPE
(seeded), `--steps` steps per trial with test accuracy every `--eval_every` steps, and a
MedianPruner. ONE `jax.jit` train step takes the learning rate and weight decay as
traced arrays (optax.inject_hyperparams), so all trials share one compile; the steps of an
evaluation interval run as one `lax.scan`, each batch gathered on device from the trial's
per-epoch permutations, made once per trial (no host work, and no sort, per step). No
files are written.

Prints one JSON line per evaluation on stdout: {"t": seconds since this process
started, "trial", "step", "accuracy"}, then {"done": true, "t": ...}. scripts/bench_peers.py
runs it as a separate process and reads those lines.
"""

import time

START = time.time()  # Before the heavy imports: they count (timed from process start).

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optuna  # noqa: E402
from mnist1d.data import get_dataset_args, make_dataset  # noqa: E402


PRINT_LOCK = threading.Lock()


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for width in (100, 100):
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(10)(x)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--trials", type=int, default=48)
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--eval_every", type=int, default=500)
  p.add_argument("--batch_size", type=int, default=100)
  p.add_argument("--n_jobs", type=int, default=1,
                 help="trials at once (Optuna's threads; JAX releases the GIL while it runs)")
  args = p.parse_args(argv)

  data = make_dataset(get_dataset_args())
  x, y = jnp.asarray(data["x"], jnp.float32), jnp.asarray(data["y"], jnp.int32)
  x_test, y_test = jnp.asarray(data["x_test"], jnp.float32), jnp.asarray(data["y_test"])
  n, bs = x.shape[0], args.batch_size
  model = MLP()
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=1e-4)

  @jax.jit
  def init(key, lr, wd):
    params = model.init(key, x[:1])["params"]
    state = tx.init(params)
    hyperparams = {**state.hyperparams, "learning_rate": lr, "weight_decay": wd}
    return params, state._replace(hyperparams=hyperparams)

  def loss_fn(params, xb, yb):
    logits = model.apply({"params": params}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  per_epoch = n // bs
  num_epochs = -(-args.steps // per_epoch)

  @jax.jit
  def index_stream(key):  # Each epoch a fresh permutation, its last partial batch dropped.
    perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(
        jnp.arange(num_epochs))
    return perms[:, :per_epoch * bs].reshape(-1, bs)  # [steps, batch]

  @jax.jit
  def train_chunk(params, opt_state, stream, start_step):
    def body(carry, step):
      params, opt_state = carry
      idx = stream[step]
      grads = jax.grad(loss_fn)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    steps = start_step + jnp.arange(args.eval_every)
    return jax.lax.scan(body, (params, opt_state), steps)[0]

  @jax.jit
  def accuracy(params):
    return (model.apply({"params": params}, x_test).argmax(-1) == y_test).mean()

  def objective(trial):
    lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
    wd = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    key = jax.random.PRNGKey(trial.number)
    params, opt_state = init(key, jnp.float32(lr), jnp.float32(wd))
    stream = index_stream(key)
    acc = 0.0
    for start in range(0, args.steps, args.eval_every):
      params, opt_state = train_chunk(params, opt_state, stream, start)
      acc = float(accuracy(params))
      with PRINT_LOCK:  # Whole lines when trials run in threads (--n_jobs).
        print(json.dumps({"t": time.time() - START, "trial": trial.number,
                          "step": start + args.eval_every, "accuracy": acc}), flush=True)
      trial.report(acc, start + args.eval_every)
      if trial.should_prune():
        raise optuna.TrialPruned()
    return acc

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(direction="maximize",
                              sampler=optuna.samplers.TPESampler(seed=args.seed),
                              pruner=optuna.pruners.MedianPruner(n_warmup_steps=args.eval_every))
  study.optimize(objective, n_trials=args.trials, n_jobs=args.n_jobs)
  print(json.dumps({"done": True, "t": time.time() - START,
                    "best": study.best_value}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
