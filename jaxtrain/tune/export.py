"""Writing a member out: the best member as a single-run workdir."""

from __future__ import annotations


import jax

from jaxtrain.core import state as state_lib
from jaxtrain.jobs import workdir as workdir_lib
from jaxtrain.tune.phase import member_config
from jaxtrain.paths import Path


def export_member(config, member: dict, state, directory: Path, schedule) -> None:
  """Writes one member as a normal single-run workdir (config, checkpoint, final.json),
  with the hyperparameter schedule its lineage followed (schedule.json)."""
  single = member_config(config, member["settings"])
  state = jax.device_get(state)
  step = int(state.step)
  final = {"status": "completed", "step": step, "final": member["last_eval"],
           "best": {"metric": config.tune.metric, "step": step, **member["last_eval"]},
           "params_sha256": state_lib.params_sha256(state.params),
           "num_params": state_lib.num_params(state.params), "member": member["id"],
           "settings": member["settings"]}
  if single.model.lora_rank > 0:  # As a single LoRA run: the adapters merged, a plain run.
    final["lora_merged_workdir"] = str(workdir_lib.export_merged(
        single, state, directory / "merged", final))
  workdir_lib.export_run(directory, single, state, final, {"schedule.json": schedule})
