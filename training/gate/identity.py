"""What a gate report measured, as hashes stored in its meta and in the verdict.

* ``weights_sha256(model)``: the identity of the weights (independent of the checkpoint file); the
  export step checks that a verdict was given to the weights it exports.
* ``config_sha256(cfg)``: the identity of a whole gate config.
* ``measurement_sha256(cfg)``: the identity of what a config *measures*, without its verdict settings.

With the images' paths they decide when a stored report can be re-judged instead of measured again
(``training.gate.run.reusable_report``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from torch import nn

__all__ = ["config_sha256", "measurement_sha256", "weights_sha256"]


def config_sha256(cfg: dict[str, Any]) -> str:
    """SHA-256 of the resolved config (canonical JSON), so overrides change the hash too."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def measurement_sha256(cfg: dict[str, Any]) -> str:
    """SHA-256 of what the evaluation *measures*: the config without its verdict settings (thresholds,
    ``required`` flags, the clean floors, gradient-norm ceilings, the surrogate's path; the surrogate
    is identified by its weights). Two reports with the same weights and this hash hold the same
    numbers, so the gate can re-judge a report under new thresholds without re-running the attacks."""
    measured = copy.deepcopy(cfg)
    measured.pop("clean", None)
    measured.pop("surrogate_checkpoint", None)
    for entry in (measured.get("attacks") or {}).values():
        entry.pop("thresholds", None)
        entry.pop("required", None)
    defenses = measured.pop("defenses", None)  # a disabled section measures nothing
    if isinstance(defenses, dict) and defenses.get("enabled", False):
        measured["defenses"] = {k: v for k, v in defenses.items() if k != "required"}
    if isinstance(measured.get("grad_norm"), dict):
        measured["grad_norm"] = {k: v for k, v in measured["grad_norm"].items()
                                 if k in {"enabled", "max_images", "h", "check_h"}}
    return config_sha256(measured)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict (names and bytes, sorted): identifies the weights that were gated,
    independent of the checkpoint file (which the gate verdict itself rewrites). A model that wraps an
    exported artifact (``training.gate.repository.ExportedModel``) gives its ``weights_state()``, the
    weights under the checkpoint's names, so a version hashes like the checkpoint it came from."""
    weights_state = getattr(model, "weights_state", None)
    state = weights_state() if callable(weights_state) else model.state_dict()
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
