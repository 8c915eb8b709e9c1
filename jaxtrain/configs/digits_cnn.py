"""Small CNN on scikit-learn's 8x8 handwritten digits (embedded; runs offline).

  python -m jaxtrain.main --config=configs/digits_cnn.py --workdir=runs/digits_cnn

Measured: test accuracy 0.975 [r:digits_cnn.accuracy] (351 of the 360 test digits)
after 600 steps; 28,426 parameters; 6.9 s [r:digits_cnn.train_sec] of training,
11.7 s [r:digits_cnn.wall_sec] wall on 2 shared CPU cores (load and command in docs/results.json).
Reference: scikit-learn's example "Recognizing hand-written digits" reports
accuracy 0.97 for SVC(gamma=0.001) trained on the first half of the 1,797 digits
and tested on the second half (899, not shuffled); that is not jaxtrain's split
(a seeded 80/20 permutation: 1,437 train / 360 test), on which the same SVC
scores 0.994 (measured; docs/BENCHMARKS.md, "Shipped configs against published
numbers"). This config is above the published 0.97 and below that same-split
SVC; it was not retuned, because the transfer demo (configs/digits_cnn_*_5to9.py,
docs/guide/finetune.md) derives from it.
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.model.name = "cnn"
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.dense_size = 128
  config.optim.name = "adam"
  config.optim.learning_rate = 2e-3
  config.train.num_steps = 600
  config.checkpoint.every_steps = 300
  return config
