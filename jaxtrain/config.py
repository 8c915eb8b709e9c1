"""The config schema: every key jaxtrain knows, with its default and type.

Config files in `configs/` start from `base_config()` and override a few
fields. This module is the schema only: the keys (`base_config`), flattening,
checking keys and types against the schema (`check_schema`), and reading a
workdir's config snapshot back (`load_snapshot`). Whether values make sense
(ranges, names of models, optimizers, datasets) is checked by the components
that own them, all called from `jaxtrain.jobs.checks.validate`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import ml_collections

from jaxtrain import errors, records, redact
from jaxtrain import paths
from jaxtrain.paths import Path

# Metrics that early stopping and best-checkpoint selection may rank by (they
# are computed at every evaluation), with the direction that counts as better.
RANKABLE_METRICS = {
    "eval/accuracy": "max",
    "eval/loss": "min",
    "eval/ema_accuracy": "max",  # With train.ema_decay > 0: the parameters' average.
    "eval/ema_loss": "min",
    "eval/bits_per_char": "min",  # Language models (per-token labels) only.
}

def base_config() -> ml_collections.ConfigDict:
  """Returns the config with every key and its default value."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # "f32", or "bf16": bfloat16 compute with float32 parameters, optimizer state
  # and loss (the models' `dtype`, jaxtrain/models/__init__.py).
  c.precision = "f32"

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.label_column = "label"  # data.name="csv:PATH": the column holding the class.
  # Your own arrays (npz:, csv:, module:function) without a validation / test split: this
  # fraction of train becomes that split (train keeps the rest), drawn by a permutation
  # with data.split_seed, so every run and process carves the same rows. 0 = not carved.
  c.data.validation_fraction = 0.0
  c.data.test_fraction = 0.0
  c.data.split_seed = 0
  # Modules imported before data.name is looked up: a TFDS builder of your own defined in
  # one registers itself, and its dataset is prepared locally like the embedded ones.
  c.data.import_modules = ()
  c.data.data_dir = ""  # "" = $JAXTRAIN_DATA_DIR or ~/.cache/jaxtrain/tensorflow_datasets.
  c.data.train_split = "train"  # Any TFDS split string, e.g. "train[:90%]".
  c.data.eval_split = "test"
  c.data.test_split = ""  # Tuning: the best member is also scored on this split ("" = none).
  c.data.batch_size = 128
  c.data.eval_batch_size = 1000
  # "device": the whole split lives on the device and batches are gathered
  # inside jit (fast path for small data). "grain": a Grain pipeline streams
  # from the TFDS data source. "auto": device when the split is small.
  c.data.pipeline = "auto"
  c.data.device_max_mb = 512
  # > 0: permute the input features (positions) with this seed, the same way
  # in every split: destroys spatial order, keeps the information.
  c.data.permute_features_seed = 0
  # Class filtering and few-shot subsets (jaxtrain/data/subset.py): keep only these
  # labels in every split (() = all), and at most this many training examples
  # per class (0 = all), chosen deterministically from `seed`. Labels keep their ids.
  c.data.classes = ()
  c.data.examples_per_class = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.hidden_sizes = (256, 256)  # mlp
  c.model.features = (32, 64)  # cnn: channels per conv block
  c.model.kernel_size = 3  # cnn
  c.model.dense_size = 128  # cnn: width of the dense layer before the head
  c.model.rnn_size = 64  # gru, lstm: hidden state width
  c.model.rnn_layers = 1  # gru, lstm
  c.model.resnet_depth = 18  # resnet: 10 (tiny test variant) | 18 | 34 | 50 | 101 | 152
  c.model.resnet_width = 64  # resnet: channels of the first stage (doubled per stage)
  c.model.resnet_stem = "auto"  # resnet: small (3x3/1) | imagenet (7x7/2 + pool) | auto (by size)
  c.model.width = 128  # vit, transformer: model dimension
  c.model.depth = 2  # vit, transformer: number of blocks
  c.model.num_heads = 4  # vit, transformer: attention heads (must divide width)
  c.model.mlp_ratio = 4.0  # vit, transformer: block MLP width / model width
  c.model.patch_size = 2  # vit: patch side in pixels (must divide the image size)
  c.model.pooling = "cls"  # vit: cls (class token) | mean (over patches)
  c.model.positions = "learned"  # transformer: learned | rotary
  c.model.activation = "relu"
  c.model.batch_norm = False
  c.model.dropout_rate = 0.0  # A hyperparameter (array leaf in the state).
  # model.name = "package.module:Attr" (your own Flax module, jaxtrain/models/reference.py):
  # its constructor's keyword arguments. Free-form, like tune.space.
  c.model.kwargs = ml_collections.ConfigDict()
  c.model.remat = False  # Recompute each block's activations in the backward pass (nn.remat).
  # LoRA (jaxtrain/core/lora.py): low-rank adapters on the kernels whose '/'-joined path
  # matches lora_targets (re.search); the base weights are frozen. 0 = off.
  c.model.lora_rank = 0
  c.model.lora_alpha = 1.0  # Adapter scale = lora_alpha / lora_rank.
  # The default adapts dense and attention kernels only; for convolutions add them, e.g.
  # r"(^|/)(Dense[^/]*|Conv[^/]*|\w*conv|head)/kernel$". final.json lists what was adapted.
  c.model.lora_targets = r"(^|/)(Dense[^/]*|query|key|value|out|mlp_in|mlp_out|head)/kernel$"
  # Parameters trained whole instead of frozen (peft's modules_to_save), regexes on paths
  # like 'head/kernel'. Parameters that init_from leaves fresh (init_from.exclude, e.g. a
  # new head) are always trained whole: a frozen random layer is useless.
  c.model.lora_train_full = ()
  # True: BatchNorm running statistics keep the base model's values during LoRA training;
  # False (default, as peft): they update as in the base model.
  c.model.lora_freeze_batch_stats = False

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3  # Peak value; the schedule scales it.
  c.optim.weight_decay = 0.0  # adamw: decoupled; others: L2 added to the gradient.
  # Which parameters weight decay applies to: "all" (optax's default, so also biases and
  # normalisation scales) or "matrices" (2+ dimensions: kernels and embeddings, the usual
  # practice). Under adam the L2 term goes through Adam's normalisation; adamw's does not.
  c.optim.weight_decay_mask = "all"
  c.optim.momentum = 0.9  # momentum
  c.optim.nesterov = False  # momentum
  c.optim.b1 = 0.9  # adam, adamw
  c.optim.b2 = 0.999  # adam, adamw
  c.optim.eps = 1e-8  # adam, adamw
  c.optim.clip_norm = 0.0  # Global-norm clipping; 0 = off.
  # Gradient accumulation (optax.MultiSteps): one optimizer update per k micro-steps,
  # like a k times larger batch. train.num_steps and every *_every_steps count
  # micro-steps (num_steps must be a multiple of k); the schedule's steps (warmup,
  # transition, boundaries) count optimizer updates; EMA moves once per update.
  # Dropout draws new masks per micro-batch and BatchNorm statistics take one
  # momentum step per micro-batch, as with any small batch.
  c.optim.accumulate_steps = 1
  # Parameter groups (jaxtrain/core/param_groups.py), regexes searched in '/'-joined
  # parameter paths such as 'Conv_0/kernel': frozen leaves get no update and no
  # optimizer state; 'regex=factor' scales the learning rate (first match wins).
  c.optim.freeze = ()
  c.optim.lr_multipliers = ()
  c.optim.schedule = ml_collections.ConfigDict()
  c.optim.schedule.name = "constant"
  c.optim.schedule.warmup_steps = 0  # Linear warmup from 0, for every schedule (in updates).
  c.optim.schedule.end_factor = 0.0  # warmup_cosine, linear: final lr / peak lr.
  c.optim.schedule.decay_rate = 0.5  # exponential
  c.optim.schedule.transition_steps = 1000  # exponential
  c.optim.schedule.boundaries = (1_000_000,)  # piecewise: steps where the lr is scaled...
  c.optim.schedule.scales = (1.0,)  # piecewise: ...by these factors.

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0  # A hyperparameter (array leaf in the state).

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 500
  c.train.eval_every_steps = 100
  c.train.log_every_steps = 50
  # Non-finite loss or gradient: "stop" (keep the last good state and checkpoint,
  # exit code 3), "skip" (skip such updates; stop after max_consecutive_skips in a
  # row), or "none" (apply every update).
  c.train.nan_policy = "stop"
  c.train.max_consecutive_skips = 10
  # K > 1: run K steps per dispatch in a lax.scan (single steps before log, eval,
  # save and stop steps, so records and checkpoints equal those of K = 1).
  c.train.steps_per_call = 1
  c.train.scan_unroll = 0  # lax.scan unroll for steps_per_call; 0 = auto (full for conv on CPU).
  # > 0: keep an exponential moving average of the parameters in the state and
  # evaluate it too (eval/ema_accuracy, eval/ema_loss). 0 = off.
  c.train.ema_decay = 0.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 250
  c.checkpoint.keep = 2  # Latest checkpoints kept, plus the best one.
  c.checkpoint.best_metric = "eval/accuracy"
  c.checkpoint.async_save = True

  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.metric = "eval/accuracy"
  c.early_stopping.patience = 0  # Evaluations without improvement; 0 = off.
  c.early_stopping.min_delta = 0.0

  # Tuning: a population of settings trained together (see jaxtrain/tune/).
  c.tune = ml_collections.ConfigDict()
  c.tune.strategy = "none"  # none | grid | random | pbt | halving | bayes
  c.tune.population_size = 8  # Members trained at once (grid: all grid points).
  c.tune.metric = "eval/accuracy"  # Evaluated every train.eval_every_steps.
  # Several objectives, each in its metric's direction (e.g. ("eval/accuracy", "eval/ece")),
  # and bounds ("eval/ece <= 0.05"): members rank by the constrained Pareto order
  # (jaxtrain/tune/pareto.py); tune.metric names the one best/ follows. () = tune.metric alone.
  c.tune.objectives = ()
  c.tune.constraints = ()
  c.tune.space = ml_collections.ConfigDict()  # e.g. space.optim.learning_rate = "loguniform(1e-4, 1e-1)"
  c.tune.grid_points = 3  # grid: values per continuous dimension.
  c.tune.execution = "auto"  # vmap | map (one member at a time) | auto (map for CNNs on CPU).
  # Population steps per dispatch (lax.scan), dividing train.eval_every_steps; 0 = the
  # whole interval per call (one step per call for convolutional models on CPU).
  c.tune.steps_per_call = 0
  c.tune.per_member_data_order = True
  # A single run that starts as member `tune.member` of a search with this seed: the
  # member's init key fold_in(PRNGKey(seed), i) and data-order key (with
  # per_member_data_order) instead of the run's own. -1 = a plain run. The tuner writes it
  # into the configs it exports (best/, soup/); see "The member-equivalence guarantee" in
  # docs/guide/tuning.md.
  c.tune.member = -1
  c.tune.shard_population = True  # Member axis over the mesh's pop axis when it divides (mesh.pop).
  # Members that differ only in model.hidden_sizes widths (same depth) train in one program,
  # padded to the widest with masks (MLP only; jaxtrain/models/padded.py).
  c.tune.pad_widths = False
  c.tune.pbt = ml_collections.ConfigDict()
  c.tune.pbt.exploit = "truncation"  # truncation | tournament
  c.tune.pbt.fraction = 0.25  # truncation: bottom fraction copies the top fraction.
  c.tune.pbt.perturb_factors = (0.8, 1.25)
  c.tune.pbt.resample_probability = 0.25
  c.tune.halving = ml_collections.ConfigDict()
  c.tune.halving.eta = 3  # Keep the top 1/eta at each rung.
  c.tune.halving.min_steps = 100  # First rung; rungs at min_steps * eta^k.
  c.tune.bayes = ml_collections.ConfigDict()
  c.tune.bayes.rounds = 4  # Each round asks Optuna for population_size settings.
  # bayes: where the Optuna study lives. "" = WORKDIR/tune/optuna.db, this run's alone.
  # A storage several jaxtrain processes share (one per machine, each with its own
  # --workdir) makes them one search: an RDB URL (sqlite:///PATH,
  # postgresql://USER:PASSWORD@HOST/DB, mysql://...) or "journal:PATH" (an Optuna journal
  # file on a file system every machine mounts). Give a URL with a password as
  # "env:NAME" or "file:PATH": the records keep the reference, never the password.
  c.tune.storage = ""
  c.tune.study_name = "jaxtrain"  # The study in the storage: searches may share one.
  # bayes: begin from an earlier search's finished trials (jaxtrain/tune/warm_start.py):
  # its --workdir, or an Optuna storage URL with warm_start_study ("" = tune.study_name).
  c.tune.warm_start_from = ""
  c.tune.warm_start_study = ""
  # With warm_start_from a workdir: a phase whose model fits its best/ starts every member
  # from best/'s parameters (as init_from would); a phase that does not fit starts fresh.
  c.tune.warm_start_params = False
  # Model soup (jaxtrain/tune/soup.py): > 0 exports WORKDIR/soup/, the greedy average of
  # up to top_k best members of the best member's phase that share its initialisation.
  c.tune.soup = ml_collections.ConfigDict()
  c.tune.soup.top_k = 0
  c.tune.early_stopping = ml_collections.ConfigDict()
  c.tune.early_stopping.patience = 0  # Evaluations without improvement per member; 0 = off.
  c.tune.early_stopping.min_delta = 0.0

  # Compilation (jaxtrain/io/compilation.py, jaxtrain/jobs/compile.py) and throughput
  # (jaxtrain/io/throughput.py).
  c.compile = ml_collections.ConfigDict()
  # Persistent XLA compilation cache shared by runs; "" = off.
  c.compile.cache_dir = "~/.cache/jaxtrain/compilation_cache"
  # --mode=compile: memory per device in GB to check the program against;
  # 0 = what the device reports (device.memory_stats()), unchecked if it reports nothing.
  c.compile.device_memory_gb = 0.0
  c.throughput = ml_collections.ConfigDict()
  # Peak FLOP/s per device for mfu, in TFLOP/s; 0 = from the table of known devices.
  c.throughput.peak_tflops_per_device = 0.0
  # jax.profiler trace of num_steps steps from start_step into WORKDIR/profile; 0 = off.
  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 10
  c.profile.num_steps = 0

  # Sections filled by their own modules (keys are added next to their owners' code):
  # device mesh and partitioning (jaxtrain/parallel/sharding.py),
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Batch split (data parallelism). -1 = every device the others leave.
  c.mesh.fsdp = 1  # Batch split, and large parameters + optimizer state sharded (FSDP).
  c.mesh.model = 1  # Parameters sharded by mesh.rules (tensor parallelism).
  c.mesh.pop = 1  # Tuning: the member axis (see tune.shard_population).
  c.mesh.num_devices = 0  # Devices the mesh spans: 0 = all (every process), N = the first N.
  # CPU backend, command line only: JAX devices the host's cores are split into (set before
  # JAX starts). 0 = auto: a tuning population of a vmapped model gets one device per core
  # (members split over them, see tune/execution.py), anything else one; N = N devices.
  c.mesh.cpu_devices = 0
  # "REGEX=SPEC" (first match wins, re.search on paths like 'params/Dense_0/kernel'),
  # SPEC one entry per dimension: an axis, 'a+b', or None; e.g. '.*Dense_0/kernel=fsdp,model'.
  c.mesh.rules = ()
  c.mesh.fsdp_min_size = 2**16  # Unmatched leaves with this many elements shard over fsdp.
  # transfer learning from another run's checkpoint (jaxtrain/jobs/transfer.py),
  c.init_from = ml_collections.ConfigDict()
  c.init_from.workdir = ""  # A run's workdir; "" = start from the fresh initialization.
  c.init_from.step = "latest"  # latest (or 0) | best | a step number.
  c.init_from.include = ()  # Regexes on paths like 'params/Conv_0/kernel'; () = all.
  c.init_from.exclude = ()  # e.g. ('params/Dense_1/',) to keep a new head fresh.
  c.init_from.rename = ()  # 'old_regex=new' applied to checkpoint paths (re.sub).
  c.init_from.use_ema = False  # True: start from the source's EMA parameters (train.ema_decay > 0).
  # evaluation reports, slices, robustness, attributions (jaxtrain/analysis/),
  c.eval = ml_collections.ConfigDict()
  c.eval.report = True  # --mode=eval also writes WORKDIR/report/ (figures, tables, report.md).
  # True: --mode=eval, its report and the merged LoRA export use the EMA parameters
  # (train.ema_decay > 0) instead of the raw ones; eval.json and the report say which.
  c.eval.use_ema = False
  c.eval.top_k = 5  # Top-k accuracy.
  c.eval.calibration_bins = 15  # Equal-width confidence bins for ECE / reliability diagram.
  c.eval.slice_key = ""  # "" (none) | "label" | a dataset feature | "module:function".
  c.eval.noise_levels = (0.0, 0.05, 0.1, 0.2, 0.4)  # Gaussian input noise std devs.
  c.eval.adversarial_epsilons = (0.0, 0.02, 0.05, 0.1, 0.2)  # FGSM / PGD L-inf radii.
  c.eval.pgd_steps = 10  # PGD iterations (step size 2.5 * eps / pgd_steps).
  c.eval.robustness_examples = 500  # First N eval examples attacked / noised; 0 = all.
  c.eval.attribution_examples = (0, 1, 2, 3)  # Eval-split indices explained in figures.
  c.eval.ig_steps = 64  # Integrated-gradients path intervals (trapezoid rule).
  # and k-fold cross-validation trained as one population (jaxtrain/tune/).
  c.eval.cross_validation = ml_collections.ConfigDict()
  # k >= 2: main.py cross-validates the config on data.train_split (k folds, one population).
  c.eval.cross_validation.folds = 0  # 0 = off.
  # > 0 (with folds = 0): one holdout split, this fraction of data.train_split held out.
  c.eval.cross_validation.holdout_fraction = 0.0
  # True: folds (or the holdout) keep data.train_split's class proportions.
  c.eval.cross_validation.stratified = False
  return c


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """Returns {'a.b.c': value} for every leaf of a (nested) config."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


FREE_FORM = ("tune.space.", "model.kwargs.")


def changed_from_defaults(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The flat keys whose value differs from `base_config()` (or that it lacks), with
  model.name and data.name always: what tells one run from another (a single run's
  TensorBoard hparams; every default as a column would bury them)."""
  defaults = flatten(base_config())
  flat = flatten(config)
  return {k: v for k, v in flat.items()
          if k in ("model.name", "data.name") or k not in defaults or defaults[k] != v}


def check_schema(config) -> None:
  """Raises a one-line `UserError` unless `config` is a ConfigDict with every key of
  `base_config()`, no other key, and each value of its default's type."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.UserError(
        f"a config must be an ml_collections.ConfigDict, got {type(config).__name__}; "
        "get_config() should return jaxtrain.config.base_config() with overrides")
  known = flatten(base_config())
  # The search space and a user model's kwargs are free-form here; jaxtrain.tune.space
  # and the user's module check them.
  given = {k: v for k, v in flatten(config).items() if not k.startswith(FREE_FORM)}
  for key, value in given.items():
    if key not in known:
      raise errors.UserError(
          f"unknown config key {key!r}{errors.did_you_mean(key, known)}; "
          "see jaxtrain/config.py for the keys that exist")
    default = known[key]
    if isinstance(default, bool):
      ok = isinstance(value, bool)
    elif isinstance(default, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, tuple):
      ok = isinstance(value, (tuple, list))
    else:
      ok = isinstance(value, type(default))
    if not ok:
      raise errors.UserError(
          f"config key {key!r} must be of type {type(default).__name__} "
          f"(like the default {default!r}), got {value!r}")
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
      # No key takes NaN or infinity: nan compiled and trained until the loss went bad.
      raise errors.UserError(f"config key {key!r} is {value!r}; give finite numbers")
  for key in known:
    if key not in given:
      raise errors.UserError(
          f"config key {key!r} is missing; start config files from "
          "jaxtrain.config.base_config() so every key has a value")


def mode_of(metric: str) -> str:
  """'max' or 'min': which direction of `metric` is better."""
  return RANKABLE_METRICS[metric]


def set_flat(config: ml_collections.ConfigDict, settings: dict[str, Any]) -> None:
  """Sets {'optim.learning_rate': 0.01, ...} in `config`, in the type of each default.

  Values that went through JSON come back as lists and ints: they are turned back
  into tuples and floats where the schema says so.
  """
  for key, value in settings.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    default = node[leaf]
    if isinstance(default, tuple):
      value = tuple(value)
    elif isinstance(default, float):
      value = float(value)
    elif isinstance(default, int) and not isinstance(default, bool):
      value = int(value)
    node[leaf] = value


def with_settings(config: ml_collections.ConfigDict, settings: dict[str, Any]):
  """A copy of `config` with `settings` (flattened keys) set; `config` is unchanged."""
  out = copy.deepcopy(config)
  with out.unlocked():
    set_flat(out, settings)
  return out


def check_references(config: ml_collections.ConfigDict) -> None:
  """Every 'env:'/'file:' value resolves (before anything is compiled)."""
  for key, value in flatten(config).items():
    # tune.storage (and warm_start_from) is read by a Bayesian search alone: a best
    # member's exported config (tune.strategy='none') keeps the reference, and its
    # --mode=eval needs no storage.
    unread = (key in ("tune.storage", "tune.warm_start_from")
              and config.tune.strategy != "bayes")
    if not key.startswith("tune.space.") and not unread:
      redact.resolve(key, value)


def load_snapshot(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a workdir was run with (WORKDIR/config.json) as a ConfigDict.

  Keys the schema no longer has are dropped; keys it gained keep their defaults.

  Raises:
    UserError: no config.json, or one that is damaged (not a JSON object, or a
      value of another type than the schema's).
  """
  path = paths.of(workdir) / "config.json"
  if not path.is_file():
    raise errors.UserError(f"{path} does not exist; --mode=eval needs a workdir written by "
                           "jaxtrain (or pass --config)")
  fix = "restore it, or pass --config with the config the run used"
  return from_snapshot(records.read_object(path, fix), path, fix)


def from_snapshot(saved: dict[str, Any], path: Path, fix: str) -> ml_collections.ConfigDict:
  """The schema's config with the values of a config.json snapshot (read from `path`).

  Raises:
    UserError: a value in the snapshot has another type than the schema's key.
  """
  config = base_config()
  defaults = flatten(config)
  kwargs = saved.get("model", {}).get("kwargs") if isinstance(saved.get("model"), dict) else None
  if isinstance(kwargs, dict) and kwargs:  # A user model's arguments (free-form).
    config.model.kwargs = ml_collections.ConfigDict(kwargs)
  for key, value in flatten(saved).items():
    if key.startswith("tune.space.") or key not in defaults:
      continue
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    try:
      node[leaf] = tuple(value) if isinstance(defaults[key], tuple) else value
    except (TypeError, ValueError):
      raise errors.UserError(
          f"{path} has {key}={value!r}, where the schema has a {type(defaults[key]).__name__}: "
          f"it was edited or damaged; {fix}") from None
  return config


def differences(old: dict, new: dict) -> list[str]:
  """Flattened keys whose values differ between two config dicts (JSON snapshots).

  `mesh.*` keys are left out: they say where arrays live, not what is computed,
  so a run may resume on other devices.
  """
  def norm(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(d).items()}
  a, b = norm(old), norm(new)
  return sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and not k.startswith("mesh."))
