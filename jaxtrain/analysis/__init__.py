"""Evaluation analysis: the report of `--mode=eval` and its pieces.

- `options`: checks of the `eval.*` config keys (cheap to import).
- `slices`: which slice each evaluation example belongs to (`eval.slice_key`).
- `robustness`: accuracy under Gaussian noise, FGSM and PGD (pure, jittable).
- `attribution`: saliency and integrated gradients (pure, jittable).
- `plots`: matplotlib (Agg) figures.
- `report`: runs all of the above on a restored state, writes WORKDIR/report/.
"""
