"""Performance features: steps per call, precision, remat, compile mode, throughput, profiling."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import main, paths
from jaxtrain.core import step as step_lib
from jaxtrain.io import compilation, throughput, writers
from jaxtrain.jobs import train
from tests.conftest import recipe_for, tiny_config

TIMING_KEYS = ("steps_per_sec", "examples_per_sec", "mfu", "wall_time")
PEAK_TFLOPS = 0.5  # A made-up CPU peak, so that mfu is reported.


def _records(workdir):
  """metrics.jsonl without the wall-clock values."""
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in writers.read_metrics(workdir)]


@pytest.fixture(scope="module")
def one_step_per_call(tmp_path_factory):
  """The reference run (K = 1), with a profile of steps 5-7 and a peak for mfu."""
  workdir = tmp_path_factory.mktemp("k1")
  config = tiny_config(**{"profile.start_step": 5, "profile.num_steps": 3,
                          "throughput.peak_tflops_per_device": PEAK_TFLOPS})
  return workdir, train.run(config, workdir)


def test_steps_per_call_is_bitwise_identical_and_resumes(one_step_per_call, tmp_path):
  # K = 4 with log every 10, eval/save every 20: calls of 4, 4, 1, 1 steps per interval.
  ref_dir, ref = one_step_per_call
  config = tiny_config(**{"train.steps_per_call": 4})
  full = train.run(config, tmp_path / "full")
  assert full["params_sha256"] == ref["params_sha256"]
  assert _records(tmp_path / "full") == _records(ref_dir)
  assert full["final"] == ref["final"] and full["checkpoint_steps"] == ref["checkpoint_steps"]
  assert full["train_step_compiles"] == 2  # The one-step program and the K-step scan.

  stopped = train.run(config, tmp_path / "resumed", stop_after_steps=30)
  assert stopped["status"] == "stopped" and stopped["step"] == 30
  resumed = train.run(config, tmp_path / "resumed")
  assert resumed["params_sha256"] == ref["params_sha256"]
  assert _records(tmp_path / "resumed") == _records(ref_dir)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"data.pipeline": "grain"},  # K host batches stacked per call.
    {"model.name": "cnn", "model.features": (8, 16), "model.dense_size": 32},  # Unrolled scan.
], ids=["grain", "cnn"])
def test_steps_per_call_is_bitwise_identical_for_grain_and_cnn(tmp_path, overrides):
  one = train.run(tiny_config(**overrides), tmp_path / "k1")
  four = train.run(tiny_config(**overrides, **{"train.steps_per_call": 4}), tmp_path / "k4")
  assert four["params_sha256"] == one["params_sha256"]
  assert _records(tmp_path / "k4") == _records(tmp_path / "k1")


def test_throughput_is_logged(one_step_per_call):
  workdir, _ = one_step_per_call
  for record in writers.read_metrics(workdir):
    if "steps_per_sec" not in record:
      continue
    assert record["examples_per_sec"] == pytest.approx(record["steps_per_sec"] * 32)
    # MLP 64-64-10, batch 32: about 6 * 32 * (64*64 + 64*10) FLOPs of matmuls a step.
    assert 5e5 < record["flops_per_step"] < 2e6
    assert record["mfu"] == pytest.approx(
        record["flops_per_step"] * record["steps_per_sec"] / (PEAK_TFLOPS * 1e12))


def test_profile_trace_is_written(one_step_per_call):
  workdir, _ = one_step_per_call
  traces = list((workdir / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0


def test_peak_flops_table():
  assert throughput.peak_flops_per_device("TPU v5 lite") == 197e12
  assert throughput.peak_flops_per_device("TPU v5") == 459e12
  assert throughput.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert throughput.peak_flops_per_device("NVIDIA A100-SXM4-80GB") == 312e12
  assert throughput.peak_flops_per_device("cpu") is None
  assert throughput.peak_flops_per_device("cpu", 2.0) == 2e12


def _state_and_batch(precision, **model_overrides):
  c = tiny_config(precision=precision, **{f"model.{k}": v for k, v in model_overrides.items()})
  r = recipe_for(c, (8, 8))
  model, tx, schedule = r.model, r.tx, r.schedule
  rng = np.random.default_rng(0)
  batch = {"inputs": jnp.asarray(rng.random((16, 8, 8)), jnp.float32),
           "labels": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  state = r.create(batch, jax.random.PRNGKey(0))
  return model, tx, schedule, state, batch


def test_bf16_computes_in_bf16_and_keeps_f32_state():
  model, tx, schedule, state, batch = _state_and_batch("bf16")
  step = jax.jit(lambda s, b: step_lib.train_step(model, tx, schedule, s, b))
  jaxpr = str(jax.make_jaxpr(lambda s, b: step_lib.train_step(model, tx, schedule, s, b))(
      state, batch))
  assert "bf16" in jaxpr  # The matmuls run in bfloat16...
  for _ in range(3):
    state, metrics = step(state, batch)
  # ...while parameters, optimizer state and the loss stay float32.
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype
  assert metrics["loss"].dtype == jnp.float32 and jnp.isfinite(metrics["loss"])


def test_bf16_run_trains_like_f32(one_step_per_call, tmp_path):
  _, ref = one_step_per_call
  final = train.run(tiny_config(precision="bf16"), tmp_path)
  losses = [r["train/loss"] for r in writers.read_metrics(tmp_path)]
  assert losses[-1] < 0.5 * losses[0]
  assert final["final"]["eval/accuracy"] == pytest.approx(ref["final"]["eval/accuracy"],
                                                          abs=0.03)


@pytest.mark.parametrize("overrides", [
    {},  # MLP
    pytest.param({"name": "cnn", "features": (4, 8), "dense_size": 16, "batch_norm": True},
                 marks=pytest.mark.slow),  # Compiling conv gradients twice: ~10 s.
])
def test_remat_gives_the_same_loss_and_gradients(overrides):
  def loss_and_grads(remat):
    model, _, _, state, batch = _state_and_batch("f32", remat=remat, **overrides)

    def loss_fn(params):
      logits, _ = model.apply({"params": params, **state.model_state}, batch, state.rng, True,
                              {"dropout_rate": jnp.float32(0.0)})
      return jnp.mean(jax.nn.logsumexp(logits, -1)
                      - jnp.take_along_axis(logits, batch["labels"][:, None], -1)[:, 0])
    return jax.jit(jax.value_and_grad(loss_fn))(state.params)

  (loss, grads), (loss_remat, grads_remat) = loss_and_grads(False), loss_and_grads(True)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_remat)  # Same parameter tree.
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  chex.assert_trees_all_close(grads_remat, grads, rtol=1e-5, atol=1e-7, strict=True)


def test_compile_mode_reports_memory_and_flops(tmp_path, capsys):
  args = ["jaxtrain.main", "--config=configs/digits_mlp.py", f"--workdir={tmp_path}/run",
          "--mode=compile", "--config.train.steps_per_call=5"]
  assert main.main(args) == 0
  out = capsys.readouterr()
  report = json.loads(out.out)
  step = report["programs"]["train_step"]
  assert step["memory_bytes"]["total"] > step["memory_bytes"]["arguments"] > 0
  # MLP 64-256-256-10, batch 128: 6 * 128 * 84k parameters ~ 6.5e7 FLOPs of matmuls.
  assert 5e7 < report["flops_per_step"] < 1e8
  assert "train_steps_per_call" in report["programs"] and "FLOPs per step" in out.err
  assert not (tmp_path / "run").exists()  # Nothing trained, nothing written.

  code = main.main(args[:-1] + ["--config.compile.device_memory_gb=0.001"])
  err = capsys.readouterr().err
  assert code == 2 and len(err.splitlines()) == 1
  assert "needs" in err and "compile.device_memory_gb=0.001" in err and "data.batch_size" in err



def test_compile_mode_of_a_search_reports_the_whole_population(tmp_path, capsys):
  """It reported one member's single-run step; the population's program holds every
  member's state, so its arguments grow by one state per member."""
  arguments = {}
  for n in (2, 4, 8):
    assert main.main(["jaxtrain.main", "--config=configs/digits_pbt.py",
                      f"--workdir={tmp_path}/run", "--mode=compile",
                      f"--config.tune.population_size={n}",
                      "--config.mesh.num_devices=1"]) == 0  # All on one device.
    report = json.loads(capsys.readouterr().out)
    assert report["population"] == n and report["execution"] == "vmap"
    arguments[n] = report["programs"]["train_step"]["memory_bytes"]["arguments"]
  per_member = (arguments[4] - arguments[2]) / 2
  assert arguments[8] - arguments[4] == 4 * per_member  # Linear in the members.
  # At least one member's parameters and Adam moments (MLP 64-256-256-10: 85k floats).
  assert per_member >= 3 * 85_000 * 4
  assert not (tmp_path / "run").exists()
  # A population that does not fit: one line naming its size and the memory it needs.
  code = main.main(["jaxtrain.main", "--config=configs/digits_pbt.py", f"--workdir={tmp_path}/run",
                    "--mode=compile", "--config.tune.population_size=64",
                    "--config.mesh.num_devices=1", "--config.compile.device_memory_gb=0.01"])
  err = capsys.readouterr().err
  assert code == 2 and len(err.splitlines()) == 1, err
  assert "a population of 64 members needs" in err and "GB per device" in err
  assert "tune.population_size" in err and not (tmp_path / "run").exists()

def test_compilation_cache_dir(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
  try:
    assert compilation.enable_cache(str(tmp_path / "cache")) == str(tmp_path / "cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert jax.config.jax_enable_compilation_cache
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # Store even tiny ones.
    jax.jit(lambda x: jnp.cos(x) * 7 - 2)(jnp.ones(3)).block_until_ready()
    assert list((tmp_path / "cache").glob("jit__lambda-*-cache"))
    if not paths.is_url(tmp_path):  # JAX's lock is a local file (gs://: no size limit).
      assert (tmp_path / "cache" / ".lockfile").exists()  # Shared safely between processes.
    else:
      assert jax.config.jax_compilation_cache_max_size == -1
    assert compilation.enable_cache("") is None
    assert not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
    compilation.enable_cache(before or "")


def test_steps_per_call_plan():
  from jaxtrain.core import multistep
  stops = multistep.next_stop(0, (10, 20), (60, None))
  assert stops == 10
  sizes, step = [], 0
  while step < 20:
    n = multistep.call_size(step, 4, multistep.next_stop(step, (10, 20), (60, None)))
    sizes.append(n)
    step += n
  assert sizes == [4, 4, 1, 1, 4, 4, 1, 1]
  assert multistep.scan_unroll(0, "cnn", "cpu") is True
  assert multistep.scan_unroll(0, "mlp", "cpu") == 1  # Rolled.
  assert multistep.scan_unroll(0, "cnn", "gpu") == 1
  assert multistep.scan_unroll(3, "cnn", "cpu") == 3
