"""The jobs a user runs: one training run, an evaluation, a compile report, and what
they share (validation, the build recipe, the workdir, the cadence of periodic actions)."""
