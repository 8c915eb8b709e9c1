"""Population-based training of a digits MLP: 16 members in one compiled step.

  python -m jaxtrain.main --config=configs/digits_pbt.py --workdir=runs/digits_pbt

Members train on 80% of the training split and are compared on the other
20% every 100 steps; the bottom quarter copies the top quarter's whole state
and perturbs its learning rate and weight decay. The winner is exported to
runs/digits_pbt/best/ and scored once on the test split (`best_test` in
runs/digits_pbt/tune/result.json). See docs/BENCHMARKS.md for measured results.
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.data.train_split = "train[:80%]"
  config.data.eval_split = "train[80%:]"
  config.data.test_split = "test"
  config.model.name = "mlp"
  config.model.hidden_sizes = (256, 256)
  config.optim.name = "adamw"
  config.train.num_steps = 600
  config.train.eval_every_steps = 100
  config.checkpoint.every_steps = 200
  config.tune.strategy = "pbt"
  config.tune.population_size = 16
  config.tune.metric = "eval/accuracy"
  config.tune.space.optim = dict(learning_rate="loguniform(1e-4, 1e-1)",
                                 weight_decay="loguniform(1e-6, 1e-2)")
  config.tune.pbt.exploit = "truncation"
  config.tune.pbt.fraction = 0.25
  config.tune.pbt.perturb_factors = (0.8, 1.25)
  config.tune.pbt.resample_probability = 0.25
  return config
