"""Reports of the evaluation engine: report.json, report.md and the comparison of several reports.

* ``write_report(report, out_dir)``: report.json (JSON-safe: NaN -> null), the PNG plots
  (``training.gate.plots``) and report.md: meta, the gate verdict, Tables 1-3 and S8-S10
  (``training.gate.tables``), attack details, gradient norms, the intensity sweep and the plots.
* ``load_report(path)``: a report.json, or the folder holding one.
* ``write_comparison(reports, out_dir)``: comparison.md with "A / B" cells and overlaid plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.gate.plots import write_plots
from training.gate.tables import (
    ATTACK_TABLES,
    Reports,
    attack_table,
    clean_table,
    defense_table,
    details_table,
    fd_check_table,
    fmt,
    gate_table,
    grad_norm_table,
    markdown_table,
    r_table,
    ranking_table,
    sweep_table,
)
from training.utils import file_sha256

__all__ = [
    "comparison_tables",
    "load_report",
    "render_markdown",
    "sanitize",
    "write_comparison",
    "write_report",
]


def sanitize(obj: Any) -> Any:
    """JSON-safe copy: NaN / ±inf -> None, numpy scalars and arrays -> Python, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return sanitize(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"report not found: {path}")
    with open(path) as f:
        return json.load(f)


def write_report(report: Mapping[str, Any], out_dir: str | Path, title: str = "Attack evaluation") -> str:
    """Write report.json, the PNG plots and report.md into ``out_dir``; returns sha256(report.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = sanitize(report)
    with open(out / "report.json", "w") as f:
        json.dump(clean, f, indent=1, allow_nan=False)  # insertion order = config order
        f.write("\n")
    plots = write_plots({"model": clean}, out)
    (out / "report.md").write_text(render_markdown(clean, plots, title), encoding="utf-8")
    return file_sha256([out / "report.json"])


def render_markdown(
    report: Mapping[str, Any], plots: Sequence[str] = (), title: str = "Attack evaluation"
) -> str:
    """report.md: meta, gate verdict, Tables 1-3 and S8-S10, attack details, norms, sweep, plots."""
    meta = report.get("meta", {})
    single = {"model": report}
    gate = report.get("gate")
    parts = [f"# {title}", ""]
    info = [
        ("checkpoint", meta.get("checkpoint")), ("model", meta.get("model_name")),
        ("weights sha256", meta.get("weights_sha256")), ("manifest", meta.get("manifest")),
        ("split", meta.get("split")), ("images", meta.get("n_images")),
        ("crops: served / attacked", f"{meta.get('served_crops')} / {meta.get('attack_crops')}"),
        ("artifact", (meta.get("artifact") or {}).get("path")),
        ("surrogate", meta.get("surrogate_checkpoint")), ("device", meta.get("device")),
        ("gate config sha256", meta.get("config_sha256")),
        ("total seconds", fmt(report.get("seconds", {}).get("total"), 1)),
    ]
    parts += [markdown_table(["", ""], [[k, f"`{v}`" if v is not None else "n/a"] for k, v in info]), ""]
    if isinstance(gate, Mapping):
        verdict = "PASSED" if gate.get("passed") else "FAILED"
        parts += [f"## Acceptance gate: {verdict}", "", gate_table(gate), ""]
    parts += ["## Table 1. Clean performance (served score vs MOS)", "", clean_table(single), ""]
    attack_clean = report.get("clean", {}).get("attack_scorer")
    if attack_clean:
        parts += [
            f"The attacks see {attack_clean['num_crops']} crop(s) per image; with that scorer the clean "
            f"SROCC is {fmt(attack_clean['srocc'])}, PLCC {fmt(attack_clean['plcc'])}, RMSE "
            f"{fmt(attack_clean['rmse'])}. Before/after columns compare that scorer with itself.", "",
        ]
    parts += _plcc_note(report)
    for table_title, metric in ATTACK_TABLES:
        parts += [f"## {table_title}", "", attack_table(single, metric), ""]
    parts += ["## Table S10. R robustness↑ (Eq. S12, β1 = 100, β2 = 0)", "", r_table(single), "",
              R_FLOOR_NOTE, ""]
    parts += _ranking_section(single, "##")
    parts += ["## Attacks: parameters and visibility", "", details_table(report), ""]
    if report.get("grad_norm", {}).get("status") == "ok":
        parts += ["## Gradient norms (Fig. 4)", "", grad_norm_table(single), ""]
        parts += _fd_check_section(single, "###")
    if report.get("sweep", {}).get("rows"):
        parts += ["## FGSM intensity sweep (Fig. 6)", "", sweep_table(report), ""]
    defenses = defense_table(report)
    if defenses:
        n_crops = (report.get("defenses") or {}).get("attack_crops")
        parts += ["## Defenses: the gateway's robust modes (informational)", "",
                  f"Scores of the attack scorer ({n_crops} crop(s)) behind each defense; the attacks are "
                  "re-run adaptively against the defended scorer (docs/ROBUST_MODES.md).", "",
                  defenses, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def comparison_tables(reports: Reports) -> str:
    """Tables 1-3, S8-S10 and the gradient norms with "A / B" cells, one column group per metric."""
    labels = " / ".join(reports)
    parts = [f"Cells are {labels}.", "", "### Table 1. Clean performance (served score vs MOS)", "",
             clean_table(reports), ""]
    for table_title, metric in ATTACK_TABLES:
        parts += [f"### {table_title}", "", attack_table(reports, metric), ""]
    parts += ["### Table S10. R robustness↑", "", r_table(reports), ""]
    parts += _ranking_section(reports, "###")
    parts += ["### Gradient norms", "", grad_norm_table(reports), ""]
    parts += _fd_check_section(reports, "####")
    return "\n".join(parts)


R_FLOOR_NOTE = (
    "R floors |Δscore| at 1e-4: an image the attack did not move adds up to log10(100 / 1e-4) = 6 to "
    "the mean, against about 1 for a moved one, so an R carried by images on the floor says little."
)


def _plcc_note(report: Mapping[str, Any]) -> list[str]:
    """Whether PLCC was taken after the 4-parameter logistic, and where that fit failed (raw Pearson)."""
    summary = report.get("plcc_logistic") or {}
    if not summary.get("fitted"):
        return []
    where = summary.get("where") or []
    failed = (f"**the fit failed for {len(where)} PLCC value(s), which are raw Pearson**: "
              + ", ".join(f"`{w}`" for w in where)) if where else "the fit converged everywhere"
    return [f"PLCC is taken after the 4-parameter logistic (Zhang et al. Eq. 5); {failed}.", ""]


FD_CHECK_NOTE = (
    "The finite difference (Eq. 6) is a first-order estimate of ‖∇ₓf‖₁: it reaches the exact norm as "
    "h → 0 only while f is linear along the step. A ratio well below 1 at the training step h means "
    "the model bends within that step, so the regulariser penalises the secant slope, not the gradient."
)


def _ranking_section(reports: Reports, level: str) -> list[str]:
    table = ranking_table(reports)
    if table is None:
        return []
    note = ("A set-level attack perturbs every image of the set toward target scores planned jointly to "
            "scramble the order of the set (an advertiser lifting its images above the others).")
    return [f"{level} Ranking under set-level attacks (SROCC before vs after)", "", note, "", table, ""]


def _fd_check_section(reports: Reports, level: str) -> list[str]:
    table = fd_check_table(reports)
    if table is None:
        return []
    return [f"{level} Finite difference vs exact norm, by step h", "", FD_CHECK_NOTE, "", table, ""]


def write_comparison(reports: Reports, out_dir: str | Path, title: str = "Comparison") -> Path:
    """comparison.md and overlaid plots (Fig. 4, 6, S8-S11) of several reports in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(reports, out, prefix="compare_")
    text = [f"# {title}", "", comparison_tables(reports), "## Plots", ""]
    text += [f"![{p}]({p})" for p in plots]
    path = out / "comparison.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
