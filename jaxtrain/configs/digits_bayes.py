"""Bayesian search (Optuna TPE, ask/tell) on the digits MLP, 8 settings per round.

  python -m jaxtrain.main --config=configs/digits_bayes.py --workdir=runs/digits_bayes

Same data split and model as configs/digits_pbt.py. Each round asks Optuna for
8 settings, trains them as one population, and tells the validation
accuracies back; the study lives in runs/digits_bayes/tune/optuna.db, so a
restarted run continues it.
"""

from jaxtrain.configs import digits_pbt


def get_config():
  config = digits_pbt.get_config()
  config.train.num_steps = 400
  config.tune.strategy = "bayes"
  config.tune.population_size = 8
  config.tune.bayes.rounds = 4
  config.tune.space.loss = dict(label_smoothing="uniform(0.0, 0.2)")
  return config
