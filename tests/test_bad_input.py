"""Mistakes a user can make on the command line: exit code 2 and one line.

Each case is a command line and the substrings its one `error: ` line on stderr
must contain (the key, path or value, and the hint where there is one). Every
case fails before anything is compiled and prints nothing else to stderr: no
traceback, no absl/TFDS warnings.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxtrain import main
from tests.conftest import copy_tree, files_under, remove_tree

REPO = Path(__file__).resolve().parents[1]
CONFIG = "--config=configs/digits_mlp.py"
WORKDIR = "--workdir={tmp}/run"  # {tmp}: the test's tmp_path (gs:// under the gs scheme).

# Config files for the cases below, written into {local}: a local folder under either
# scheme (a config file is a Python file, imported from a local path).
FILES = {
    "syntax_error.py": "def get_config(:\n  pass\n",
    "returns_dict.py": "def get_config():\n  return {'train': {'num_steps': 5}}\n",
    "returns_none.py": ("from jaxtrain.config import base_config\n\n\n"
                        "def get_config():\n  base_config()\n"),
    "raises.py": "def get_config():\n  raise ValueError('boom')\n",
    "extra_key.py": ("from jaxtrain.config import base_config\n\n\n"
                     "def get_config():\n  c = base_config()\n  c.train.num_epochs = 3\n"
                     "  return c\n"),
    "a_file": "not a directory\n",
    "space_typo.py": ("from jaxtrain.configs.digits_pbt import get_config as base\n\n\n"
                      "def get_config():\n  c = base()\n"
                      "  c.tune.space.optim = dict(learning_rat='loguniform(1e-4, 1e-1)')\n"
                      "  return c\n"),
    "space_empty_range.py": ("from jaxtrain.configs.digits_pbt import get_config as base\n\n\n"
                             "def get_config():\n  c = base()\n"
                             "  c.tune.space.optim = dict(learning_rate='uniform(0.1, 0.01)')\n"
                             "  return c\n"),
    "space_log_zero.py": ("from jaxtrain.configs.digits_pbt import get_config as base\n\n\n"
                          "def get_config():\n  c = base()\n"
                          "  c.tune.space.optim = dict(weight_decay='loguniform(0, 1e-2)')\n"
                          "  return c\n"),
}

# (id, command-line args after the program name, substrings of the error line)
CASES = [
    # Tuning: search spaces and population.
    ("space_unknown_key", ["--config={local}/space_typo.py", WORKDIR],
     ["tune.space.optim.learning_rat", "did you mean 'optim.learning_rate'"]),
    ("space_empty_range", ["--config={local}/space_empty_range.py", WORKDIR],
     ["tune.space.optim.learning_rate", "range is empty"]),
    ("space_loguniform_zero", ["--config={local}/space_log_zero.py", WORKDIR],
     ["tune.space.optim.weight_decay", "loguniform needs low > 0"]),
    ("population_size_zero", ["--config=configs/digits_pbt.py", WORKDIR,
                              "--config.tune.population_size=0"],
     ["tune.population_size=0 must be > 0"]),
    ("unknown_exploit", ["--config=configs/digits_pbt.py", WORKDIR,
                         "--config.tune.pbt.exploit=best"],
     ["tune.pbt.exploit='best'", "truncation"]),
    ("space_override_bad_spec", ["--config=configs/digits_pbt.py", WORKDIR,
                                 "--config.tune.space.optim.learning_rate=lognormal(1,2)"],
     ["tune.space.optim.learning_rate", "not a search dimension"]),
    ("soup_top_k_negative", ["--config=configs/digits_pbt.py", WORKDIR,
                             "--config.tune.soup.top_k=-1"],
     ["tune.soup.top_k=-1 must be >= 0"]),
    ("warm_start_without_a_sampler", ["--config=configs/digits_pbt.py", WORKDIR,
                                      "--config.tune.warm_start_from={tmp}"],
     ["tune.warm_start_from seeds a Bayesian search's sampler", "init_from.workdir"]),
    ("warm_start_from_no_search", ["--config=configs/digits_bayes.py", WORKDIR,
                                   "--config.tune.warm_start_from={tmp}"],
     ["is not a tuning workdir"]),
    ("member_of_a_search", ["--config=configs/digits_pbt.py", WORKDIR, "--config.tune.member=3"],
     ["tune.member=3 is a single run's key", "tune.member=-1"]),
    # Flags and overrides.
    ("workdir_on_unsupported_storage", [CONFIG, "--workdir=s3://bucket/run"],
     ["--workdir=s3://bucket/run", "s3:// is not supported", "gs:// or local path"]),
    ("unknown_key", [CONFIG, WORKDIR, "--config.train.num_stepz=5"],
     ["'train.num_stepz'", "did you mean 'train.num_steps'"]),
    ("unknown_section", [CONFIG, WORKDIR, "--config.trian.num_steps=5"],
     ["'trian.num_steps'", "did you mean 'train.num_steps'"]),
    ("unknown_nested_key", [CONFIG, WORKDIR, "--config.optim.schedule.warmup=10"],
     ["'optim.schedule.warmup'", "did you mean 'optim.schedule.warmup_steps'"]),
    ("unknown_deep_key", [CONFIG, WORKDIR, "--config.train.foo.bar=5"],
     ["'train.foo.bar'", "jaxtrain/config.py"]),
    ("int_not_a_number", [CONFIG, WORKDIR, "--config.train.num_steps=abc"],
     ["'train.num_steps'", "type int", "'abc'"]),
    ("float_for_int", [CONFIG, WORKDIR, "--config.train.num_steps=1.5"],
     ["'train.num_steps'", "type int", "'1.5'"]),
    ("float_not_a_number", [CONFIG, WORKDIR, "--config.optim.learning_rate=fast"],
     ["'optim.learning_rate'", "type float", "'fast'"]),
    ("bool_not_a_bool", [CONFIG, WORKDIR, "--config.model.batch_norm=maybe"],
     ["'model.batch_norm'", "type bool", "'maybe'"]),
    ("unknown_flag", [CONFIG, "--workdirr={tmp}/run"], ["'workdirr'", "workdir"]),
    ("unknown_mode", [CONFIG, WORKDIR, "--mode=tune"], ["--mode=tune", "train|eval"]),
    ("positional_argument", ["configs/digits_mlp.py", WORKDIR],
     ["'configs/digits_mlp.py'", "--config="]),
    ("missing_config", [WORKDIR], ["--config is required"]),
    ("missing_workdir", [CONFIG], ["--workdir is required"]),
    # Config files.
    ("config_file_missing", ["--config=configs/digit_mlp.py", WORKDIR],
     ["'configs/digit_mlp.py' not found", "did you mean 'digits_mlp.py'"]),
    ("config_syntax_error", ["--config={local}/syntax_error.py", WORKDIR],
     ["syntax_error.py", "SyntaxError"]),
    ("config_raises", ["--config={local}/raises.py", WORKDIR],
     ["raises.py failed to load", "ValueError: boom"]),
    ("config_arg_not_taken", ["--config=configs/digits_mlp.py:fast", WORKDIR],
     ["digits_mlp.py:fast", "TypeError", "get_config()"]),
    ("config_returns_dict", ["--config={local}/returns_dict.py", WORKDIR],
     ["returns_dict.py", "returned a dict", "base_config()"]),
    ("config_returns_none", ["--config={local}/returns_none.py", WORKDIR],
     ["returns_none.py", "returned None"]),
    ("config_extra_key", ["--config={local}/extra_key.py", WORKDIR],
     ["unknown config key 'train.num_epochs'"]),
    # Values.
    ("zero_batch_size", [CONFIG, WORKDIR, "--config.data.batch_size=0"],
     ["data.batch_size=0 must be > 0"]),
    ("negative_batch_size", [CONFIG, WORKDIR, "--config.data.batch_size=-8"],
     ["data.batch_size=-8 must be > 0"]),
    ("negative_learning_rate", [CONFIG, WORKDIR, "--config.optim.learning_rate=-0.1"],
     ["optim.learning_rate=-0.1 must be > 0"]),
    ("zero_num_steps", [CONFIG, WORKDIR, "--config.train.num_steps=0"],
     ["train.num_steps=0 must be > 0"]),
    ("dropout_rate_one", [CONFIG, WORKDIR, "--config.model.dropout_rate=1.0"],
     ["model.dropout_rate=1.0", "[0.0, 1.0)"]),
    ("warmup_not_below_num_steps", [CONFIG, WORKDIR, "--config.optim.schedule.warmup_steps=500"],
     ["optim.schedule.warmup_steps=500", "train.num_steps=500"]),
    ("piecewise_length_mismatch",
     [CONFIG, WORKDIR, "--config.optim.schedule.name=piecewise",
      "--config.optim.schedule.boundaries=(100,200)", "--config.optim.schedule.scales=(0.5,)"],
     ["optim.schedule.boundaries", "optim.schedule.scales", "same length"]),
    # Names.
    ("unknown_model", [CONFIG, WORKDIR, "--config.model.name=mlpp"],
     ["model.name='mlpp'", "did you mean 'mlp'", "cnn, gru, lstm, mlp"]),
    ("unknown_activation", [CONFIG, WORKDIR, "--config.model.activation=relux"],
     ["model.activation='relux'", "did you mean 'relu'"]),
    ("unknown_optimizer", [CONFIG, WORKDIR, "--config.optim.name=adamm"],
     ["optim.name='adamm'", "did you mean 'adam'", "sgd"]),
    ("unknown_schedule", [CONFIG, WORKDIR, "--config.optim.schedule.name=cosine"],
     ["optim.schedule.name='cosine'", "did you mean 'warmup_cosine'"]),
    ("unknown_pipeline", [CONFIG, WORKDIR, "--config.data.pipeline=gpu"],
     ["data.pipeline='gpu'", "auto, device, grain"]),
    ("unknown_early_stopping_metric", [CONFIG, WORKDIR, "--config.early_stopping.metric=eval/acc"],
     ["early_stopping.metric='eval/acc'", "did you mean 'eval/accuracy'"]),
    ("unknown_tune_strategy", [CONFIG, WORKDIR, "--config.tune.strategy=pbtt"],
     ["tune.strategy='pbtt'", "did you mean 'pbt'"]),
    ("unknown_dataset", [CONFIG, WORKDIR, "--config.data.name=digit"],
     ["data.name='digit'", "did you mean 'digits'"]),
    # Model zoo (jaxtrain/models/zoo.py).
    ("resnet_depth_unknown", [CONFIG, WORKDIR, "--config.model.name=resnet",
                              "--config.model.resnet_depth=20"],
     ["model.resnet_depth=20", "10, 18, 34, 50, 101, 152"]),
    ("heads_do_not_divide_width", [CONFIG, WORKDIR, "--config.model.name=vit",
                                   "--config.model.width=30", "--config.model.num_heads=4"],
     ["model.num_heads=4 must divide model.width=30", "model.num_heads=3"]),
    ("patch_does_not_divide_image", [CONFIG, WORKDIR, "--config.model.name=vit",
                                     "--config.model.patch_size=3"],
     ["model.patch_size=3", "8x8"]),
    ("unknown_positions", [CONFIG, WORKDIR, "--config.model.name=transformer",
                           "--config.model.positions=sinusoid"],
     ["model.positions='sinusoid'", "learned, rotary"]),
    ("transformer_on_images", [CONFIG, WORKDIR, "--config.model.name=transformer"],
     ["model.name='transformer'", "data.name='charlm'"]),
    ("classifier_on_tokens", [CONFIG, WORKDIR, "--config.data.name=charlm"],
     ["model.name='mlp'", "label per token", "model.name='transformer'"]),
    # Workdir.
    ("workdir_is_a_file", [CONFIG, "--workdir={tmp}/a_file"], ["a_file is a file"]),
    # Local on purpose: a local file has no children, while on gs:// a name can be an
    # object and a folder at once (gs://B/a_file/run below the object a_file is valid).
    ("workdir_under_a_file", [CONFIG, "--workdir={local}/a_file/run"],
     ["a_file/run is not writable"]),
    ("workdir_in_proc", [CONFIG, "--workdir=/proc/jaxtrain_run"],
     ["/proc/jaxtrain_run is not writable"]),
    # Data (the embedded digits are prepared in the session's data dir).
    ("catalog_dataset_not_prepared", [CONFIG, WORKDIR, "--config.data.name=mnist"],
     ["'mnist' is not prepared", "tfds build mnist"]),
    ("unknown_train_split", [CONFIG, WORKDIR, "--config.data.train_split=trian"],
     ["'trian'", "did you mean 'train'", "available splits: test, train"]),
    ("unknown_eval_split", [CONFIG, WORKDIR, "--config.data.eval_split=tset"],
     ["'tset'", "did you mean 'test'", "available splits: test, train"]),
    ("batch_larger_than_dataset", [CONFIG, WORKDIR, "--config.data.batch_size=5000"],
     ["data.batch_size=5000", "1437 examples", "lower data.batch_size"]),
    ("eval_without_checkpoint", [CONFIG, WORKDIR, "--mode=eval"], ["no checkpoint", "train first"]),
    # Values that cannot be right: not finite, out of a seed's range.
    ("learning_rate_nan", [CONFIG, WORKDIR, "--config.optim.learning_rate=nan"],
     ["'optim.learning_rate' is nan", "finite"]),
    ("learning_rate_inf", [CONFIG, WORKDIR, "--config.optim.learning_rate=inf"],
     ["'optim.learning_rate' is inf", "finite"]),
    ("noise_level_inf", [CONFIG, WORKDIR, "--config.eval.noise_levels=(0.1,1e999)"],
     ["'eval.noise_levels' is (0.1, inf)", "finite"]),
    ("seed_too_large", [CONFIG, WORKDIR, "--config.seed=1099511627776"],
     ["seed=1099511627776 must be in [0, 2**31)"]),
    ("seed_far_too_large", [CONFIG, WORKDIR, "--config.seed=1180591620717411303424"],
     ["seed="]),
    # Precision, steps per call, compile, throughput, profile (each key's owner; jaxtrain/jobs/checks.py calls them).
    ("unknown_precision", [CONFIG, WORKDIR, "--config.precision=fp16"],
     ["precision='fp16'", "choose one of: bf16, f32"]),
    ("zero_steps_per_call", [CONFIG, WORKDIR, "--config.train.steps_per_call=0"],
     ["train.steps_per_call=0 must be > 0"]),
    ("negative_device_memory", [CONFIG, WORKDIR, "--config.compile.device_memory_gb=-1"],
     ["compile.device_memory_gb=-1", "must be >= 0"]),
    ("negative_profile_steps", [CONFIG, WORKDIR, "--config.profile.num_steps=-2"],
     ["profile.num_steps=-2", "must be >= 0"]),
    ("remat_not_bool", [CONFIG, WORKDIR, "--config.model.remat=yes"],
     ["model.remat", "bool"]),
    # Device mesh (conftest.py: 8 fake devices).
    ("mesh_product_not_device_count", [CONFIG, WORKDIR, "--config.mesh.data=3"],
     ["mesh sizes (data=3", "multiply to 3 but there are 8 devices"]),
    ("mesh_batch_not_divisible", [CONFIG, WORKDIR, "--config.data.batch_size=100"],
     ["data.batch_size=100", "mesh.data * mesh.fsdp", "multiple of 8"]),
    ("mesh_rule_bad_regex", [CONFIG, WORKDIR, "--config.mesh.rules=('Dense[=fsdp',)"],
     ["mesh.rules[0]", "regex does not parse"]),
    ("mesh_rule_unknown_axis", [CONFIG, WORKDIR, "--config.mesh.rules=('.*kernel=fsdq',)"],
     ["mesh.rules[0]", "unknown mesh axis 'fsdq'", "did you mean 'fsdp'"]),
    ("mesh_two_fill_axes", [CONFIG, WORKDIR, "--config.mesh.fsdp=-1"],
     ["mesh.data and mesh.fsdp are both -1"]),
    ("multihost_flags_incomplete", [CONFIG, WORKDIR, "--num_processes=2"],
     ["--coordinator_address, --num_processes and --process_id go together"]),
    # Evaluation report keys (eval.*) and --step.
    ("eval_step_not_a_step", [CONFIG, WORKDIR, "--mode=eval", "--step=last"],
     ["--step='last'", "'latest' or 'best'"]),
    ("eval_slice_key_malformed", [CONFIG, WORKDIR, "--config.eval.slice_key=a.b:c:d"],
     ["eval.slice_key='a.b:c:d'", "'module:function'"]),
    ("eval_negative_noise_level", [CONFIG, WORKDIR, "--config.eval.noise_levels=(0.1,-0.2)"],
     ["eval.noise_levels=(0.1, -0.2)", ">= 0"]),
    ("eval_zero_pgd_steps", [CONFIG, WORKDIR, "--config.eval.pgd_steps=0"],
     ["eval.pgd_steps=0 must be > 0"]),
    ("eval_negative_attribution_index",
     [CONFIG, WORKDIR, "--config.eval.attribution_examples=(0,-1)"],
     ["eval.attribution_examples=(0, -1)", "indices >= 0"]),
    # Cross-validation (jaxtrain/tune/cv.py).
    ("cv_one_fold", [CONFIG, WORKDIR, "--config.eval.cross_validation.folds=1"],
     ["eval.cross_validation.folds=1 must be >= 2"]),
    ("cv_more_folds_than_examples",
     [CONFIG, WORKDIR, "--config.eval.cross_validation.folds=100000"],
     ["eval.cross_validation.folds=100000", "more than the 1437 examples of digits:train"]),
    ("cv_holdout_out_of_range",
     [CONFIG, WORKDIR, "--config.eval.cross_validation.holdout_fraction=1.5"],
     ["eval.cross_validation.holdout_fraction=1.5 must be in (0, 1)"]),
    # Transfer learning (jaxtrain/jobs/transfer.py, param_groups.py, lora.py, data/subset.py).
    ("init_from_not_a_run", [CONFIG, WORKDIR, "--config.init_from.workdir={tmp}"],
     ["init_from.workdir=", "holds no jaxtrain run", "train that run first"]),
    ("init_from_rename_malformed", [CONFIG, WORKDIR, "--config.init_from.rename=('Dense_0',)"],
     ["init_from.rename entry 'Dense_0'", "'old_regex=new'"]),
    ("init_from_bad_step", [CONFIG, WORKDIR, "--config.init_from.step=last"],
     ["init_from.step='last'", "'best'"]),
    ("freeze_bad_regex", [CONFIG, WORKDIR, "--config.optim.freeze=('Dense[',)"],
     ["optim.freeze regex 'Dense['", "does not compile"]),
    ("lr_multiplier_not_a_number",
     [CONFIG, WORKDIR, "--config.optim.lr_multipliers=('Dense_1=fast',)"],
     ["optim.lr_multipliers entry 'Dense_1=fast'", "'regex=factor'"]),
    ("ema_decay_one", [CONFIG, WORKDIR, "--config.train.ema_decay=1.0"],
     ["train.ema_decay=1.0 must be in [0, 1)"]),
    ("ema_metric_without_ema", [CONFIG, WORKDIR, "--config.checkpoint.best_metric=eval/ema_accuracy"],
     ["checkpoint.best_metric='eval/ema_accuracy' needs train.ema_decay > 0"]),
    ("bits_per_char_for_a_classifier",
     [CONFIG, WORKDIR, "--config.early_stopping.metric=eval/bits_per_char"],
     ["early_stopping.metric='eval/bits_per_char'", "language models only", "eval/loss"]),
    ("lora_targets_bad_regex", [CONFIG, WORKDIR, "--config.model.lora_targets=(kernel"],
     ["model.lora_targets regex '(kernel'", "does not compile"]),
    ("data_class_not_in_dataset", [CONFIG, WORKDIR, "--config.data.classes=(3,12)"],
     ["data.classes=(3, 12)", "[12] not in digits", "0..9"]),
    ("negative_examples_per_class", [CONFIG, WORKDIR, "--config.data.examples_per_class=-1"],
     ["data.examples_per_class=-1 must be >= 0"]),
    # Resources: states that cannot fit are refused before anything is allocated (a huge
    # population worked silently for over an hour; a huge model hung).
    ("population_too_large_for_memory", ["--config=configs/digits_pbt.py", WORKDIR,
                                         "--config.tune.population_size=100000000"],
     ["a population of 100000000 members needs at least", "GiB", "lower tune.population_size"]),
    ("model_too_large_for_memory", [CONFIG, WORKDIR, "--config.model.hidden_sizes=(200000,200000)"],
     ["this model needs at least", "choose a smaller model"]),
    ("folds_too_large_for_memory", [CONFIG, WORKDIR, "--config.eval.cross_validation.folds=50",
                                    "--config.model.hidden_sizes=(40000,40000)"],
     ["cross-validation with 50 folds needs at least", "lower eval.cross_validation.folds"]),
]

# Run as `python -m jaxtrain.main` too: whole stderr, start-up time included.
SUBPROCESS_CASES = ["unknown_key", "config_file_missing", "catalog_dataset_not_prepared"]


@pytest.fixture
def args_for(tmp_path, local_tmp_path, data_dir):
  """Returns a function from a case's args to argv, with the case's files in
  local_tmp_path (and a_file, a plain file, in tmp_path too)."""
  del data_dir  # Requested so that $JAXTRAIN_DATA_DIR is the session's tmp data dir.
  for name, text in FILES.items():
    (local_tmp_path / name).write_text(text)
  (tmp_path / "a_file").write_text(FILES["a_file"])

  def args_for_case(args):
    return [arg.format(tmp=tmp_path, local=local_tmp_path) for arg in args]
  return args_for_case


def _assert_one_error_line(stderr: str, expected: list[str]) -> None:
  lines = stderr.splitlines()
  assert len(lines) == 1 and stderr.endswith("\n"), f"want one line on stderr, got:\n{stderr}"
  assert lines[0].startswith("error: "), lines[0]
  for text in expected:
    assert text in lines[0], f"{text!r} not in {lines[0]!r}"


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(args, expected, args_for, compiles, capsys):
  code = main.main(["jaxtrain.main", *args_for(args)])
  out = capsys.readouterr()
  _assert_one_error_line(out.err, expected)
  assert code == 2
  assert not compiles, "the error came after something was compiled"


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_command_line_prints_one_line_quickly(case, args_for):
  args, expected = {c[0]: c[1:] for c in CASES}[case]
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.main", *args_for(args)], cwd=REPO,
                        env=os.environ.copy(), capture_output=True, text=True, timeout=60)
  seconds = time.perf_counter() - start
  _assert_one_error_line(proc.stderr, expected)
  assert proc.returncode == 2
  assert seconds < 10, f"took {seconds:.1f} s to report a bad input (goal: under 5 s)"


def test_help_prints_the_usage_and_flags_without_importing_jax(capsys):
  assert main.main(["jaxtrain", "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: python -m jaxtrain.main --config=FILE")
  for flag in ("--workdir", "--mode", "--stop_after_steps", "--[no]allow_config_change"):
    assert flag in out
  # --help stays fast because parsing imports no jax, flax or optax (fresh interpreter).
  code = ("import sys, jaxtrain.main\n"
          "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))")
  found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
  assert found == "[]"



# --- A workdir has one writer, and holds one kind of run.


def _records(workdir):
  return {p.name: p.read_bytes() for p in sorted(workdir.iterdir()) if p.is_file()}


def test_a_second_process_on_a_busy_workdir_exits_2_naming_the_holder(local_tmp_path):
  """A process holds WORKDIR/.jaxtrain.lock (as a running jaxtrain does); another run
  there is refused within seconds, with the holder's pid, and writes nothing. Local on
  purpose: the lock is an OS file lock; a gs:// workdir has none (docs/guide/sharding.md)."""
  workdir = local_tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time, pathlib\n"
       "from jaxtrain.jobs import workdir\n"
       f"with workdir.lock(pathlib.Path({str(workdir)!r})):\n"
       "  print('held', flush=True)\n"
       "  time.sleep(60)\n"], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = _records(workdir)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxtrain.main", CONFIG, f"--workdir={workdir}"],
                          cwd=REPO, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=60)
    seconds = time.perf_counter() - start
  finally:
    holder.kill()
    holder.wait()
  _assert_one_error_line(proc.stderr, ["being written by another jaxtrain run",
                                       f"pid {holder.pid}"])
  assert proc.returncode == 2 and seconds < 15
  assert _records(workdir) == before and not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("first, second", [("tune", "train"), ("train", "tune")])
def test_a_workdir_of_another_kind_is_refused_and_left_as_it_was(first, second, tmp_path,
                                                                capsys):
  small = ["--config.train.num_steps=20", "--config.train.eval_every_steps=10",
           "--config.checkpoint.every_steps=10", "--config.tune.population_size=2",
           "--config.mesh.num_devices=1", "--config.data.test_split="]
  configs = {"train": "--config=configs/digits_mlp.py", "tune": "--config=configs/digits_pbt.py"}
  workdir = tmp_path / "run"
  assert main.main(["jaxtrain", configs[first], f"--workdir={workdir}", *small]) == 0
  before = _records(workdir)
  capsys.readouterr()
  code = main.main(["jaxtrain", configs[second], f"--workdir={workdir}", *small])
  kinds = {"train": "single run", "tune": "tuning run"}
  _assert_one_error_line(capsys.readouterr().err,
                         [f"holds a {kinds[first]}", f"this is a {kinds[second]}"])
  assert code == 2 and _records(workdir) == before


def test_a_finished_run_without_checkpoints_is_not_overwritten_by_another_config(tmp_path,
                                                                                 capsys):
  args = ["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={tmp_path}",
          "--config.train.num_steps=20", "--config.train.eval_every_steps=10",
          "--config.mesh.num_devices=1"]
  assert main.main(args) == 0
  remove_tree(tmp_path / "checkpoints")
  before = _records(tmp_path)
  capsys.readouterr()
  assert main.main(args + ["--config.optim.learning_rate=0.5"]) == 2
  _assert_one_error_line(capsys.readouterr().err, ["holds a run with a different config",
                                                   "optim.learning_rate"])
  assert _records(tmp_path) == before


# --- What is read back is verified: damaged array bytes are refused, never used.


def _damage_arrays(step_dir):
  """Flips 8 bytes in the middle of every compressed chunk (zstd frame) of the step's
  array data files: zstd without content checksums decodes them to other values without
  an error, which is what a bit rot or a bad copy does."""
  magic = b"\x28\xb5\x2f\xfd"
  for data in (p for p in files_under(step_dir / "state") if p.parent.name == "d"):
    raw = bytearray(data.read_bytes())
    if len(raw) <= 10_000:
      continue
    starts = [i for i in range(len(raw)) if raw.startswith(magic, i)]
    for start, end in zip(starts, starts[1:] + [len(raw)]):
      if end - start > 200:
        middle = (start + end) // 2
        raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    data.write_bytes(bytes(raw))


def _tree_bytes(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in files_under(root)
          if ".jaxtrain.lock" not in p.name}


def test_a_damaged_checkpoint_is_refused_by_eval_resume_and_init_from(tmp_path, capsys):
  source = tmp_path / "source"
  args = ["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={source}",
          "--config.train.num_steps=40", "--config.train.eval_every_steps=10",
          "--config.checkpoint.every_steps=10", "--config.mesh.num_devices=1"]
  assert main.main(args + ["--stop_after_steps=30"]) == 0
  _damage_arrays(source / "checkpoints" / "30")
  before = _tree_bytes(source)
  capsys.readouterr()
  expected = [str(source / "checkpoints" / "30"), "is damaged", "differ from the checksums",
              "train_state/params/Dense_0/kernel", "resumes from step 20", "--step=20"]

  assert main.main(args[:3] + ["--mode=eval"]) == 2  # The latest step, as eval picks it.
  _assert_one_error_line(capsys.readouterr().err, expected)
  assert main.main(args) == 2  # Resume.
  _assert_one_error_line(capsys.readouterr().err, expected)
  init = ["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={tmp_path / 'new'}",
          f"--config.init_from.workdir={source}", "--config.init_from.step=30",
          "--config.train.num_steps=10", "--config.mesh.num_devices=1"]
  assert main.main(init) == 2
  _assert_one_error_line(capsys.readouterr().err, [str(source / "checkpoints" / "30"),
                                                   "differ from the checksums",
                                                   "train_state/params/Dense_0/kernel",
                                                   "choose another init_from.step"])
  assert _tree_bytes(source) == before
  # The step before it is intact, and is what the message points to.
  assert main.main(args[:3] + ["--mode=eval", "--step=20"]) == 0


# --- Broken records: every record read back on resume (or by --mode=eval) is checked,
# and a damaged one is refused with one line naming it, before anything is written.

SINGLE = ["--config=configs/digits_mlp.py", "--config.train.num_steps=40",
          "--config.train.eval_every_steps=10", "--config.checkpoint.every_steps=10",
          "--config.mesh.num_devices=1"]
SEARCH = ["--config=configs/digits_pbt.py", "--config.train.num_steps=200",
          "--config.tune.population_size=4", "--config.checkpoint.every_steps=100"]
BAYES = ["--config=configs/digits_bayes.py", "--config.train.num_steps=100",
         "--config.train.eval_every_steps=100", "--config.checkpoint.every_steps=100",
         "--config.tune.population_size=2", "--config.tune.bayes.rounds=2"]
ARGS = {"single": SINGLE, "search": SEARCH, "bayes": BAYES}


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
  """A single run stopped at step 30, a PBT search at step 100, and a Bayesian search
  after its first round."""
  root = tmp_path_factory.mktemp("stopped")
  for run, stop in [("single", 30), ("search", 100), ("bayes", 100)]:
    assert main.main(["jaxtrain", *ARGS[run], f"--workdir={root / run}",
                      f"--stop_after_steps={stop}"]) == 0
  return root


def _edit_json(rel, edit):
  def damage(w):
    record = json.loads((w / rel).read_text())
    edit(record)
    (w / rel).write_text(json.dumps(record))
  return damage


def _latest_loop(sub):
  def path(w):
    steps = [p for p in (w / sub).iterdir() if p.name.isdigit()]
    return max(steps, key=lambda p: int(p.name)) / "loop" / "metadata"
  return path


def _write(rel, data):
  def damage(w):
    path = rel(w) if callable(rel) else w / rel
    if data is None:
      path.unlink()
    else:
      path.write_bytes(data)
  return damage


def _retype_loop(sub, key):
  def damage(w):
    path = _latest_loop(sub)(w)
    loop = json.loads(path.read_text())
    loop[key] = "x"
    path.write_text(json.dumps(loop))
  return damage


def _cut_lineage(w):
  path = w / "tune" / "lineage.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:2]))


def _bad_lineage_line(w):
  path = w / "tune" / "lineage.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  lines[1] = '{"event": "init", "member": \n'
  path.write_text("".join(lines))


BROKEN = [  # (id, run, extra args, damage, texts the line must hold)
    ("config_invalid", "single", [], _write("config.json", b"{not json"),
     ["config.json is not valid JSON", "restore it, or use a new --workdir"]),
    ("config_empty", "single", [], _write("config.json", b""), ["config.json is empty"]),
    ("config_wrong_type", "single", [],
     _edit_json("config.json", lambda c: c["train"].update(num_steps="forty")),
     ["config.json has train.num_steps='forty'", "int"]),
    ("config_invalid_eval", "single", ["--mode=eval", "--config="],
     _write("config.json", b"{not json"), ["config.json is not valid JSON", "pass --config"]),
    ("config_wrong_type_eval", "single", ["--mode=eval", "--config="],
     _edit_json("config.json", lambda c: c["optim"].update(learning_rate=[1])),
     ["config.json has optim.learning_rate=[1]", "pass --config"]),
    ("metrics_not_utf8", "single", [], _write("metrics.jsonl", b"\xff\xfe\n"),
     ["metrics.jsonl line 1 is not UTF-8", "move it aside"]),
    ("metrics_not_json", "single", [], _write("metrics.jsonl", b'{"step": 10}\n{oops\n{}\n'),
     ["metrics.jsonl line 2 is not a JSON record"]),
    ("loop_state_wrong_type", "single", [], _retype_loop("checkpoints", "elapsed_sec"),
     ["checkpoints/30 has a damaged loop state", "elapsed_sec is a string",
      "resumes from step 20"]),
    ("search_config_invalid", "search", [], _write("config.json", b"[1, 2]"),
     ["config.json holds a JSON list"]),
    ("search_loop_state_wrong_type", "search", [], _retype_loop("tune/checkpoints", "rounds"),
     ["tune/checkpoints/100 has a damaged loop state", "rounds is a string"]),
    ("lineage_bad_line", "search", [], _bad_lineage_line,
     ["lineage.jsonl line 2 is not a JSON record", "start the search over"]),
    ("lineage_cut", "search", [], _cut_lineage, ["lineage.jsonl holds 2 events", "recorded"]),
    ("lineage_deleted", "search", [], _write("tune/lineage.jsonl", None),
     ["lineage.jsonl is missing"]),
    ("optuna_study_deleted", "bayes", [], _write("tune/optuna.db", None),
     ["optuna.db is missing", "asked 1 rounds", "start the search over"]),
    ("optuna_study_damaged", "bayes", [], _write("tune/optuna.db", b"SQLite format 3\x00" * 64),
     ["optuna.db cannot be read as an Optuna study"]),
]


@pytest.mark.parametrize("run, extra, damage, expected", [c[1:] for c in BROKEN],
                         ids=[c[0] for c in BROKEN])
def test_a_broken_record_is_one_line_and_changes_nothing(run, extra, damage, expected,
                                                         stopped_runs, tmp_path, local_tmp_path,
                                                         capsys):
  # The Bayesian search's Optuna study is WORKDIR/tune/optuna.db, a SQLite file: its
  # workdir is local on purpose (a gs:// one is refused, see test_cloud_workdir.py).
  workdir = (local_tmp_path if run == "bayes" else tmp_path) / run
  copy_tree(stopped_runs / run, workdir)
  damage(workdir)
  before = _tree_bytes(workdir)
  args = [*ARGS[run], f"--workdir={workdir}"]
  if "--config=" in extra:  # --mode=eval without --config reads config.json.
    args = [f"--workdir={workdir}"]
  capsys.readouterr()
  code = main.main(["jaxtrain", *args, *[e for e in extra if e != "--config="]])
  _assert_one_error_line(capsys.readouterr().err, expected)
  assert code == 2
  assert _tree_bytes(workdir) == before


def test_a_torn_last_metrics_line_is_dropped_on_resume(stopped_runs, tmp_path):
  """A crash mid-write leaves a last line without its newline: expected, not damage."""
  workdir = tmp_path / "single"
  copy_tree(stopped_runs / "single", workdir)
  metrics = workdir / "metrics.jsonl"
  metrics.write_bytes(metrics.read_bytes() + b'{"step": 35, "train/lo')
  assert main.main(["jaxtrain", *SINGLE, f"--workdir={workdir}"]) == 0
  steps = [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]
  assert steps == sorted(set(steps)) and steps[-1] == 40


# --- Signals and leftovers.

@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_ctrl_c_before_training_is_one_line_and_never_ignored(delay, tmp_path):
  """Ctrl-C while jaxtrain imports and sets up: one line and exit 130 (or, once the
  loop has started, a checkpoint and exit 75), never a traceback, an abort, or a run
  that goes on. Raised inside jax's import, KeyboardInterrupt aborted the process
  (a C++ 'terminate called'); swallowed by a library, the run completed."""
  import signal
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "jaxtrain.main", CONFIG, f"--workdir={workdir}",
                           "--config.train.num_steps=5000", "--config.mesh.num_devices=1"],
                          cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  time.sleep(delay)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  lines = [l for l in err.splitlines() if not l.startswith("step ")]  # Progress lines.
  assert proc.returncode in (130, 75), (proc.returncode, err[-2000:])
  assert len(lines) == 1, err[-2000:]
  want = "error: interrupted (Ctrl-C)" if proc.returncode == 130 else "preempted at step"
  assert lines[0].startswith(want), lines[0]


def test_a_killed_saves_temporary_directory_is_removed_by_the_next_writer(tmp_path, capsys):
  """Two SIGTERMs close together killed the save the first one started; Orbax removes
  a temporary step directory only when it saves that same step again."""
  workdir = tmp_path / "run"
  args = ["jaxtrain", CONFIG, f"--workdir={workdir}", "--config.train.num_steps=40",
          "--config.checkpoint.every_steps=10", "--config.mesh.num_devices=1"]
  assert main.main(args + ["--stop_after_steps=20"]) == 0
  leftover = workdir / "checkpoints" / "25.orbax-checkpoint-tmp"  # A step never saved again.
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "junk").write_bytes(b"x" * 1000)
  assert main.main(args[:3] + ["--mode=eval"]) == 0  # A reader leaves it alone.
  assert leftover.exists()
  assert main.main(args) == 0  # The writer (it holds the workdir lock) removes it.
  assert not leftover.exists()
  names = [p.name for p in (workdir / "checkpoints").iterdir()]
  assert "40" in names and not [n for n in names if "tmp" in n], names


def test_eval_of_a_read_only_workdir_prints_the_result(local_tmp_path, capsys):
  # Local on purpose: a read-only bind mount.
  tmp_path = local_tmp_path
  source = tmp_path / "source"
  assert main.main(["jaxtrain", CONFIG, f"--workdir={source / 'run'}",
                    "--config.train.num_steps=20", "--config.mesh.num_devices=1"]) == 0
  mount = tmp_path / "ro"
  mount.mkdir()
  if subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount read-only here")
  try:
    if os.access(mount, os.W_OK):
      pytest.skip("the bind mount is writable here")
    before = _tree_bytes(mount)
    capsys.readouterr()
    assert main.main(["jaxtrain", f"--workdir={mount / 'run'}", "--mode=eval"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["step"] == 20
    err = out.err.splitlines()
    assert len(err) == 1 and "is read-only: eval.json and report/ not written" in err[0], err
    assert _tree_bytes(mount) == before
  finally:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_start_over_moves_the_old_workdir_aside_and_only_when_the_run_can_start(local_tmp_path,
                                                                                capsys):
  # Local on purpose: --start_over renames the workdir, which a bucket cannot (it is
  # refused on gs://: test_cloud_workdir.py).
  tmp_path = local_tmp_path
  workdir = tmp_path / "run"
  single = ["jaxtrain", CONFIG, f"--workdir={workdir}", "--config.train.num_steps=20",
            "--config.mesh.num_devices=1"]
  assert main.main(single) == 0
  before = _tree_bytes(workdir)
  capsys.readouterr()
  # A bad config is refused before anything moves.
  assert main.main(single + ["--start_over", "--config.optim.learning_rate=-1"]) == 2
  assert [p.name for p in tmp_path.iterdir()] == ["run"] and _tree_bytes(workdir) == before
  # Another kind of run: refused without the flag, started afresh with it.
  search = ["jaxtrain", "--config=configs/digits_pbt.py", f"--workdir={workdir}",
            "--config.train.num_steps=100", "--config.tune.population_size=2"]
  assert main.main(search) == 2
  assert "pass --start_over" in capsys.readouterr().err
  assert main.main(search + ["--start_over"]) == 0
  err = capsys.readouterr().err
  old = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
  assert len(old) == 1 and f"moved the old contents of {workdir} to {old[0]}" in err
  assert _tree_bytes(old[0]) == before  # The old run, whole.
  assert json.loads((workdir / "config.json").read_text())["tune"]["strategy"] == "pbt"
  assert main.main(["jaxtrain", f"--workdir={workdir}", "--mode=eval", "--start_over"]) == 2
