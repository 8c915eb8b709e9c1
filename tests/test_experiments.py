"""The studies in experiments/ run end to end (quick mode) and return sane data."""

import math
import sys
from pathlib import Path

import pytest

# Plain `pytest` (unlike `python -m pytest`) does not put the repository root,
# where experiments/ lives, on sys.path.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from experiments import digits_tuning, mnist1d_models  # noqa: E402
from jaxtrain import paths  # noqa: E402
from jaxtrain.jobs import checks  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MNIST1D_ROW_KEYS = {"model", "variant", "test_accuracy", "test_loss", "num_params", "num_steps",
                    "train_time_sec", "wall_time_sec", "workdir"}
DIGITS_ROW_KEYS = {"method", "test_accuracy", "val_accuracy", "member_steps", "num_members",
                   "train_time_sec", "wall_time_sec", "workdir"}


def check_mnist1d_rows(rows, models):
  assert [(r["model"], r["variant"]) for r in rows] == [
      (m, v) for m in models for v in mnist1d_models.VARIANTS]
  for r in rows:
    assert set(r) == MNIST1D_ROW_KEYS
    assert 0 < r["test_accuracy"] <= 1 and math.isfinite(r["test_loss"])
    assert r["num_steps"] == mnist1d_models.QUICK_STEPS
    assert 0 < r["train_time_sec"] <= r["wall_time_sec"]
    assert (paths.of(r["workdir"]) / "final.json").is_file()  # Local or gs://.
  params = {r["model"]: r["num_params"] for r in rows}
  assert all(r["num_params"] == params[r["model"]] for r in rows)  # Shuffling changes no shape.
  if "logistic" in params:
    assert params["logistic"] == 40 * 10 + 10  # MNIST-1D: 40 inputs, 10 classes.


@pytest.mark.parametrize("num_steps", [mnist1d_models.QUICK_STEPS, 2000])
def test_mnist1d_model_configs_are_valid(num_steps):
  for model in mnist1d_models.MODELS:
    config = mnist1d_models.model_config(model, num_steps)
    checks.validate(config)
    assert config.data.name == "mnist1d" and config.train.num_steps == num_steps


def test_mnist1d_models_quick_subset(tmp_path):
  rows = mnist1d_models.run(tmp_path, quick=True, models=("logistic", "cnn"))
  check_mnist1d_rows(rows, ("logistic", "cnn"))
  table = mnist1d_models.table(rows)
  assert "| logistic regression | 410 |" in table and "| CNN 32-32-32 |" in table


@pytest.mark.slow
def test_mnist1d_models_quick_every_model(tmp_path, capsys):
  rows = mnist1d_models.run(tmp_path, quick=True)
  check_mnist1d_rows(rows, mnist1d_models.MODELS)
  mnist1d_models.main(["--workdir", str(tmp_path), "--quick"])  # Resumes: evaluates only.
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
  assert len(lines) == 1 + len(mnist1d_models.MODELS)


@pytest.fixture(scope="module")
def digits_result(tmp_path_factory):
  return digits_tuning.run(tmp_path_factory.mktemp("experiments"), quick=True)


def test_digits_tuning_rows(digits_result):
  rows = {r["method"]: r for r in digits_result["rows"]}
  assert list(rows) == ["single", "random", "pbt"]
  for r in rows.values():
    assert DIGITS_ROW_KEYS <= set(r)
    assert 0 < r["test_accuracy"] <= 1 and 0 < r["val_accuracy"] <= 1
    assert 0 < r["train_time_sec"] <= r["wall_time_sec"]
  assert rows["single"]["num_members"] == 1 and rows["single"]["member_steps"] == 60
  for method in ("random", "pbt"):  # Quick mode: 4 members x 60 steps, no early stops yet.
    assert rows[method]["num_members"] == 4 and rows[method]["member_steps"] == 4 * 60
    assert set(rows[method]["best_settings"]) >= {"optim.learning_rate", "optim.weight_decay"}
  table = digits_tuning.table(digits_result["rows"])
  assert len(table.splitlines()) == 2 + 3


def test_digits_tuning_plot_is_a_png(digits_result):
  path = Path(digits_result["plot"])
  assert path.name == "digits_tuning.png"
  assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
