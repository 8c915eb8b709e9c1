"""Studies built on jaxtrain: one importable module per study.

Each module has a documented `run(workdir_root, ...)` that trains what the
study needs under `workdir_root` and returns its results as plain data (lists
and dicts of numbers and strings), and a `main()`, so that

  python -m experiments.NAME [--workdir=runs/experiments] [--quick]

prints the study's table. `--quick` (`run(..., quick=True)`) trains for a few
steps only: it checks the plumbing, not the science.

- `mnist1d_models`: logistic regression, MLP, CNN and GRU on MNIST-1D, with
  and without the spatial order of the signal.
- `digits_tuning`: one hand-set run vs random search vs PBT on digits.
"""
