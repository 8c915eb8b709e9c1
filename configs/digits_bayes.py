"""Bayesian search (Optuna TPE, ask/tell) on the digits MLP, 8 settings per round.

  python -m jaxtrain.main --config=configs/digits_bayes.py --workdir=runs/digits_bayes

Each round asks Optuna for 8 settings, trains them as one population, and
tells the validation accuracies back; the study lives in
runs/digits_bayes/tune/optuna.db, so a restarted run continues it.
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.data.train_split = "train[:80%]"
  config.data.eval_split = "train[80%:]"
  config.data.test_split = "test"
  config.model.hidden_sizes = (256, 256)
  config.optim.name = "adamw"
  config.train.num_steps = 400
  config.train.eval_every_steps = 100
  config.checkpoint.every_steps = 200
  config.tune.strategy = "bayes"
  config.tune.population_size = 8
  config.tune.bayes.rounds = 4
  config.tune.space.optim = dict(learning_rate="loguniform(1e-4, 1e-1)",
                                 weight_decay="loguniform(1e-6, 1e-2)")
  config.tune.space.loss = dict(label_smoothing="uniform(0.0, 0.2)")
  return config
