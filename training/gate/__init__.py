"""The acceptance gate: no model is exported unless it was attacked, measured and judged.

The pipeline, in the order the modules are used:

* ``config``: training/configs/gate.yaml with overrides, validated; which attack sections to run.
* ``data``: the evaluated images (a seeded subset of a manifest split, canonical sizes) and their MOS;
  the images a fitted attack fits on, from another split.
* ``scoring``: ``CropScorer``, the served score (mean over the eval crops) as a differentiable module.
* ``attacks``: the attack suite, one module per attack on a common base, shared through a registry.
* ``attack_runs``: one attack section of the config on the images (and the I-FGSM intensity sweep).
* ``evaluation``: ``evaluate_model``, the clean metrics, attacks, gradient norms and sweep as a report.
* ``metrics`` / ``grad_norms``: robustness metrics of scores under attack; input-gradient norms.
* ``tables`` / ``plots`` / ``report``: report.json, report.md (paper-style tables) and PNG plots.
* ``identity``: the hashes that identify the weights, the config and what it measures.
* ``verdict``: thresholds -> pass / fail rows; ``verify_gate`` for the export step.
* ``run``: ``run_gate`` (evaluate or re-judge a reusable report, judge, write) and
  ``gate_checkpoint`` (training/train.py).
* ``repository``: a model-repository version (its exported TorchScript / torch.export artifact) as
  a model the gate can attack (``training/evaluate.py --model-repository``).

``tensors`` holds the low-level helpers (device, eval mode, input gradient) that the attacks and the
gradient norms share. Importing this package is cheap: import the module you need.
"""
