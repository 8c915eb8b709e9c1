"""A user's own Flax MLP (model.name='module:Attr') against the built-in MLP, side by side.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_own_model.py --rounds=5

Both train configs/digits_mlp.py's task (MLP 64-256-256-10, Adam, batch 128, data on
the device) for --steps steps through `jaxtrain.train.run`, in this one process,
alternating which goes first; the user's module is a plain linen MLP written as a
user would (below), reached by reference. Reported: the median over rounds of the
steps/s train.run logs (metrics.jsonl `steps_per_sec`, first interval dropped) and
the ratio user / built-in. The reference adds nothing to the compiled step, so the
ratio should be 1 within the machine's noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

USER_MODEL = textwrap.dedent('''
    import flax.linen as nn


    class MLP(nn.Module):
      num_classes: int
      hidden: tuple = (256, 256)

      @nn.compact
      def __call__(self, x, *, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
          x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)
''')


def _steps_per_sec(workdir: Path) -> float:
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [r["steps_per_sec"] for r in records if "steps_per_sec" in r][1:]
  return statistics.median(rates)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=2000)
  args = p.parse_args()
  from jaxtrain import cli  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import train  # pylint: disable=g-import-not-at-top
  base = Path(tempfile.mkdtemp(prefix="bench_own_model_"))
  (base / "bench_user_models.py").write_text(USER_MODEL)
  sys.path.insert(0, str(base))
  rates = {"built-in mlp": [], "user's linen MLP": []}
  names = {"built-in mlp": "mlp", "user's linen MLP": "bench_user_models:MLP"}
  for r in range(args.rounds):
    order = list(rates) if r % 2 == 0 else list(rates)[::-1]
    for arm in order:
      workdir = base / f"{r}_{names[arm].replace(':', '_')}"
      config, _, _ = cli.parse([
          "jaxtrain", f"--config={REPO / 'configs/digits_mlp.py'}", f"--workdir={workdir}",
          f"--config.model.name={names[arm]}", f"--config.train.num_steps={args.steps}",
          "--config.train.log_every_steps=200", f"--config.train.eval_every_steps={args.steps}",
          f"--config.checkpoint.every_steps={args.steps}", "--config.mesh.num_devices=1"])
      train.run(config, workdir)
      rates[arm].append(_steps_per_sec(workdir))
      print(f"round {r + 1}/{args.rounds} {arm}: {rates[arm][-1]:.0f} steps/s", file=sys.stderr)
  medians = {arm: statistics.median(v) for arm, v in rates.items()}
  per_round = [u / b for u, b in zip(rates["user's linen MLP"], rates["built-in mlp"])]
  print("| model | steps/s (median of rounds) |\n|---|---:|")
  for arm, value in medians.items():
    print(f"| {arm} | {value:.0f} |")
  ratio = medians["user's linen MLP"] / medians["built-in mlp"]
  print(f"| **ratio user / built-in** | **{ratio:.3f}** (median of per-round ratios "
        f"{statistics.median(per_round):.3f}) |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
