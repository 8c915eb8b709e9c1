"""Random search on the digits MLP: 16 sampled settings trained as one population.

  python -m jaxtrain.main --config=configs/digits_random.py --workdir=runs/digits_random

Learning rate, weight decay and dropout are sampled per member; a member whose
validation accuracy has not improved for 3 evaluations is replaced by a new
sample in the same slot (no recompilation). The winner is scored once on the
test split (`best_test` in runs/digits_random/tune/result.json).
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
  config.train.num_steps = 600
  config.train.eval_every_steps = 100
  config.checkpoint.every_steps = 200
  config.tune.strategy = "random"
  config.tune.population_size = 16
  config.tune.space.optim = dict(learning_rate="loguniform(1e-4, 1e-1)",
                                 weight_decay="loguniform(1e-6, 1e-2)")
  config.tune.space.model = dict(dropout_rate="uniform(0.0, 0.5)")
  config.tune.early_stopping.patience = 3
  return config
