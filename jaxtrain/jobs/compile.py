"""`--mode=compile`: the ahead-of-time report of a run's programs.

Builds everything a run builds (data, model, state shapes) through
`jaxtrain.jobs.setup` and compiles the train step for the real shapes, without
allocating the state, training or writing anything. It prints the memory one
device needs (`compiled.memory_analysis()`) and the FLOPs of one step
(`compiled.cost_analysis()`), and fails with one line when the program does not
fit in the device's memory.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxtrain import errors
from jaxtrain.core import multistep
from jaxtrain.io import compilation, throughput
from jaxtrain.jobs import checks, setup


def report(config, programs: dict[str, tuple[Any, tuple]], what: str = "",
           fix: str = "") -> dict[str, Any]:
  """Compiles each `name -> (jitted fn, args)` and returns the memory and FLOPs report.

  `programs["train_step"]` is the one-step program (its FLOPs are per step);
  others (the K-step scan) add to the memory check only. `what` names what the
  program holds in the refusal (e.g. "a population of 64 members"), `fix` leads its
  advice.

  Raises:
    UserError: a program needs more memory per device than the device has.
  """
  result: dict[str, Any] = {"programs": {}}
  device = None
  for name, (fn, args) in programs.items():
    compiled = fn.lower(*throughput.abstract(args)).compile()
    leaves = [x for x in jax.tree.leaves(args) if getattr(x, "sharding", None) is not None]
    device = next(iter(leaves[0].sharding.device_set)) if leaves else jax.devices()[0]
    result["programs"][name] = {"memory_bytes": compilation.memory_bytes(compiled),
                                "flops": throughput.cost_flops(compiled),
                                "devices": throughput.num_devices(args)}
  step = result["programs"]["train_step"]
  result["flops_per_step_per_device"] = step["flops"]
  result["flops_per_step"] = step["flops"] and step["flops"] * step["devices"]
  result["device_kind"] = device.device_kind
  needed = max((p["memory_bytes"] or {}).get("total", 0) for p in result["programs"].values())
  result["memory_per_device_bytes"] = needed
  limit = compilation.device_memory_bytes(device, config.compile.device_memory_gb)
  result["device_memory_bytes"] = limit
  if limit is not None and needed > limit:
    worst = max(result["programs"], key=lambda n: (result["programs"][n]["memory_bytes"] or {})
                .get("total", 0))
    raise errors.UserError(
        f"the compiled {worst}{' of ' + what if what else ''} needs {needed / 1e9:.3g} GB per "
        f"device but {device.device_kind} has {limit / 1e9:.3g} GB (compile.device_memory_gb="
        f"{config.compile.device_memory_gb}); {fix + ', ' if fix else ''}lower data.batch_size, "
        "set model.remat=True or precision='bf16', or shard over more devices")
  return result


def format_report(result: dict[str, Any]) -> str:
  """Human-readable lines of a `report`."""
  def gb(n):
    return "unknown" if n is None else f"{n / 1e9:.4g} GB"
  lines = []
  if "population" in result:  # A tuning config (jaxtrain.tune.loop.compile_report).
    lines.append(f"population: {result['population']} members in one program "
                 f"(execution={result['execution']}), {result['steps_per_call']} steps per "
                 "dispatch: memory and FLOPs are the whole population's, per dispatch")
  for name, p in result["programs"].items():
    m = p["memory_bytes"] or {}
    lines.append(f"{name}: memory per device {gb(m.get('total'))} (arguments "
                 f"{gb(m.get('arguments'))}, outputs {gb(m.get('outputs'))}, aliased "
                 f"{gb(m.get('aliased'))}, temporaries {gb(m.get('temporaries'))}); "
                 f"{p['devices']} device(s)")
  flops = result["flops_per_step"]
  lines.append(f"FLOPs per step: {'unknown' if flops is None else f'{flops:.4g}'} "
               f"({result['device_kind']})")
  limit = result["device_memory_bytes"]
  lines.append(f"fits: needs {gb(result['memory_per_device_bytes'])} of "
               + (f"{gb(limit)} per device" if limit is not None else
                  "unknown device memory (set compile.device_memory_gb to check)"))
  return "\n".join(lines)


def run(config, workdir=None) -> dict[str, Any]:
  """`--mode=compile`: the report for `config`; writes nothing (`workdir` is accepted
  for symmetry with the other modes).

  Raises:
    UserError: a bad config, or a program that does not fit the device.
  """
  del workdir
  checks.validate_single_run(config)
  compilation.enable_cache(config.compile.cache_dir)  # Before the first compile.
  s = setup.build(config)
  prog = setup.programs(s)
  state = jax.eval_shape(prog.create, s.train_data.sample_batch(), np.int32(config.seed))
  acc, guard, order, data_args = setup.initial_args(s)
  programs = {"train_step": (prog.train, (state, acc, guard, order, *data_args))}
  k = config.train.steps_per_call
  if k > 1:
    many_data = (data_args if s.train_data.kind == "device" else
                 (multistep.stack_batches([data_args[0]] * k), None))
    programs["train_steps_per_call"] = (prog.train_many, (state, acc, guard, order, *many_data))
  return report(config, programs)
