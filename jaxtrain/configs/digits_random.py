"""Random search on the digits MLP: 16 sampled settings trained as one population.

  python -m jaxtrain.main --config=configs/digits_random.py --workdir=runs/digits_random

Same data split, model and budget as configs/digits_pbt.py. Learning rate,
weight decay and dropout are sampled per member; a member whose validation
accuracy has not improved for 3 evaluations is replaced by a new sample in the
same slot (no recompilation). The winner is scored once on the test split
(`best_test` in runs/digits_random/tune/result.json).
"""

from jaxtrain.configs import digits_pbt


def get_config():
  config = digits_pbt.get_config()
  config.tune.strategy = "random"
  config.tune.space.model = dict(dropout_rate="uniform(0.0, 0.5)")
  config.tune.early_stopping.patience = 3
  return config
