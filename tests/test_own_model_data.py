"""A user's own Flax module (linen or NNX, `model.name="module:Attr"`) and own arrays
(`data.name="npz:PATH"`), through `python -m jaxtrain.main` as a user runs them."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxtrain import main

REPO = Path(__file__).resolve().parents[1]

MODELS = textwrap.dedent('''
    import flax.linen as nn
    from flax import nnx
    import jax.numpy as jnp
    from jaxtrain.models import mlp


    class MLP(nn.Module):
      """A user's linen MLP: its own signature, no dropout_rate."""
      width: int = 32
      num_classes: int = 2

      @nn.compact
      def __call__(self, x, *, train: bool = False):
        x = nn.relu(nn.Dense(self.width)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


    class NNXMLP(nnx.Module):
      def __init__(self, in_features: int, width: int, num_classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, width, rngs=rngs)
        self.out = nnx.Linear(width, num_classes, rngs=rngs)

      def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape((x.shape[0], -1)))))


    def builtin_mlp(num_classes):
      """The package's own MLP, built by a user's function."""
      return mlp.MLP(mlp.MLPConfig(num_classes=num_classes, hidden_sizes=(64,)))


    class ThreeLogits(nn.Module):
      @nn.compact
      def __call__(self, x):
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


    NOT_A_MODULE = 42
''')


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
  """A directory outside the package with the user's model file, config and data."""
  d = tmp_path_factory.mktemp("user")
  (d / "user_models.py").write_text(MODELS)
  (d / "user_config.py").write_text(textwrap.dedent('''
      from jaxtrain.config import base_config

      def get_config():
        c = base_config()
        c.model.name = "user_models:MLP"
        c.data.batch_size = 32
        c.train.num_steps = 300
        c.train.eval_every_steps = 100
        c.checkpoint.every_steps = 100
        c.mesh.num_devices = 1
        return c
  '''))
  (d / "user_pbt.py").write_text(textwrap.dedent('''
      import user_config

      def get_config():
        c = user_config.get_config()
        c.tune.strategy = "pbt"
        c.tune.population_size = 4
        c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
        return c
  '''))
  rng = np.random.default_rng(0)
  centers = rng.normal(0, 3, (3, 20))
  def split(n):
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(0, 1, (n, 20))).astype(np.float32), y
  (xt, yt), (xv, yv), (xs, ys) = split(600), split(200), split(200)
  np.savez(d / "blobs.npz", x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys)
  return d


def _cli(args, cwd, timeout=300):
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.main", *args], cwd=cwd,
                        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                        text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def test_a_linen_module_of_ones_own_on_ones_own_arrays(user_dir, tmp_path, local_tmp_path):
  """Trained, stopped and resumed (bitwise the uninterrupted run), evaluated without
  --config from another directory, and tuned with PBT: all from the command line."""
  data = f"npz:{user_dir / 'blobs.npz'}"
  common = [f"--config={user_dir / 'user_config.py'}", f"--config.data.name={data}",
            "--config.data.eval_split=validation", "--config.model.kwargs.width=48"]
  code, _, err = _cli([*common, f"--workdir={tmp_path / 'whole'}"], cwd=local_tmp_path)
  assert code == 0, err[-2000:]
  final = json.loads((tmp_path / "whole" / "final.json").read_text())
  assert final["final"]["eval/accuracy"] >= 0.9
  assert json.loads((tmp_path / "whole" / "config.json").read_text())["model"] == {
      **json.loads((tmp_path / "whole" / "config.json").read_text())["model"],
      "name": "user_models:MLP", "kwargs": {"width": 48}}
  # Stopped and resumed: the same parameters as the uninterrupted run.
  for extra in (["--stop_after_steps=100"], []):
    code, _, err = _cli([*common, f"--workdir={tmp_path / 'resumed'}", *extra],
                        cwd=local_tmp_path)
    assert code == 0, err[-2000:]
  resumed = json.loads((tmp_path / "resumed" / "final.json").read_text())
  assert resumed["params_sha256"] == final["params_sha256"]
  # --mode=eval from elsewhere, from the workdir's record alone.
  code, out, err = _cli([f"--workdir={tmp_path / 'whole'}", "--mode=eval"], cwd="/")
  assert code == 0, err[-2000:]
  assert json.loads(out)["eval/accuracy"] == pytest.approx(final["final"]["eval/accuracy"])
  # PBT over the learning rate, 4 members of the user's module.
  code, _, err = _cli([f"--config={user_dir / 'user_pbt.py'}", *common[1:],
                       f"--workdir={tmp_path / 'pbt'}"], cwd=local_tmp_path)
  assert code == 0, err[-2000:]
  result = json.loads((tmp_path / "pbt" / "tune" / "result.json").read_text())
  assert result["num_members"] == 4 and result["best_score"] >= 0.9


def test_an_nnx_module_trains_and_evaluates(user_dir, tmp_path, local_tmp_path):
  args = [f"--config={user_dir / 'user_config.py'}", f"--workdir={tmp_path / 'nnx'}",
          f"--config.data.name=npz:{user_dir / 'blobs.npz'}", "--config.model.name=user_models:NNXMLP",
          "--config.model.kwargs.in_features=20", "--config.model.kwargs.width=32"]
  code, _, err = _cli(args, cwd=local_tmp_path)
  assert code == 0, err[-2000:]
  assert json.loads((tmp_path / "nnx" / "final.json").read_text())["final"]["eval/accuracy"] >= 0.9
  code, out, err = _cli([f"--workdir={tmp_path / 'nnx'}", "--mode=eval"], cwd="/")
  assert code == 0 and json.loads(out)["eval/accuracy"] >= 0.9, err[-2000:]


def test_the_reference_adds_nothing_to_the_step(user_dir, tmp_path, monkeypatch, capsys):
  """The package's MLP built by a user's function trains to the same parameters, bit for
  bit, as model.name='mlp'."""
  monkeypatch.syspath_prepend(str(user_dir))
  common = ["jaxtrain", "--config=configs/digits_mlp.py", "--config.model.hidden_sizes=(64,)",
            "--config.train.num_steps=50", "--config.mesh.num_devices=1"]
  assert main.main([*common, f"--workdir={tmp_path / 'builtin'}"]) == 0
  assert main.main([*common, f"--workdir={tmp_path / 'ref'}",
                    "--config.model.name=user_models:builtin_mlp"]) == 0
  sha = [json.loads((tmp_path / w / "final.json").read_text())["params_sha256"]
         for w in ("builtin", "ref")]
  assert sha[0] == sha[1]


def _flowers_csv(path, rows=450, ragged_at=None):
  rng = np.random.default_rng(1)
  names = ["setosa", "versicolor", "virginica"]
  centers = rng.normal(0, 3, (3, 4))
  lines = ["a,b,species,c,d"]
  for i in range(rows):
    y = i % 3
    x = centers[y] + rng.normal(0, 0.7, 4)
    lines.append(f"{x[0]:.3f},{x[1]:.3f},{names[y]},{x[2]:.3f},{x[3]:.3f}")
  if ragged_at is not None:
    lines[ragged_at - 1] += ",7"
  path.write_text("\n".join(lines) + "\n")
  return path


def test_a_csv_with_named_classes_trains(tmp_path, capsys):
  path = _flowers_csv(tmp_path / "flowers.csv")
  workdir = tmp_path / "run"
  assert main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={workdir}",
                    f"--config.data.name=csv:{path}", "--config.data.label_column=species",
                    "--config.data.train_split=train[:80%]", "--config.data.eval_split=train[80%:]",
                    "--config.data.batch_size=32", "--config.train.num_steps=200",
                    "--config.mesh.num_devices=1"]) == 0
  assert json.loads((workdir / "final.json").read_text())["final"]["eval/accuracy"] >= 0.9


def _csv(tmp_path, **kw):
  return f"--config.data.name=csv:{_flowers_csv(tmp_path / 'f.csv', **kw)}"


def _npz(tmp_path, **arrays):
  path = tmp_path / "bad.npz"
  with path.open("wb") as f:  # np.savez(path) writes local files only.
    np.savez(f, **arrays)
  return f"--config.data.name=npz:{path}"


X, Y = np.zeros((10, 4), np.float32), np.arange(10) % 2
BAD = [
    ("module_does_not_import", lambda t: "--config.model.name=no_such_module:MLP",
     ["no_such_module", "cannot be imported"]),
    ("attribute_missing", lambda t: "--config.model.name=user_models:Nope",
     ["has no attribute 'Nope'"]),
    ("not_a_module", lambda t: "--config.model.name=user_models:NOT_A_MODULE",
     ["is an object of type int, not a flax.linen.Module class"]),
    ("wrong_number_of_logits", lambda t: "--config.model.name=user_models:ThreeLogits",
     ["returns (32, 3)", "logits of shape (32, 10)"]),
    ("npz_nan_input", lambda t: _npz(t, x_train=np.where(np.eye(10, 4) > 0, np.nan, X), y_train=Y),
     ["x_train[0] is not finite"]),
    ("npz_negative_label", lambda t: _npz(t, x_train=X, y_train=Y - 1),
     ["y_train has a negative label (-1)"]),
    ("npz_fractional_label", lambda t: _npz(t, x_train=X, y_train=Y + 0.5),
     ["non-integer values"]),
    ("npz_lengths_differ", lambda t: _npz(t, x_train=X, y_train=Y[:5]),
     ["x_train (10, 4) and y_train (5,)"]),
    ("npz_empty", lambda t: _npz(t, x_train=X[:0], y_train=Y[:0]),
     ["the train split is empty"]),
    ("npz_half_a_split", lambda t: _npz(t, x_train=X, y_train=Y, x_test=X),
     ["x_test and y_test go together"]),
    ("npz_missing_file", lambda t: f"--config.data.name=npz:{t / 'nope.npz'}",
     ["cannot read"]),
    ("npz_unknown_split", lambda t: _npz(t, x_train=X, y_train=Y),
     ["split 'test' of data.name=", "available splits: train"]),
    ("csv_ragged_row", lambda t: [_csv(t, ragged_at=7), "--config.data.label_column=species"],
     ["f.csv line 7 has 6 fields, the header 5"]),
    ("csv_no_label_column", lambda t: _csv(t), ["no column 'label' in", "set data.label_column"]),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_model_or_bad_data_is_one_line_before_compiling(make, expected, user_dir,
                                                              tmp_path, monkeypatch, capsys,
                                                              compiles):
  monkeypatch.syspath_prepend(str(user_dir))
  extra = make(tmp_path)
  code = main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={tmp_path / 'w'}",
                    "--config.data.batch_size=32", *([extra] if isinstance(extra, str) else extra)])
  err = capsys.readouterr().err.splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  for text in expected:
    assert text in err[0], err[0]
  assert not compiles, "the error came after something was compiled"


def test_an_nnx_module_and_its_linen_twin_give_equal_losses(user_dir, monkeypatch):
  """The NNX bridge adds nothing to the numbers: with the same parameters (the linen
  twin's, renamed), the same batches and optax's Adam, logits and losses stay equal."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from jaxtrain import models
  from jaxtrain.config import base_config
  monkeypatch.syspath_prepend(str(user_dir))
  c = base_config()
  c.model.name, c.model.kwargs = "user_models:MLP", ml_collections.ConfigDict({"width": 32})
  linen = models.build(c.model, 3, (20,))
  c.model.name = "user_models:NNXMLP"
  c.model.kwargs = ml_collections.ConfigDict({"in_features": 20, "width": 32})
  nnx_model = models.build(c.model, 3, (20,))
  rng = np.random.default_rng(0)
  batches = [{"inputs": jnp.asarray(rng.normal(size=(16, 20)), jnp.float32),
              "labels": jnp.asarray(rng.integers(0, 3, 16))} for _ in range(5)]
  params = {"linen": linen.init(jax.random.PRNGKey(0), batches[0])["params"]}
  assert jax.tree.map(jnp.shape, nnx_model.init(jax.random.PRNGKey(0), batches[0])["params"]) == {
      "hidden": {"bias": (32,), "kernel": (20, 32)}, "out": {"bias": (3,), "kernel": (32, 3)}}
  params["nnx"] = {"hidden": params["linen"]["Dense_0"], "out": params["linen"]["Dense_1"]}
  model = {"linen": linen, "nnx": nnx_model}

  def loss(name, p, batch):
    logits, _ = model[name].apply({"params": p}, batch, jax.random.PRNGKey(1), True, {})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

  tx = optax.adam(1e-2)
  state = {k: tx.init(v) for k, v in params.items()}
  for batch in batches:
    values = {}
    for name in ("linen", "nnx"):
      values[name], grads = jax.value_and_grad(lambda p: loss(name, p, batch))(params[name])
      updates, state[name] = tx.update(grads, state[name], params[name])
      params[name] = optax.apply_updates(params[name], updates)
    np.testing.assert_allclose(values["nnx"], values["linen"], rtol=1e-6)


import flax.linen as nn  # noqa: E402  (the notebook-style model below)


class PyMLP(nn.Module):
  """Defined at this module's top level, as a notebook cell defines it in __main__."""
  width: int = 32
  num_classes: int = 2

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x.reshape((x.shape[0], -1)))))


def _blobs(seed, n):
  rng = np.random.default_rng(seed)
  centers = np.random.default_rng(0).normal(0, 3, (3, 20))
  y = rng.integers(0, 3, n)
  return (centers[y] + rng.normal(0, 1, (n, 20))).astype(np.float32), y


def test_python_objects_from_a_notebook_train_tune_and_are_found_again(tmp_path):
  from jaxtrain import errors, tune
  from jaxtrain.config import base_config
  from jaxtrain.jobs import train
  data = {"train": _blobs(1, 600), "validation": _blobs(2, 200)}
  c = base_config()
  c.data.eval_split, c.data.batch_size, c.mesh.num_devices = "validation", 32, 1
  c.train.num_steps, c.train.eval_every_steps = 200, 100
  workdir = tmp_path / "run"
  final = train.run(c, workdir, model=PyMLP, data=data)
  assert final["final"]["eval/accuracy"] >= 0.9
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["model"]["name"] == f"{__name__}:PyMLP"
  assert recorded["data"]["name"] == f"npz:{workdir / 'data.npz'}"
  assert train.run(c, workdir, model=PyMLP, data=data)["step"] == 200  # The same objects: resumes.
  with pytest.raises(errors.UserError, match="holds other data"):
    train.run(c, workdir, model=PyMLP, data={"train": _blobs(3, 600), "validation": data["validation"]})
  # The command line evaluates it from the record (the module imports from the repository).
  code, out, err = _cli([f"--workdir={workdir}", "--mode=eval"], cwd=REPO)
  assert code == 0 and json.loads(out)["eval/accuracy"] >= 0.9, err[-2000:]

  def local_model():  # Inside a function: nothing can name it later.
    return PyMLP()
  with pytest.raises(errors.UserError, match="defined inside a function"):
    train.run(c, tmp_path / "local", model=local_model, data=data)
  with pytest.raises(errors.UserError, match="pass the module class"):
    train.run(c, tmp_path / "instance", model=PyMLP(), data=data)
  assert not (tmp_path / "local").exists() and not (tmp_path / "instance").exists()

  c.tune.strategy, c.tune.population_size, c.checkpoint.every_steps = "random", 2, 100
  c.tune.space.optim = {"learning_rate": "loguniform(1e-3, 3e-2)"}
  result = tune.run(c, tmp_path / "search", model=PyMLP, data=data)
  assert result["num_members"] == 2 and result["best_score"] >= 0.9


def test_data_from_a_function_of_ones_own(tmp_path, local_tmp_path, monkeypatch, capsys,
                                          compiles):
  """data.name='module:function': the function returns {'train': (x, y), ...}. The
  module is local (Python imports it), the workdirs tmp_path."""
  (local_tmp_path / "user_data.py").write_text(textwrap.dedent('''
      import numpy as np

      def splits():
        rng = np.random.default_rng(0)
        centers = rng.normal(0, 3, (3, 20))
        def split(n):
          y = rng.integers(0, 3, n)
          return (centers[y] + rng.normal(0, 1, (n, 20))).astype(np.float32), y
        return {"train": split(600), "validation": split(200)}

      def not_a_dict():
        return [1, 2]
  '''))
  monkeypatch.syspath_prepend(str(local_tmp_path))
  args = ["jaxtrain", "--config=configs/digits_mlp.py", "--config.data.eval_split=validation",
          "--config.data.batch_size=32", "--config.train.num_steps=200",
          "--config.mesh.num_devices=1"]
  assert main.main([*args, f"--workdir={tmp_path / 'run'}",
                    "--config.data.name=user_data:splits"]) == 0
  assert json.loads((tmp_path / "run" / "final.json").read_text())["final"]["eval/accuracy"] >= 0.9
  compiles.clear()
  capsys.readouterr()
  assert main.main([*args, f"--workdir={tmp_path / 'bad'}",
                    "--config.data.name=user_data:not_a_dict"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and "returned a list" in err[0] and not compiles, err


def test_a_grain_source_of_ones_own_trains(tmp_path, local_tmp_path, monkeypatch):
  """data.name='module:function' whose splits are grain random-access sources: records
  as dicts ('label' + one inputs key) or as (inputs, label) pairs; an empty one is one
  line naming its split."""
  (local_tmp_path / "user_grain.py").write_text(textwrap.dedent('''
      import numpy as np


      class Blobs:  # A grain RandomAccessDataSource: __len__ and __getitem__.
        def __init__(self, seed, n, as_dict):
          rng = np.random.default_rng(seed)
          self.y = rng.integers(0, 3, n)
          centers = np.random.default_rng(0).normal(0, 3, (3, 20))
          self.x = (centers[self.y] + rng.normal(0, 1, (n, 20))).astype(np.float32)
          self.as_dict = as_dict

        def __len__(self):
          return len(self.y)

        def __getitem__(self, i):
          if self.as_dict:
            return {"features": self.x[i], "label": int(self.y[i])}
          return self.x[i], int(self.y[i])

      def splits():
        return {"train": Blobs(1, 600, as_dict=True), "validation": Blobs(2, 200, as_dict=False)}

      def empty():
        return {"train": Blobs(1, 0, as_dict=True)}
  '''))
  monkeypatch.syspath_prepend(str(local_tmp_path))
  args = ["jaxtrain", "--config=configs/digits_mlp.py", "--config.data.eval_split=validation",
          "--config.data.batch_size=32", "--config.train.num_steps=200",
          "--config.mesh.num_devices=1"]
  assert main.main([*args, f"--workdir={tmp_path / 'run'}",
                    "--config.data.name=user_grain:splits"]) == 0
  final = json.loads((tmp_path / "run" / "final.json").read_text())
  assert final["final"]["eval/accuracy"] >= 0.9
  assert main.main([*args, f"--workdir={tmp_path / 'bad'}",
                    "--config.data.name=user_grain:empty"]) == 2


BUILDER = textwrap.dedent('''
    """A user's own TFDS builder: synthetic, generated locally (nothing to download)."""
    import numpy as np
    import tensorflow_datasets as tfds


    class UserBlobs(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "features": tfds.features.Tensor(shape=(20,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=3)}),
            supervised_keys=("features", "label"))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(1, 600),
                "test": self._generate_examples(2, 200)}

      def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        centers = np.random.default_rng(0).normal(0, 3, (3, 20))
        for i in range(n):
          y = int(rng.integers(0, 3))
          yield i, {"features": (centers[y] + rng.normal(0, 1, 20)).astype(np.float32),
                    "label": y}
''')


@pytest.mark.slow  # Three CLI processes (~20 s).
def test_a_tfds_builder_of_ones_own_named_in_import_modules_trains_offline(tmp_path,
                                                                           local_tmp_path):
  """data.import_modules imports the builder's module; its dataset is prepared locally
  like the embedded ones; a module that does not import is one line. The module, the
  data dir and the current folder are local; the workdirs tmp_path."""
  (local_tmp_path / "user_builders.py").write_text(BUILDER)
  args = ["--config=" + str(REPO / "configs" / "digits_mlp.py"),
          "--config.data.name=user_blobs", "--config.data.import_modules=('user_builders',)",
          "--config.data.train_split=train", "--config.data.eval_split=test",
          "--config.data.test_split=", "--config.data.batch_size=32",
          "--config.train.num_steps=200", "--config.mesh.num_devices=1",
          f"--config.data.data_dir={local_tmp_path / 'data'}"]
  code, _, err = _cli([*args, f"--workdir={tmp_path / 'run'}"], cwd=local_tmp_path)
  assert code == 0, err[-2000:]
  assert json.loads((tmp_path / "run" / "final.json").read_text())["final"]["eval/accuracy"] >= 0.9
  # --mode=eval from elsewhere finds the builder through the recorded config.
  code, out, err = _cli(["--mode=eval", f"--workdir={tmp_path / 'run'}"], cwd=local_tmp_path)
  assert code == 0, err[-2000:]
  code, _, err = _cli([*args, "--config.data.import_modules=('no_such_module',)",
                       f"--workdir={tmp_path / 'bad'}"], cwd=local_tmp_path)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert "data.import_modules: cannot import 'no_such_module'" in err


def test_missing_splits_are_carved_from_train_by_a_seeded_permutation(tmp_path, capsys):
  """An npz with train only: data.validation_fraction / test_fraction carve those splits
  from train, the same rows on every call (data.split_seed), disjoint, train keeps the
  rest; a run evaluates on the carved split; bad fractions are one line."""
  from jaxtrain.data import catalog
  from jaxtrain.config import base_config
  rng = np.random.default_rng(0)
  centers = rng.normal(0, 3, (3, 20))
  y = rng.integers(0, 3, 1000)
  x = (centers[y] + rng.normal(0, 1, (1000, 20))).astype(np.float32)
  x[:, 0] = np.arange(1000)  # Row ids, to check which rows went where.
  with (tmp_path / "only_train.npz").open("wb") as f:  # np.savez(path): local files only.
    np.savez(f, x_train=x, y_train=y)
  c = base_config().data
  c.name, c.validation_fraction, c.test_fraction = f"npz:{tmp_path / 'only_train.npz'}", 0.1, 0.2
  rows = {s: np.asarray(catalog.split_of(c, s)[0].__getitems__(range(n)))
          for s, n in (("train", 700), ("validation", 100), ("test", 200))}
  ids = {s: {int(r["inputs"][0]) for r in v} for s, v in rows.items()}
  assert [len(v) for v in ids.values()] == [700, 100, 200]
  assert [len(catalog.split_of(c, s)[0]) for s in rows] == [700, 100, 200]
  assert set().union(*ids.values()) == set(range(1000))  # Disjoint, every row once.
  again = {int(r["inputs"][0]) for r in catalog.split_of(c, "validation")[0].__getitems__(range(100))}
  assert again == ids["validation"]
  c.split_seed = 1
  assert {int(r["inputs"][0]) for r in
          catalog.split_of(c, "validation")[0].__getitems__(range(100))} != ids["validation"]
  args = ["jaxtrain", "--config=configs/digits_mlp.py", f"--config.data.name={c.name}",
          "--config.data.validation_fraction=0.2", "--config.data.eval_split=validation",
          "--config.data.batch_size=32", "--config.train.num_steps=200",
          "--config.mesh.num_devices=1"]
  assert main.main([*args, f"--workdir={tmp_path / 'run'}"]) == 0
  final = json.loads((tmp_path / "run" / "final.json").read_text())
  assert final["final"]["eval/accuracy"] >= 0.9
  recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
  assert (recorded["validation_fraction"], recorded["split_seed"]) == (0.2, 0)
  capsys.readouterr()
  assert main.main([*args[:3], "--config.data.validation_fraction=1.5", *args[4:],
                    f"--workdir={tmp_path / 'bad'}"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and "data.validation_fraction=1.5 must be in [0, 1)" in err[0], err
  capsys.readouterr()
  assert main.main(["jaxtrain", "--config=configs/digits_mlp.py",
                    "--config.data.validation_fraction=0.1",
                    f"--workdir={tmp_path / 'tfds'}"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and "train_split='train[:90%]'" in err[0], err
  assert not (tmp_path / "tfds").exists()
