"""Transfer learning: init_from, frozen leaves and per-group learning rates, EMA, LoRA,
class filtering / few-shot subsets (jaxtrain/jobs/transfer.py, param_groups.py, ema.py,
lora.py, data/subset.py)."""

import json
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import recipe_for, tiny_config
from jaxtrain import config as config_lib
from jaxtrain import errors, models
from jaxtrain.core import ema, lora, optim, param_groups, step as step_lib
from jaxtrain.data import pipeline, subset
from jaxtrain.jobs import evaluate, train, transfer


def _tiny_cnn(**overrides):
  return tiny_config(**{"model.name": "cnn", "model.features": (4, 8), "model.dense_size": 16,
                        "model.batch_norm": True, "train.num_steps": 20,
                        "train.eval_every_steps": 20, "checkpoint.every_steps": 20,
                        **overrides})


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, data_dir):
  """A tiny CNN with batch norm, trained 20 steps: the run others start from."""
  del data_dir
  workdir = tmp_path_factory.mktemp("source")
  train.run(_tiny_cnn(), workdir)
  return workdir


def _checkpoint_arrays(workdir, step=20):
  item = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(item).item_metadata
  tree = checkpointer.restore(item, args=ocp.args.PyTreeRestore(
      item=meta, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                           meta)))["train_state"]
  return {k: np.asarray(v) for k, v in
          transfer._flat({"params": tree["params"], **tree["model_state"]}, np.asarray).items()}


# --- init_from.

def test_plan_lists_every_problem_in_one_line():
  f32 = lambda *s: (s, "float32")
  source = {"params/conv/kernel": f32(3, 3, 1, 4), "params/dense/kernel": f32(4, 10),
            "params/head/kernel": f32(8, 10), "params/old_name/bias": f32(4),
            "params/gone/bias": f32(2), "batch_stats/bn/mean": ((4,), "bfloat16")}
  target = {"params/conv/kernel": f32(3, 3, 1, 8), "params/dense/kernel": f32(4, 10),
            "params/head/kernel": f32(8, 5), "params/new_name/bias": f32(4),
            "params/extra/bias": f32(3), "batch_stats/bn/mean": f32(4)}
  cfg = tiny_config().init_from
  cfg.workdir = "SRC"
  cfg.exclude = ("params/head/",)
  cfg.rename = ("old_name=new_name",)
  with pytest.raises(errors.UserError) as e:
    transfer.plan(source, target, cfg)
  message = str(e.value)
  assert "\n" not in message and "(4 problems:" in message, message
  for text in ("params/conv/kernel shape differs: float32[3, 3, 1, 4] in the checkpoint, "
               "float32[3, 3, 1, 8] here",
               "batch_stats/bn/mean dtype differs: bfloat16[4] in the checkpoint, float32[4]",
               "params/gone/bias is in the checkpoint but not in this model",
               "params/extra/bias is in this model but not in the checkpoint"):
    assert text in message, message
  assert "head" not in message.split("problems:")[1].split(");")[0]  # Excluded on purpose.
  # Fixing those: the renamed path is copied, the excluded head is not.
  cfg.exclude = ("params/head/", "conv", "gone", "extra", "batch_stats")
  assert transfer.plan(source, target, cfg) == {
      "params/dense/kernel": "params/dense/kernel",
      "params/new_name/bias": "params/old_name/bias"}


def _fresh_cnn_state(config):
  r = recipe_for(config, (8, 8, 1))
  batch = {"inputs": np.zeros((2, 8, 8, 1), np.float32), "labels": np.zeros(2, np.int32)}
  return jax.jit(lambda: r.create(batch, jax.random.PRNGKey(config.seed + 1)))()


def test_init_from_copies_params_and_batch_stats_but_not_the_excluded_head(
    source_run, tmp_path, monkeypatch):
  config = _tiny_cnn()
  monkeypatch.chdir(source_run.parent)
  config.init_from.workdir = source_run.name  # Relative paths work too.
  config.init_from.exclude = ("params/Dense_1/",)
  fresh = _fresh_cnn_state(config)
  state = transfer.init_state(config.init_from, fresh, tmp_path)
  record = json.loads((tmp_path / "init_from.json").read_text())
  assert record["step"] == 20
  assert record["fresh"] == ["params/Dense_1/bias", "params/Dense_1/kernel"]
  assert "batch_stats/BatchNorm_0/mean" in record["copied"]
  got = transfer._flat({"params": state.params, **state.model_state}, np.asarray)
  want = _checkpoint_arrays(source_run)
  for path in record["copied"]:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  np.testing.assert_array_equal(got["params/Dense_1/kernel"],
                                np.asarray(fresh.params["Dense_1"]["kernel"]))
  assert not np.array_equal(got["params/Dense_1/kernel"], want["params/Dense_1/kernel"])
  assert int(state.step) == 0 and jax.tree.all(jax.tree.map(  # The optimizer starts fresh.
      lambda a, b: np.array_equal(a, b), state.opt_state, fresh.opt_state))


def test_init_from_shape_mismatch_is_one_error(source_run):
  config = _tiny_cnn(**{"model.features": (4, 6)})
  config.init_from.workdir = str(source_run)
  with pytest.raises(errors.UserError) as e:
    transfer.init_state(config.init_from, _fresh_cnn_state(config))
  message = str(e.value)
  assert "\n" not in message
  for text in ("params/Conv_1/kernel shape differs: float32[3, 3, 4, 8] in the checkpoint, "
               "float32[3, 3, 4, 6] here", "params/Conv_1/bias", "params/Dense_0/kernel",
               "batch_stats/BatchNorm_1/mean", "init_from.exclude"):
    assert text in message, message


# --- Frozen leaves and learning-rate multipliers.

def _mlp_setup(**optim_overrides):
  config = tiny_config(**{f"optim.{k}": v for k, v in optim_overrides.items()})
  r = recipe_for(config, (64,))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.normal(size=(16, 64)).astype(np.float32),
           "labels": rng.integers(0, 10, 16).astype(np.int32)}
  create = jax.jit(lambda: r.create(batch, jax.random.PRNGKey(0)))
  return r.model, r.tx, r.schedule, batch, create


def test_frozen_leaves_are_bitwise_unchanged_and_have_no_optimizer_state():
  model, tx, schedule, batch, create = _mlp_setup(
      freeze=("Dense_0/",), lr_multipliers=("Dense_1/bias=3.0",), clip_norm=0.5,
      weight_decay=1e-3)
  state = create()
  before = jax.device_get(state.params)
  step = jax.jit(lambda s: step_lib.train_step(model, tx, schedule, s, batch)[0])
  for _ in range(6):
    state = step(state)
  after = jax.device_get(state.params)
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(after["Dense_0"][name], before["Dense_0"][name])
  assert not np.array_equal(after["Dense_1"]["kernel"], before["Dense_1"]["kernel"])
  paths = [param_groups.path_str(k) for k, _ in
           jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
  assert not [p for p in paths if "Dense_0" in p], paths
  assert [p for p in paths if "Dense_1/kernel" in p]  # Adam moments of the trained leaves.
  # The tuner's view of the hyperparameters still works with groups.
  assert float(optim.get_hparams(state.opt_state)["learning_rate"]) == pytest.approx(1e-2)
  opt_state = optim.set_hparams(state.opt_state, {"learning_rate": 0.5})
  assert float(optim.get_hparams(opt_state)["learning_rate"]) == 0.5


def test_lr_multiplier_scales_the_update_of_its_group_only():
  _, plain_tx, _, batch, create_plain = _mlp_setup(name="sgd")
  _, tx, _, _, create = _mlp_setup(name="sgd", lr_multipliers=("Dense_1/=0.5", "kernel=4.0"))
  state = create_plain()
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.1, np.float32), state.params)
  plain, _ = jax.jit(plain_tx.update)(grads, state.opt_state, state.params)
  scaled, _ = jax.jit(tx.update)(grads, create().opt_state, state.params)
  np.testing.assert_array_equal(scaled["Dense_1"]["kernel"], 0.5 * plain["Dense_1"]["kernel"])
  np.testing.assert_array_equal(scaled["Dense_1"]["bias"], 0.5 * plain["Dense_1"]["bias"])
  np.testing.assert_array_equal(scaled["Dense_0"]["kernel"], 4.0 * plain["Dense_0"]["kernel"])
  np.testing.assert_array_equal(scaled["Dense_0"]["bias"], plain["Dense_0"]["bias"])


def test_param_groups_in_a_vmapped_population():
  r = recipe_for(tiny_config(**{"optim.freeze": ("Dense_0/",)}), (64,))
  batch = {"inputs": np.zeros((16, 64), np.float32), "labels": np.zeros(16, np.int32)}
  pop = jax.vmap(lambda rng: r.create(batch, rng))(jax.random.split(jax.random.PRNGKey(0), 3))
  opt_state = optim.set_hparams(pop.opt_state, {"learning_rate": jnp.array([0.1, 0.2, 0.3])})
  np.testing.assert_allclose(optim.get_hparams(opt_state)["learning_rate"], [0.1, 0.2, 0.3])


# --- EMA.

def test_ema_update_math():
  out = ema.update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 4.0])}, jnp.float32(0.75))
  np.testing.assert_allclose(out["w"], [1.5, 2.5])


def test_ema_is_evaluated_checkpointed_and_resumes_bitwise(tmp_path):
  # With parameter groups too: their optimizer state (masked trees) checkpoints and resumes.
  config = tiny_config(**{"train.ema_decay": 0.9, "train.num_steps": 40,
                          "optim.freeze": ("Dense_0/bias",),
                          "optim.lr_multipliers": ("Dense_1/=2.0",)})
  whole = train.run(config, tmp_path / "whole")
  train.run(config, tmp_path / "split", stop_after_steps=20)
  split = train.run(config, tmp_path / "split")
  assert whole["params_sha256"] == split["params_sha256"]
  assert whole["final"] == split["final"]  # eval/ema_* included: the average resumed exactly.
  assert set(whole["final"]) >= {"eval/ema_accuracy", "eval/ema_loss"}
  assert whole["final"]["eval/ema_loss"] != whole["final"]["eval/loss"]
  records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
  assert [r["step"] for r in records if "eval/ema_accuracy" in r] == [20, 40]
  # --mode=eval reports the average too, equal to the loop's final evaluation.
  from jaxtrain.jobs import evaluate  # pylint: disable=g-import-not-at-top
  evaluated = evaluate.run(tmp_path / "whole")
  for key in ("eval/accuracy", "eval/loss", "eval/ema_accuracy", "eval/ema_loss"):
    assert evaluated[key] == pytest.approx(whole["final"][key], rel=1e-6), key


def test_best_checkpoint_and_early_stopping_can_rank_by_the_ema(tmp_path):
  config = tiny_config(**{"train.ema_decay": 0.9, "train.num_steps": 60,
                          "train.eval_every_steps": 10, "checkpoint.best_metric": "eval/ema_loss",
                          "early_stopping.metric": "eval/ema_accuracy",
                          "early_stopping.patience": 100})
  final = train.run(config, tmp_path)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  evals = [(r["eval/ema_loss"], r["step"]) for r in records if "eval/ema_loss" in r]
  assert len(evals) == 6
  assert final["best"]["metric"] == "eval/ema_loss"
  assert final["best"]["step"] == min(evals)[1]
  assert final["best"]["eval/ema_loss"] == min(evals)[0]


# --- LoRA.

class _Attention(nn.Module):
  @nn.compact
  def __call__(self, x, *, train: bool, dropout_rate=0.0):
    del train, dropout_rate
    x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(x)
    return nn.Dense(3)(x.mean(axis=1))


def _logits(model, variables, batch):
  return jax.jit(lambda v: model.apply(v, batch, jax.random.PRNGKey(0), False, {})[0])(
      variables)


@pytest.mark.parametrize("name", ["mlp", "attention", "vit"])
def test_lora_starts_at_the_base_model_and_merges_to_the_same_logits(name):
  if name == "mlp":
    base = models.build(tiny_config().model, 10, (64,))
    batch = {"inputs": np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)}
  elif name == "vit":  # A zoo model (tests/test_zoo.py's tiny variant).
    overrides = {"model.name": "vit", "model.width": 16, "model.depth": 1,
                 "model.num_heads": 2, "model.mlp_ratio": 2.0, "model.patch_size": 4}
    base = models.build(tiny_config(**overrides).model, 10, (8, 8, 1))
    batch = {"inputs": np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)}
  else:
    base = models.from_flax(_Attention())
    batch = {"inputs": np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)}
  targets = tiny_config().model.lora_targets  # The default.
  model = lora.wrap(base, rank=2, scale=0.5, targets=targets)
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), batch)
  base_variables = jax.eval_shape(base.init, jax.random.PRNGKey(1), batch)
  adapted = sorted({param_groups.path_str(k).rsplit("/", 1)[0] for k, _ in
                    jax.tree_util.tree_flatten_with_path(variables["params"])[0]})
  if name == "vit":
    assert adapted == ["block1/attention/key/kernel", "block1/attention/out/kernel",
                       "block1/attention/query/kernel", "block1/attention/value/kernel",
                       "block1/mlp_in/kernel", "block1/mlp_out/kernel", "head/kernel"]
  if name == "attention":
    assert adapted == ["Dense_0/kernel"] + [
        f"MultiHeadDotProductAttention_0/{p}/kernel" for p in ("key", "out", "query", "value")]
    q = variables["params"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    assert q["lora_a"].shape == (6, 2) and q["lora_b"].shape == (2, 8)  # [6, 2 heads, 4].
  # B = 0: the wrapped model computes what its base model computes.
  np.testing.assert_array_equal(
      _logits(model, variables, batch),
      _logits(base, {"params": variables[lora.BASE]}, batch))
  # Trained (here: random) adapters merged into plain kernels give the same logits.
  variables["params"] = jax.tree.map(lambda x: np.random.default_rng(len(x.shape)).normal(
      size=x.shape).astype(np.float32), variables["params"])
  merged, rest = jax.jit(lambda p, b: lora.merge(p, {lora.BASE: b}, 0.5))(
      variables["params"], variables[lora.BASE])
  assert rest == {}
  assert jax.tree.structure(merged) == jax.tree.structure(base_variables["params"])
  np.testing.assert_allclose(_logits(base, {"params": merged}, batch),
                             _logits(model, variables, batch), rtol=1e-5, atol=1e-5)


def test_lora_targets_matching_no_kernel_is_a_user_error():
  base = models.build(tiny_config().model, 10, (64,))
  model = lora.wrap(base, rank=2, scale=1.0, targets="Conv")
  batch = {"inputs": np.zeros((2, 64), np.float32)}
  with pytest.raises(errors.UserError, match=r"'Conv' matches no kernel .*Dense_0/kernel"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)


def test_lora_run_trains_only_adapters_and_exports_a_merged_run(tmp_path):
  config = tiny_config(**{"model.lora_rank": 2, "model.lora_alpha": 4.0,
                          "train.num_steps": 20, "optim.learning_rate": 3e-2})
  result = train.run(config, tmp_path / "lora")
  # Adapters only: (64x2 + 2x64) + (64x2 + 2x10) parameters for 64-64-10.
  assert result["num_params"] == 64 * 2 + 2 * 64 + 64 * 2 + 2 * 10
  merged = evaluate.run(tmp_path / "lora" / "merged")
  assert merged["eval/accuracy"] == result["final"]["eval/accuracy"]
  assert merged["eval/loss"] == pytest.approx(result["final"]["eval/loss"], rel=1e-5)
  exported = json.loads((tmp_path / "lora" / "merged" / "config.json").read_text())
  assert exported["model"]["lora_rank"] == 0
  # A run can start from the merged export like from any run.
  ft = tiny_config(**{"train.num_steps": 1, "checkpoint.every_steps": 1})
  ft.init_from.workdir = str(tmp_path / "lora" / "merged")
  train.run(ft, tmp_path / "ft")
  # A new LoRA run starting from the LoRA run itself: adapters merged when read, the
  # result loaded into the frozen base weights (lora_base), the new adapters fresh.
  r = recipe_for(config, (64,))  # model.lora_rank=2: the LoRA-wrapped model.
  batch = {"inputs": np.zeros((2, 64), np.float32), "labels": np.zeros(2, np.int32)}
  fresh = jax.jit(lambda: r.create(batch, jax.random.PRNGKey(5)))()
  config.init_from.workdir = str(tmp_path / "lora")
  state = transfer.init_state(config.init_from, fresh)
  want = _checkpoint_arrays(tmp_path / "lora" / "merged")
  got = transfer._flat({"params": state.model_state[lora.BASE]}, np.asarray)
  assert sorted(got) == sorted(k for k in want if k.startswith("params/"))
  for path, value in got.items():  # Merged on other devices: last-bit differences.
    np.testing.assert_allclose(value, want[path], rtol=1e-5, atol=1e-6, err_msg=path)
  assert jax.tree.all(jax.tree.map(np.array_equal, state.params, fresh.params))


def _trained_state(workdir):
  return evaluate.restore(workdir).state


def test_lora_trains_a_fresh_head_whole_and_freezes_the_copied_base(source_run, tmp_path):
  """peft's modules_to_save: the head init_from.exclude leaves at its random init is
  trained whole (frozen it would stay random); the copied base stays bitwise frozen."""
  config = _tiny_cnn(**{"model.lora_rank": 2, "optim.learning_rate": 3e-2})
  config.init_from.workdir = str(source_run)
  config.init_from.exclude = ("params/Dense_1/",)  # The head: fresh.
  fresh = _fresh_cnn_state(config)
  result = train.run(config, tmp_path / "lora")
  assert result["lora"]["trained_full"] == ["Dense_1/bias", "Dense_1/kernel"]
  assert "Dense_1/kernel" not in result["lora"]["adapted"]
  assert "Dense_0/kernel" in result["lora"]["adapted"]
  state = _trained_state(tmp_path / "lora")
  head = np.asarray(state.params["Dense_1"]["kernel"])
  assert head.shape == np.asarray(fresh.params["Dense_1"]["kernel"]).shape
  assert not np.array_equal(head, np.asarray(fresh.params["Dense_1"]["kernel"]))  # Trained.
  base = _checkpoint_arrays(source_run)
  np.testing.assert_array_equal(np.asarray(state.model_state[lora.BASE]["Dense_0"]["kernel"]),
                                base["params/Dense_0/kernel"])  # Frozen, copied.
  # Named modules train whole too (model.lora_train_full), without init_from.
  named = tiny_config(**{"model.lora_rank": 2, "model.lora_train_full": ("Dense_0/bias",),
                         "train.num_steps": 2, "train.eval_every_steps": 2,
                         "checkpoint.every_steps": 2})
  assert train.run(named, tmp_path / "named")["lora"]["trained_full"] == ["Dense_0/bias"]


def test_lora_can_freeze_batch_statistics(source_run, tmp_path):
  stats = {}
  for freeze in (False, True):
    config = _tiny_cnn(**{"model.lora_rank": 2, "model.lora_freeze_batch_stats": freeze})
    config.init_from.workdir = str(source_run)
    train.run(config, tmp_path / str(freeze))
    stats[freeze] = jax.device_get(_trained_state(tmp_path / str(freeze)).model_state["batch_stats"])
  base = _checkpoint_arrays(source_run)
  frozen = stats[True]["BatchNorm_0"]["mean"]
  np.testing.assert_array_equal(frozen, base["batch_stats/BatchNorm_0/mean"])
  assert not np.array_equal(stats[False]["BatchNorm_0"]["mean"], frozen)


def test_use_ema_scores_exports_and_starts_from_the_average(tmp_path):
  config = tiny_config(**{"train.ema_decay": 0.9, "train.num_steps": 40,
                          "checkpoint.every_steps": 20})
  result = train.run(config, tmp_path / "run")
  raw = evaluate.run(tmp_path / "run")
  assert raw["weights"] == "raw" and raw["eval/accuracy"] == result["final"]["eval/accuracy"]
  ema_config = config_lib.load_snapshot(tmp_path / "run")
  ema_config.eval.use_ema = True
  averaged = evaluate.run(tmp_path / "run", ema_config)
  assert averaged["weights"] == "ema"
  assert averaged["eval/accuracy"] == result["final"]["eval/ema_accuracy"]
  assert averaged["eval/loss"] == pytest.approx(result["final"]["eval/ema_loss"], rel=1e-6)
  # init_from.use_ema: the new run starts from the average.
  start = tiny_config(**{"train.num_steps": 1, "checkpoint.every_steps": 1,
                         "optim.learning_rate": 1e-9})
  start.init_from.workdir, start.init_from.use_ema = str(tmp_path / "run"), True
  fresh = _fresh_mlp_state(start)
  state = transfer.init_state(start.init_from, fresh)
  ema_params = jax.device_get(_trained_state(tmp_path / "run").ema_params)
  chex.assert_trees_all_equal(jax.device_get(state.params), ema_params, strict=True)
  # Without an average to use, both are one line.
  no_ema = tiny_config(**{"eval.use_ema": True})
  with pytest.raises(errors.UserError, match="eval.use_ema=True needs train.ema_decay > 0"):
    train.run(no_ema, tmp_path / "no_ema")
  train.run(tiny_config(**{"train.num_steps": 2, "train.eval_every_steps": 2,
                           "checkpoint.every_steps": 2}), tmp_path / "plain")
  start.init_from.workdir = str(tmp_path / "plain")
  with pytest.raises(errors.UserError, match="kept no EMA"):
    transfer.init_state(start.init_from, fresh)


def test_merged_lora_export_takes_the_ema_with_use_ema(tmp_path):
  config = tiny_config(**{"model.lora_rank": 2, "train.ema_decay": 0.9, "eval.use_ema": True,
                          "train.num_steps": 20, "optim.learning_rate": 3e-2})
  result = train.run(config, tmp_path / "lora")
  merged = json.loads((tmp_path / "lora" / "merged" / "final.json").read_text())
  assert merged["weights"] == "ema"
  assert evaluate.run(tmp_path / "lora" / "merged")["eval/accuracy"] == (
      result["final"]["eval/ema_accuracy"])


def _fresh_mlp_state(config):
  r = recipe_for(config, (64,))
  batch = {"inputs": np.zeros((2, 64), np.float32), "labels": np.zeros(2, np.int32)}
  return jax.jit(lambda: r.create(batch, jax.random.PRNGKey(7)))()


# --- Class filtering and few-shot subsets.

def test_subset_selection_is_deterministic_and_per_class():
  labels = np.repeat(np.arange(10), 30)
  a = subset.select(labels, (5, 6, 7, 8, 9), 20, seed=3)
  assert len(a) == 100 and np.array_equal(a, subset.select(labels, (5, 6, 7, 8, 9), 20, 3))
  assert np.array_equal(np.bincount(labels[a], minlength=10), [0] * 5 + [20] * 5)
  assert not np.array_equal(a, subset.select(labels, (5, 6, 7, 8, 9), 20, seed=4))
  assert np.array_equal(subset.select(labels, (1,), 0, 0), np.arange(30, 60))


def test_data_classes_and_examples_per_class_reach_both_pipelines():
  config = tiny_config(**{"data.classes": (5, 6, 7, 8, 9), "data.examples_per_class": 20,
                          "data.batch_size": 10})
  device, _ = pipeline.create_train_data(config.data, 0)
  labels = np.asarray(device.arrays["labels"])
  assert np.array_equal(np.bincount(labels, minlength=10), [0] * 5 + [20] * 5)
  config.data.pipeline = "grain"
  grain_data, _ = pipeline.create_train_data(config.data, 0)
  grain_labels = np.concatenate([next(grain_data)["labels"] for _ in range(10)])
  assert sorted(grain_labels) == sorted(labels)  # One epoch: the same 100 examples.
  _, eval_labels = pipeline.load_eval_arrays(config.data)
  assert set(eval_labels) == {5, 6, 7, 8, 9} and len(eval_labels) > 150


# --- The demo (docs/guide/finetune.md): digits 0-4 -> 5-9 from 20 examples per class.

def _run_demo(prefix, tmp_path, monkeypatch):
  """Runs configs/PREFIX_{pretrain_0to4,finetune_5to9,scratch_5to9}.py (seed 0) as
  on the command line; returns the three eval accuracies and init_from.json."""
  from jaxtrain import main
  repo = Path(__file__).resolve().parents[1]
  monkeypatch.chdir(repo)  # The config paths below are repo-relative, as in the guide.

  def run(name, *flags):
    workdir = tmp_path / name
    assert main.main(["jaxtrain.main", f"--config=configs/{prefix}_{name}.py",
                      f"--workdir={workdir}", "--config.mesh.num_devices=1", *flags]) == 0
    return json.loads((workdir / "final.json").read_text())["final"]["eval/accuracy"]

  pretrained = run("pretrain_0to4")
  finetuned = run("finetune_5to9", f"--config.init_from.workdir={tmp_path / 'pretrain_0to4'}")
  scratch = run("scratch_5to9")
  record = json.loads((tmp_path / "finetune_5to9" / "init_from.json").read_text())
  return pretrained, finetuned, scratch, record


def _recorded(name: str) -> float:
  """The test accuracy scripts/reproduce.py recorded for run `name` (seed 0)."""
  results = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results.json")
                       .read_text())
  return results[f"{name}.accuracy"]["value"]


@pytest.mark.slow
def test_finetune_demo_mnist1d(tmp_path, monkeypatch):
  """MNIST-1D 0-4 -> 5-9 from 20 examples per class: fine-tuning beats scratch.

  Over seeds 0-4 it wins on every seed at each of six learning-rate x step
  settings (finetune.md; scripts/finetune_demo.py); seed 0 is checked here, against
  the recorded values (docs/results.json, what the README quotes; the tolerance
  covers this test's 8 fake devices) and by a margin larger than one seed's spread.
  """
  pretrained, finetuned, scratch, record = _run_demo("mnist1d_cnn", tmp_path, monkeypatch)
  assert pretrained == pytest.approx(_recorded("mnist1d_cnn_pretrain_0to4"), abs=0.01)
  assert record["fresh"] == ["params/Dense_1/bias", "params/Dense_1/kernel"]
  assert len(record["copied"]) == 8  # 3 convolutions and the dense layer, kernel + bias.
  assert finetuned == pytest.approx(_recorded("mnist1d_cnn_finetune_5to9"), abs=0.02)
  assert scratch == pytest.approx(_recorded("mnist1d_cnn_scratch_5to9"), abs=0.02)
  assert finetuned - scratch >= 0.02


@pytest.mark.slow
def test_finetune_demo_digits_vit(tmp_path, monkeypatch):
  """Digits 0-4 -> 5-9 with the ViT: fine-tuning beats scratch on every seed at each
  of four settings (finetune.md); seed 0 here, golden values and a margin.

  The ViT's few-shot runs are sensitive to float rounding: in this test process
  (8 fake host devices, conftest.py) seed 0 fine-tunes to 0.844, in a plain
  process (the record, docs/results.json) to 0.868; hence the wider tolerance. The
  margin is the claim.
  """
  pretrained, finetuned, scratch, record = _run_demo("digits_vit", tmp_path, monkeypatch)
  assert pretrained == pytest.approx(_recorded("digits_vit_pretrain_0to4"), abs=0.015)
  assert record["fresh"] == ["params/head/bias", "params/head/kernel"]
  assert finetuned == pytest.approx(_recorded("digits_vit_finetune_5to9"), abs=0.04)
  assert scratch == pytest.approx(_recorded("digits_vit_scratch_5to9"), abs=0.04)
  assert finetuned - scratch >= 0.05


@pytest.mark.slow
def test_finetune_demo_digits_cnn(tmp_path, monkeypatch):
  """The 8x8 digits CNN, where fine-tuning does NOT beat scratch (finetune.md).

  Not asserted: an ordering. Over 5 seeds scratch is ahead (0.969 vs 0.952); seed 0
  happens to favour fine-tuning by one test example, and a test built on that would
  be a cherry-pick. Golden values of the table (seed 0) instead.
  """
  pretrained, finetuned, scratch, record = _run_demo("digits_cnn", tmp_path, monkeypatch)
  assert pretrained >= 0.98
  assert record["fresh"] == ["params/Dense_1/bias", "params/Dense_1/kernel"]
  # A deliberate change to the configs or the models should update the table in
  # docs/guide/finetune.md and these numbers together.
  assert finetuned == pytest.approx(0.976, abs=0.02)
  assert scratch == pytest.approx(0.970, abs=0.02)
