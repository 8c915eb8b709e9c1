"""Two objectives and a constraint: accurate and calibrated digits MLPs, by PBT.

  python -m jaxtrain.main --config=configs/digits_pareto.py --workdir=runs/digits_pareto

Same data split and model as configs/digits_pbt.py, 16 members. Members are
ranked by the constrained Pareto order of validation accuracy (maximised) and
expected calibration error (minimised), subject to eval/ece <= 0.05: feasible
members first, then by non-dominated rank, then by crowding distance
(docs/guide/tuning.md, "Several objectives and constraints"). The front is
listed in runs/digits_pareto/tune/result.json (`pareto_front`), drawn in
tune/pareto.png, and each of its members is exported to
runs/digits_pareto/front/member_NNNN/ (evaluate one with --mode=eval).

Expect a front of a few members near 0.99 validation accuracy with ECE between
0.01 and 0.03 (one run of this command on 2026-12-07: 2 members, accuracy 0.993
at ECE 0.026 and 0.990 at ECE 0.012); PBT's copies make many members alike.
"""

from jaxtrain.configs import digits_pbt


def get_config():
  config = digits_pbt.get_config()
  config.tune.objectives = ("eval/accuracy", "eval/ece")
  config.tune.constraints = ("eval/ece <= 0.05",)
  config.tune.metric = "eval/accuracy"  # The objective best/ follows.
  config.tune.space.loss = dict(label_smoothing="uniform(0.0, 0.2)")
  return config
