"""Writing a member out: the best member (and the soup) as a single-run workdir."""

from __future__ import annotations


import jax

from jaxtrain.core import state as state_lib
from jaxtrain.jobs import workdir as workdir_lib
from jaxtrain.tune.phase import member_config
from jaxtrain.paths import Path


def _single(config, member: dict, state, evals: dict):
  """(a member's single-run config, its state on the host, final.json's common part)."""
  single = member_config(config, member["settings"])
  with single.unlocked():  # Its init and data-order keys: a solo rerun starts as it did.
    single.tune.member = member["id"]
  state = jax.device_get(state)
  step = int(state.step)
  final = {"status": "completed", "step": step, "final": evals,
           "best": {"metric": config.tune.metric, "step": step, **evals},
           "params_sha256": state_lib.params_sha256(state.params),
           "num_params": state_lib.num_params(state.params), "settings": member["settings"]}
  return single, state, final


def export_member(config, member: dict, state, directory: Path, schedule) -> None:
  """Writes one member as a normal single-run workdir (config, checkpoint, final.json),
  with the hyperparameter schedule its lineage followed (schedule.json)."""
  single, state, final = _single(config, member, state, member["last_eval"])
  final["member"] = member["id"]
  if single.model.lora_rank > 0:  # As a single LoRA run: the adapters merged, a plain run.
    final["lora_merged_workdir"] = str(workdir_lib.export_merged(
        single, state, directory / "merged", final))
  workdir_lib.export_run(directory, single, state, final, {"schedule.json": schedule})


def export_soup(config, best: dict, state, directory: Path, record: dict) -> None:
  """Writes a soup (`tune/soup.py`: `state` is the best member's with averaged
  parameters) as a single-run workdir with the best member's config; final.json holds
  the soup's evaluation and `record` (which members, each greedy step)."""
  single, state, final = _single(config, best, state, record["eval"])
  final["soup"] = record
  workdir_lib.export_run(directory, single, state, final)
