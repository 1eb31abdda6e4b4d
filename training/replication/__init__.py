"""The replication of the NT paper's baseline-vs-NT comparison (CLI: training/replicate.py).

* ``plan``: every training run it needs (main runs and ablation grids) from the CLI and the config.
* ``runs``: train, resume or reuse each run (training/train.py in-process).
* ``evaluation``: evaluate the checkpoints with the gate's attacks; reuse a stored report exactly when
  the gate would (``training.gate.run.reusable_report``).
* ``targets``: the project's targets and the derived rows of the reports.
* ``results`` / ``figures``: docs/RESULTS.md and its plots.
"""
