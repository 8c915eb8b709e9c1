"""Writing members out: the best member as a single-run workdir, and one
TensorBoard hparams entry per member."""

from __future__ import annotations

from pathlib import Path

import jax

from jaxtrain.core import state as state_lib
from jaxtrain.io import writers
from jaxtrain.jobs import workdir as workdir_lib
from jaxtrain.tune.phase import member_config


def write_member_hparams(workdir: Path, members, metric: str) -> None:
  """One TensorBoard run per member (members/NNNN) with its settings and final
  metrics, so TensorBoard's HParams view tables and compares the members."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
  for m in members:
    writer = SummaryWriter(logdir=str(workdir / "members" / f"{m['id']:04d}"))
    hparams = writers.hparams_for_tensorboard(m["settings"])
    final = {k: v for k, v in m["last_eval"].items() if isinstance(v, float)}
    # Session entries and scalars, no experiment entry (unlike add_hparams): as in
    # writers.TensorBoard, so that TensorBoard's HParams view builds one table from
    # all runs under a logdir instead of taking the first run's experiment.
    _, session_start, session_end = hparams_summary(hparams, final or {metric: float("nan")})
    writer.file_writer.add_summary(session_start)
    writer.file_writer.add_summary(session_end)
    for name, value in final.items():
      writer.add_scalar(name, value, global_step=m.get("steps", 0))
    writer.close()


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
