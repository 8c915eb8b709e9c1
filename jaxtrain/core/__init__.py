"""The pure core: the train state, the train and eval steps, losses, metrics, optimizers.

Functions of jax, flax, optax and numpy only: no files, flags, printing or globals, and no
import of orbax, tensorboardX, ml_collections, TFDS or grain (tests/test_layers.py).
"""
