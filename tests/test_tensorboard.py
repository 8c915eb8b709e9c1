"""What a tuning run's TensorBoard logdir holds, read back with TensorBoard's own reader.

One run per member (members/NNNN) with its whole train and eval curves at the steps
it trained, its lineage events as text, and its hparams session (the searched keys
with the values it ended with); the root run holds the population summaries only.
Every number is compared with metrics.jsonl and tune/lineage.jsonl.
"""

import pytest

from jaxtrain.io import writers
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain.tune import loop as tune_run
from tests.test_tune import tune_config

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="TensorBoard (a test dependency: pip install -e '.[test]') reads the event files")
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402

SEARCHED = {"optim.learning_rate", "optim.weight_decay"}


def _read(run_dir):
  acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def _curve(acc, tag):
  return [(e.step, e.value) for e in acc.Scalars(tag)]


def _texts(acc):
  """[(step, text)] of the run's text entries (tensorboardX: tag 'lineage/text_summary')."""
  out = []
  for tag in acc.Tags()["tensors"]:
    if tag.startswith("lineage"):
      out += [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
  return sorted(out)


def _session(acc):
  """(hparams of the session start, whether the session ended)."""
  content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
  start = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in start.hparams.items()}
  return values, hparams_metadata.SESSION_END_INFO_TAG in content


@pytest.fixture(scope="module")
def pbt_logdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pbt_tb")
  tune_run.run(tune_config("pbt", **{"train.num_steps": 60}), workdir)
  return workdir


def test_each_member_run_holds_its_whole_curves_at_its_steps(pbt_logdir):
  records = writers.read_metrics(pbt_logdir)
  assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
  for slot, member in enumerate(records[0]["member_ids"]):
    acc = _read(pbt_logdir / "members" / f"{member:04d}")
    for tag in ("eval/accuracy", "eval/loss", "train/loss", "train/accuracy"):
      expected = [(r["step"], r[tag][slot]) for r in records]
      curve = _curve(acc, tag)
      assert [s for s, _ in curve] == [s for s, _ in expected], tag
      assert [v for _, v in curve] == pytest.approx([v for _, v in expected], rel=1e-6), tag


def test_pbt_exploits_are_text_in_the_member_run_and_its_curve_continues(pbt_logdir):
  events = lineage_lib.read(pbt_logdir / "tune" / "lineage.jsonl")
  exploits = [e for e in events if e["event"] == "exploit"]
  assert exploits, "PBT made no exploit in 5 ready intervals"
  for member in {e["member"] for e in exploits}:
    texts = _texts(_read(pbt_logdir / "members" / f"{member:04d}"))
    mine = [e for e in exploits if e["member"] == member]
    assert [s for s, _ in texts] == [e["step"] for e in mine]
    for (_, text), e in zip(texts, mine):
      assert f"copied member {e['parent']}" in text and "optim.learning_rate" in text
  members = {e["member"] for e in events if e["event"] == "init"}
  for member in members - {e["member"] for e in exploits}:
    assert _texts(_read(pbt_logdir / "members" / f"{member:04d}")) == []


def test_each_member_has_an_hparams_session_with_its_final_settings(pbt_logdir):
  finals = {e["member"]: e["after"] for e in lineage_lib.read(
      pbt_logdir / "tune" / "lineage.jsonl") if e["event"] == "final"}
  assert sorted(finals) == [0, 1, 2, 3]
  for member, settings in finals.items():
    hparams, ended = _session(_read(pbt_logdir / "members" / f"{member:04d}"))
    assert set(hparams) == SEARCHED and ended
    assert hparams == pytest.approx(settings, rel=1e-6)


def test_the_root_run_holds_population_summaries_only(pbt_logdir):
  acc = _read(pbt_logdir)
  tags = set(acc.Tags()["scalars"])
  assert {"best/eval/accuracy", "member_steps_per_sec", "members/finite",
          "members/active"} <= tags
  assert not [t for t in tags if t.startswith("members/0")]  # Curves live in member runs.
  records = writers.read_metrics(pbt_logdir)
  assert _curve(acc, "best/eval/accuracy") == [
      (r["step"], pytest.approx(r["best/eval/accuracy"], rel=1e-6)) for r in records]
  assert [v for _, v in _curve(acc, "members/finite")] == [4.0] * len(records)
  # No root hparams session: the HParams view's table is the members'.
  with pytest.raises(KeyError):
    acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)


def test_halving_refills_start_their_curves_at_their_own_step_zero(tmp_path):
  tune_run.run(tune_config("halving", size=4), tmp_path)
  events = lineage_lib.read(tmp_path / "tune" / "lineage.jsonl")
  refills = [e for e in events if e["event"] == "refill"]
  culls = {e["member"]: e for e in events if e["event"] == "cull"}
  assert refills and culls
  for e in refills:
    acc = _read(tmp_path / "members" / f"{e['member']:04d}")
    steps = [s for s, _ in _curve(acc, "eval/accuracy")]
    last = culls[e["member"]]["step"] if e["member"] in culls else 40  # A refill is culled too.
    assert steps == list(range(10, last - e["step"] + 1, 10)), (e, steps)
    replaced = _read(tmp_path / "members" / f"{e['replaces']:04d}")
    hparams, ended = _session(replaced)
    assert ended and hparams == pytest.approx(e["before"], rel=1e-6)
    cull = culls[e["replaces"]]
    born = {r["member"]: r for r in refills}.get(e["replaces"])  # Itself a refill?
    expected = [] if born is None else [(0, "refill")]
    expected.append((cull["step"] - (born["step"] if born else 0),
                     f"culled at rung {cull['rung']}"))  # At the member's own step.
    assert [(s, t.split(":")[0]) for s, t in _texts(replaced)] == expected


@pytest.mark.parametrize("strategy", ["pbt", "halving", "random_early_stopping"])
def test_tune_history_gives_each_member_the_curve_its_tensorboard_run_holds(
    strategy, pbt_logdir, tmp_path):
  """jaxtrain.tune.history reads the files (metrics.jsonl, lineage.jsonl); the member
  runs are written live from the loop's state: two paths to the same curves."""
  from jaxtrain import tune
  if strategy == "pbt":
    workdir = pbt_logdir
  else:
    overrides = {"train.num_steps": 60} if strategy != "halving" else {}
    config = tune_config(strategy.split("_")[0], **overrides)
    if strategy == "random_early_stopping":
      config.tune.early_stopping.patience, config.tune.early_stopping.min_delta = 1, 0.05
    workdir = tmp_path
    tune_run.run(config, workdir)
  h = tune.history(workdir)
  runs = sorted(int(p.name) for p in (workdir / "members").iterdir())
  assert sorted(h.curves) == runs
  stops = h.events_of("stop", "cull")
  if strategy != "pbt":
    assert stops, "the search stopped no member: the case tests nothing"
  for member, curve in h.curves.items():
    acc = _read(workdir / "members" / f"{member:04d}")
    for tag in ("eval/accuracy", "train/loss"):
      tb = _curve(acc, tag)
      assert curve["step"] == [s for s, _ in tb], (member, tag)
      assert curve[tag] == pytest.approx([v for _, v in tb], rel=1e-6)
  assert h.metric == "eval/accuracy" and len(h.members) == len(runs)
  assert [e["event"] for e in h.events] == [e["event"] for e in lineage_lib.read(
      workdir / "tune" / "lineage.jsonl")]
