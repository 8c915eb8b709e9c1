"""Model soups: the greedy weight average of a search's best members (tune.soup.top_k).

Greedy soup (Wortsman et al. 2022, "Model soups", Recipe 1): the candidates are
sorted by their validation score; the soup starts as the best member alone and
takes each next candidate into its (uniform) average only if the averaged model's
validation score does not drop. By construction it scores at least as well as the
best member on the split it was chosen on (`data.eval_split`, where the tuner ranks
members); `data.test_split`, when set, is the honest comparison.

Averaging is meaningful only between models in one basin: the candidates are the
members of the best member's phase (one phase: one architecture) that carry its
initialisation (`init_group`): its own fresh init and the members that copied it
through PBT exploits, or every member when `init_from` copied all parameters into
all of them. With per-member fresh inits (random, grid, halving, Bayes without
init_from) the soup is the best member alone; docs/guide/tuning.md says so.
"""

from __future__ import annotations

import functools
import math
from jaxtrain.paths import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.core import step as step_lib
from jaxtrain.io import writers
from jaxtrain.jobs import cadence, evaluate as evaluate_lib, setup
from jaxtrain.tune import export


def check_config(config) -> None:
  """tune.soup.top_k: >= 0, and no LoRA model (the mean of two adapters' factors is
  not the mean of the models they make)."""
  top_k = config.tune.soup.top_k
  if top_k < 0:
    raise errors.UserError(f"tune.soup.top_k={top_k} must be >= 0 (0 = no soup)")
  lora = config.model.lora_rank > 0 or "lora_rank" in config.tune.space.get("model", {})
  if top_k > 0 and lora:
    raise errors.UserError(
        f"tune.soup.top_k={top_k} averages members' parameters, but model.lora_rank is "
        "searched or > 0: averaging LoRA factors is not averaging the models; set "
        "tune.soup.top_k=0, or search without LoRA")


def init_group(member: dict, shared_init: bool):
  """Which initialisation a member carries: 'init_from' when every member of its phase
  started from the same copied parameters, else the id of the member whose fresh init
  it holds (itself, or the ancestor PBT copied it from)."""
  return "init_from" if shared_init else member.get("origin", member["id"])


def candidates(members: list[dict], best: int, top_k: int, shared_init: bool) -> list[int]:
  """Slots of the soup's candidates, best first: members with a finite score and the
  initialisation of member `best`, the `top_k` highest scores (member `best` first)."""
  group = init_group(members[best], shared_init)
  same = [i for i, m in enumerate(members) if i != best and m["score"] is not None
          and math.isfinite(m["score"]) and init_group(m, shared_init) == group]
  same.sort(key=lambda i: (-members[i]["score"], members[i]["id"]))
  return [best] + same[:top_k - 1]


def average(states: list) -> Any:
  """The first state with params, model_state and ema_params replaced by their uniform
  mean over `states` (computed in float64 on the host, cast back: the mean does not
  depend on the order the states come in). Integer leaves are the first state's."""
  def mean(*leaves):
    first = np.asarray(leaves[0])
    if not np.issubdtype(first.dtype, np.floating) and first.dtype.name != "bfloat16":
      return first
    stacked = np.stack([np.asarray(x, np.float64) for x in leaves])
    return stacked.mean(axis=0).astype(first.dtype)

  fields = {"params": jax.tree.map(mean, *[s.params for s in states]),
            "model_state": jax.tree.map(mean, *[s.model_state for s in states])}
  if states[0].ema_params is not None:
    fields["ema_params"] = jax.tree.map(mean, *[s.ema_params for s in states])
  return states[0].replace(**fields)


def greedy(states: list, score: Callable[[Any], tuple[float, dict]]):
  """Greedy soup of `states` (best first): returns (soup state, chosen indices, steps).

  `score(state)` gives (a score, higher is better; its evaluation record). Each
  step is {"index", "score", "eval", "added"}: the soup's score with candidate
  `index` in it, and whether it stayed (its score did not drop)."""
  chosen = [0]
  soup = states[0]
  best, record = score(soup)
  steps = [{"index": 0, "score": best, "eval": record, "added": True}]
  for i in range(1, len(states)):
    trial = average([states[j] for j in chosen + [i]])
    value, record = score(trial)
    added = math.isfinite(value) and value >= best  # "Does not drop": ties are taken.
    steps.append({"index": i, "score": value, "eval": record, "added": added})
    if added:
      chosen.append(i)
      soup, best = trial, value
  return soup, chosen, steps


def make(c, phase, pop, members: list[dict], best: int, directory: Path) -> dict[str, Any]:
  """Makes the greedy soup of the phase's members around member slot `best` (their
  states in `pop`), exports it to `directory` as a single-run workdir (like best/)
  and returns its record (JSON): the candidates, each greedy step, the members
  averaged, the soup's and the best member's scores by the same evaluation."""
  slots = candidates(members, best, c.tune.soup.top_k, phase.shared_init)
  states = [phase.take(pop, i) for i in slots]  # Host arrays, on every process.
  metric, mode = c.tune.metric, config_lib.mode_of(c.tune.metric)
  eval_fn = jax.jit(functools.partial(step_lib.eval_step, phase.model))

  def score(state):  # The batches and eval step of --mode=eval (jobs/evaluate.py).
    values = setup.evaluate(eval_fn, state, phase.host_eval_batches)
    return cadence.signed(values[metric], mode), values

  soup_state, chosen, steps = greedy(states, score)
  ids = [members[i]["id"] for i in slots]
  record = {"metric": metric, "candidates": ids, "members": [ids[i] for i in chosen],
            "steps": [{"member": ids[s["index"]], metric: s["eval"][metric],
                       "added": s["added"]} for s in steps],
            "best_member": members[best]["id"], "best_member_score": steps[0]["eval"][metric],
            "phase_init": "init_from" if phase.shared_init else "per member",
            "workdir": str(directory)}
  soup_eval = next(s["eval"] for s in reversed(steps) if s["added"])
  record["score"], record["eval"] = soup_eval[metric], soup_eval
  export.export_soup(c, members[best], soup_state, directory, record)
  return record


def evaluate(c, directory: Path, record: dict[str, Any]) -> dict[str, Any]:
  """The soup's entry in tune/result.json: `record` with its --mode=eval evaluation
  (WORKDIR/soup/eval.json, as any run's) and, with data.test_split, its test.json
  beside best/'s; says the soup's score next to the best member's."""
  metric = c.tune.metric
  scored = evaluate_lib.run(directory)
  out = {**record, "eval": {k: v for k, v in scored.items() if k.startswith("eval/")}}
  # eval.use_ema scores the average as eval/*: an eval/ema_* metric keeps the search's own.
  out["score"] = out["eval"].get(metric, record["score"])
  if c.data.test_split:
    test_config = config_lib.load_snapshot(directory)
    test_config.data.eval_split = c.data.test_split
    test = evaluate_lib.run(directory, test_config, record="test.json")
    out["test"] = {k: v for k, v in test.items() if k.startswith("eval/")}
  writers.say(f"soup of {len(record['members'])} member(s) {record['members']}: {metric}="
              f"{out['score']:.4g} on {c.data.eval_split} (best member {record['best_member']}: "
              f"{record['best_member_score']:.4g}); {directory}")
  return out
