"""Constrained, multi-objective search: the ranking (against a brute-force reference
and Optuna's `best_trials`), the config checks, and two-objective searches on digits
whose front is checked against every member's recorded metrics."""

import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import errors
from jaxtrain.tune import loop as tune_run
from jaxtrain.tune import pareto
from jaxtrain.tune import plots
from jaxtrain.tune import population as pop_lib
from tests.test_tune import tune_config

# --- A brute-force reference of the constrained Pareto order, from its definition. ---


def _dominates(a, b):
  return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def reference_keys(values, violation, primary=0):
  """Place of each point in the order (lower is better), written from the definition:
  the non-dominated rank is the length of the longest chain of feasible points, each
  dominating the next, that ends at the point; the crowding distance sums, per
  objective, the gap between the nearest distinct values of its rank below and above
  over the rank's range (infinite at an extreme)."""
  n = len(values)
  failed = [not (all(math.isfinite(x) for x in values[i]) and math.isfinite(violation[i]))
            for i in range(n)]
  feasible = [i for i in range(n) if not failed[i] and violation[i] <= 0]

  @functools.lru_cache(maxsize=None)
  def rank(i):
    above = [rank(j) for j in feasible if _dominates(values[j], values[i])]
    return 1 + max(above) if above else 0

  def distance(i):
    same = [j for j in feasible if rank(j) == rank(i)]
    total = 0.0
    for k in range(len(values[i])):
      below = [values[j][k] for j in same if values[j][k] < values[i][k]]
      above = [values[j][k] for j in same if values[j][k] > values[i][k]]
      if not below or not above:
        return math.inf
      span = max(values[j][k] for j in same) - min(values[j][k] for j in same)
      total += (min(above) - max(below)) / span
    return total

  keys = []
  for i in range(n):
    if failed[i]:
      keys.append(None)
    elif violation[i] <= 0:
      keys.append((0, rank(i), -distance(i), -values[i][primary]))
    else:
      keys.append((1, violation[i], 0.0, -values[i][primary]))
  return keys


def random_points(rng, n, k):
  """Points on a coarse grid (ties and duplicates), some NaN, some infeasible."""
  values = rng.integers(0, 4, size=(n, k)).astype(float)
  values[rng.random(n) < 0.15, rng.integers(0, k)] = math.nan  # Diverged members.
  dup = rng.integers(0, n, size=3)
  values[dup[1:]] = values[dup[0]]  # Exact duplicates.
  violation = np.where(rng.random(n) < 0.35, rng.integers(1, 4, size=n) * 0.5, 0.0)
  violation[rng.random(n) < 0.1] = math.nan  # A constrained metric that diverged.
  return values, violation


@pytest.mark.parametrize("seed,n,k", [(s, n, k) for s in range(6) for n, k in
                                       ((1, 2), (7, 1), (12, 2), (20, 3), (25, 2))])
def test_order_matches_a_brute_force_reference(seed, n, k):
  values, violation = random_points(np.random.default_rng(seed), n, k)
  primary = seed % k
  scores = pareto.order_scores(values, violation, primary)
  keys = reference_keys(values.tolist(), violation.tolist(), primary)
  for i in range(n):
    assert math.isnan(scores[i]) == (keys[i] is None), (i, values[i], violation[i])
  for i, j in itertools.combinations([i for i in range(n) if keys[i] is not None], 2):
    want = (keys[i] < keys[j]) - (keys[i] > keys[j])  # +1: i is better.
    got = int(scores[i] > scores[j]) - int(scores[i] < scores[j])
    assert got == want, (values[i], violation[i], values[j], violation[j])
  front = pareto.front(values, violation)
  assert front == [i for i in range(n) if keys[i] is not None and keys[i][:2] == (0, 0)]
  # The front: feasible, finite, and no feasible finite point dominates a member of it.
  for i in front:
    assert violation[i] <= 0 and np.isfinite(values[i]).all()
    assert not any(_dominates(values[j], values[i]) for j in range(n)
                   if keys[j] is not None and violation[j] <= 0)


@pytest.mark.parametrize("seed", range(4))
def test_front_matches_optunas_best_trials(seed):
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  rng = np.random.default_rng(100 + seed)
  values, violation = random_points(rng, 24, 2)
  modes = ("max", "min")  # Optuna is told raw values: the second is minimised.
  study = optuna.create_study(directions=["maximize", "minimize"])
  for i in range(len(values)):
    if not (np.isfinite(values[i]).all() and math.isfinite(violation[i])):
      study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
      continue
    raw = [v if m == "max" else -v for v, m in zip(values[i], modes)]
    study.add_trial(optuna.trial.create_trial(
        values=raw, system_attrs={"constraints:c": float(violation[i])}))
  want = sorted(t.number for t in study.best_trials)
  assert pareto.front(values, violation) == want


def test_a_diverged_member_is_never_a_parent_and_infeasible_ones_copy_feasible():
  evals = [{"eval/accuracy": 0.9, "eval/ece": 0.30},   # Infeasible (ece > 0.1).
           {"eval/accuracy": 0.5, "eval/ece": 0.02},   # Feasible, on the front.
           {"eval/accuracy": math.nan, "eval/ece": math.nan},  # Diverged.
           {"eval/accuracy": 0.7, "eval/ece": 0.05},   # Feasible, on the front.
           {"eval/accuracy": 0.6, "eval/ece": 0.06}]   # Feasible, dominated by 3.
  c = tune_config("pbt")
  c.tune.objectives = ("eval/accuracy", "eval/ece")
  c.tune.constraints = ("eval/ece <= 0.1",)
  scores = pareto.scores_of(c, evals)
  assert math.isnan(scores[2])
  assert scores[3] > scores[1] > scores[4] > scores[0]  # Ends of the front: by accuracy.
  for method, key in itertools.product(("truncation", "tournament"), range(20)):
    parents, exploited = pop_lib.exploit(np.asarray(scores, np.float32),
                                         np.random.default_rng(key), method=method,
                                         fraction=0.4)
    parents = np.asarray(parents)
    assert 2 not in parents[np.arange(5) != 2]  # Nobody copies the diverged member.
    assert not exploited[3]  # The best member keeps its state.
    if method == "truncation":
      assert exploited[2] and parents[2] != 2  # The diverged member is replaced.


def test_halving_promotions_rank_by_the_constrained_order():
  c = tune_config("halving")
  c.tune.objectives = ("eval/accuracy", "eval/ece")
  c.tune.constraints = ("eval/ece <= 0.1",)
  recorded = [{"eval/accuracy": 0.95, "eval/ece": 0.2}]  # Earlier, infeasible.
  arrivals = [(7, {"eval/accuracy": 0.4, "eval/ece": 0.05}),
              (3, {"eval/accuracy": math.nan, "eval/ece": math.nan}),
              (5, {"eval/accuracy": 0.8, "eval/ece": 0.08})]
  # 4 recorded, eta 2: the top 2 are the feasible 5 and 7 (the infeasible 0.95 is below).
  assert pareto.promotions(recorded, arrivals, 2, c) == {5, 7}
  assert len(recorded) == 4
  assert pareto.promotions([], [(0, {"eval/accuracy": math.nan, "eval/ece": 0.0})], 2,
                           c) == set()


@pytest.mark.parametrize("overrides,message", [
    ({"objectives": ("eval/accuracy", "eval/eec")}, "tune.objectives"),
    ({"objectives": ("eval/accuracy", "eval/accuracy")}, "names a metric twice"),
    ({"objectives": ("eval/loss", "eval/ece")}, "tune.metric='eval/accuracy' is not one of"),
    ({"constraints": ("eval/ece < 0.05",)}, "write 'METRIC <= NUMBER'"),
    ({"constraints": ("eval/ece <= nan",)}, "is not a finite number"),
    ({"constraints": ("eval/eces <= 0.1",)}, "tune.constraints metric"),
    ({"constraints": ("eval/ece <= 0.1",), "storage": "sqlite:////tmp/x.db"},
     "tune.storage is not supported with tune.objectives"),
])
def test_bad_objectives_and_constraints_are_one_line_errors(overrides, message, tmp_path):
  c = tune_config("bayes" if "storage" in overrides else "pbt")
  for key, value in overrides.items():
    c.tune[key] = value
  with pytest.raises(errors.UserError) as e:
    tune_run.run(c, tmp_path / "run")
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()  # Refused before anything was written.


# --- Two-objective searches on digits. ---


def pareto_config(strategy, size=6):
  c = tune_config(strategy, size=size)
  c.tune.objectives = ("eval/accuracy", "eval/ece")
  c.tune.constraints = ("eval/ece <= 0.15",)
  return c


def reference_front(rows):
  """The front of result.json's member rows, from their recorded metrics alone."""
  ok = [r for r in rows if math.isfinite(r["eval"]["eval/accuracy"])
        and math.isfinite(r["eval"]["eval/ece"]) and r["eval"]["eval/ece"] <= 0.15]
  point = lambda r: (r["eval"]["eval/accuracy"], -r["eval"]["eval/ece"])
  return sorted(r["id"] for r in ok if not any(_dominates(point(q), point(r)) for q in ok))


def _numpy_ece(probabilities, labels, bins=15):
  """ECE with equal-width, right-closed confidence bins (Guo et al. 2017), in numpy."""
  confidence = probabilities.max(-1)
  correct = probabilities.argmax(-1) == labels
  total = 0.0
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    inside = (confidence > lo) & (confidence <= hi) if b else (confidence <= hi)
    if inside.any():
      total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
  return total / len(labels)


@pytest.fixture(scope="module")
def pbt_pareto(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pbt_pareto")
  return workdir, tune_run.run(pareto_config("pbt"), workdir)


def test_pbt_front_is_the_constrained_front_of_every_member(pbt_pareto):
  workdir, result = pbt_pareto
  assert result["status"] == "completed" and result["train_step_compiles"] == {0: 1}
  front = sorted(r["id"] for r in result["pareto_front"])
  assert front and front == reference_front(result["members"])
  assert all(r["feasible"] and r["objectives"]["eval/ece"] <= 0.15
             for r in result["pareto_front"])
  assert result["objectives"] == [{"metric": "eval/accuracy", "direction": "maximize"},
                                  {"metric": "eval/ece", "direction": "minimize"}]
  # best/: the feasible member with the best accuracy, a member of the front.
  feasible = [r for r in result["members"] if r["eval"]["eval/ece"] <= 0.15]
  assert result["best_member"] == max(feasible, key=lambda r: r["eval"]["eval/accuracy"])["id"]
  assert result["best_member"] in front
  on_disk = json.loads((workdir / "tune" / "result.json").read_text())
  assert [r["id"] for r in on_disk["pareto_front"]] == [r["id"] for r in result["pareto_front"]]
  assert sorted(p.name for p in (workdir / "front").iterdir()) == [
      f"member_{i:04d}" for i in front]


def test_every_front_member_is_evaluable_and_its_ece_is_recorded_right(pbt_pareto):
  import jaxtrain
  from jaxtrain.jobs import evaluate
  workdir, result = pbt_pareto
  for row in result["pareto_front"]:
    evaluated = evaluate.run(row["workdir"])
    assert evaluated["eval/accuracy"] == pytest.approx(row["objectives"]["eval/accuracy"],
                                                       abs=1e-9)
    run = jaxtrain.load(row["workdir"])
    inputs, labels = run.data()
    ece = _numpy_ece(np.asarray(run.predict(inputs, probabilities=True), np.float64), labels)
    assert row["objectives"]["eval/ece"] == pytest.approx(ece, abs=2e-4)


def test_pareto_plot_shows_the_front(pbt_pareto):
  workdir, result = pbt_pareto
  assert (workdir / "tune" / "pareto.png").stat().st_size > 0
  c = pareto_config("pbt")
  rows = [{**r, **pareto.describe(c, r["eval"])} for r in result["members"]]
  front = {r["id"] for r in result["pareto_front"]}
  fig = plots.pareto_figure([("eval/accuracy", "max"), ("eval/ece", "min")], rows, front,
                            (("eval/ece", 0.15),))
  drawn = sorted(map(tuple, fig.axes[0].collections[0].get_offsets().tolist()))
  want = sorted((r["objectives"]["eval/accuracy"], r["objectives"]["eval/ece"])
                for r in result["pareto_front"])
  assert drawn == pytest.approx(want)
  assert len(fig.axes[0].collections[2].get_offsets()) == sum(not r["feasible"] for r in rows)


@pytest.mark.slow
def test_bayes_front_is_optunas_best_trials(tmp_path):
  import optuna
  result = tune_run.run(pareto_config("bayes", size=4), tmp_path)
  study = optuna.load_study(study_name="jaxtrain",
                            storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}")
  assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
  best = sorted(t.number for t in study.best_trials)
  assert sorted(r["trial"] for r in result["pareto_front"]) == best
  assert sorted(r["id"] for r in result["pareto_front"]) == reference_front(result["members"])
  for t in study.trials:  # Optuna holds each trial's constraint in its own form.
    if t.state == optuna.trial.TrialState.COMPLETE:
      assert t.constraints == {"eval/ece <= 0.15": pytest.approx(t.values[1] - 0.15)}


@pytest.mark.slow
def test_halving_front_respects_the_constraint(tmp_path):
  result = tune_run.run(pareto_config("halving"), tmp_path)
  front = result["pareto_front"]
  finished = [r for r in result["members"] if r["status"] != "culled"]
  assert sorted(r["id"] for r in front) == reference_front(finished)
  assert all(r["objectives"]["eval/ece"] <= 0.15 for r in front)


def grid_config():
  """Two phases (two widths), two learning rates each: accuracy against model size."""
  c = tune_config("grid")
  c.tune.grid_points = 2
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 1e-2)")
  c.tune.space.model = dict(hidden_sizes="choice((8,), (32,))")
  c.tune.objectives = ("eval/accuracy", "model/num_params")
  return c


@pytest.mark.slow
def test_a_front_across_phases_survives_a_resume_and_counts_parameters(tmp_path):
  whole = tune_run.run(grid_config(), tmp_path / "whole")
  stopped = tune_run.run(grid_config(), tmp_path / "resumed", stop_after_steps=40)
  assert stopped["status"] == "stopped"  # After phase 0: the front so far is checkpointed.
  resumed = tune_run.run(grid_config(), tmp_path / "resumed")
  assert whole["train_step_compiles"] == {0: 1, 1: 1}
  front = sorted(r["id"] for r in whole["pareto_front"])
  assert front == reference_front_of(whole["members"], ("eval/accuracy", "model/num_params"))
  assert [r["id"] for r in resumed["pareto_front"]] == [r["id"] for r in whole["pareto_front"]]
  assert [r["objectives"] for r in resumed["pareto_front"]] == [
      r["objectives"] for r in whole["pareto_front"]]
  assert resumed["best_member"] == whole["best_member"]
  for row in whole["pareto_front"]:  # The count the export takes from the trained params.
    final = json.loads((tmp_path / "whole" / "front" / f"member_{row['id']:04d}" /
                        "final.json").read_text())
    assert final["member"] == row["id"]
    assert row["objectives"]["model/num_params"] == final["num_params"]
  assert sorted(p.name for p in (tmp_path / "resumed" / "front").iterdir()) == [
      f"member_{i:04d}" for i in front]  # A member that left the front left no export.


def reference_front_of(rows, metrics):
  """The unconstrained front of result rows by `metrics` (accuracy up, the rest down)."""
  point = lambda r: tuple(r["eval"][m] if m == "eval/accuracy" else -r["eval"][m]
                          for m in metrics)
  ok = [r for r in rows if all(math.isfinite(x) for x in point(r))]
  return sorted(r["id"] for r in ok if not any(_dominates(point(q), point(r)) for q in ok))


@pytest.mark.slow
def test_one_objective_named_as_tune_metric_searches_as_tune_metric_alone(tmp_path):
  plain = tune_run.run(tune_config("pbt"), tmp_path / "plain")
  c = tune_config("pbt")
  c.tune.objectives = ("eval/accuracy",)
  named = tune_run.run(c, tmp_path / "named")
  read = lambda d: json.loads((d / "best" / "final.json").read_text())["params_sha256"]
  assert read(tmp_path / "named") == read(tmp_path / "plain")
  strip = lambda d: [{k: v for k, v in json.loads(line).items() if k != "time"}
                     for line in (d / "tune" / "lineage.jsonl").read_text().splitlines()]
  assert strip(tmp_path / "named") == strip(tmp_path / "plain")  # The same exploits.
  assert named["best_member"] == plain["best_member"]
  # One objective: the front is every member with the best accuracy (ties included).
  assert plain["best_member"] in [r["id"] for r in named["pareto_front"]]
  assert {r["objectives"]["eval/accuracy"] for r in named["pareto_front"]} == {
      plain["best_score"]}
