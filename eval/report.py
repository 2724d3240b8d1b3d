"""Evaluation outputs people read: the JSON report, ROC curves and the hardest pairs as PNG (matplotlib Agg), and the
CMC curve of 1:N identification (eval.identification)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.files import write_replacing

if TYPE_CHECKING:  # keeps this module free of the TensorFlow import that embedding needs
    from eval.sets import VerificationSet

HARDEST_COLUMNS = 5  # pairs per row of the hardest-pairs picture


def _jsonable(value: Any) -> Any:
    """numpy values -> Python ones; NaN/Inf -> None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_report(path: str | Path, report: dict[str, Any] | Sequence[dict[str, Any]]) -> Path:
    """Writes one report dict (or a list of them) as strict JSON, replacing the file atomically; returns the path."""
    return write_replacing(path, json.dumps(_jsonable(report), indent=1, allow_nan=False) + "\n")


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def _label(report: dict[str, Any]) -> str:
    step = "" if report.get("step") is None else f" [{report['step']}]"
    return f"{report['name']}{step} acc {report['accuracy_mean']:.4f} AUC {report['auc']:.4f}"


def plot_roc(path: str | Path, reports: Sequence[dict[str, Any]]) -> Path:
    """Mean ROC of each report: TPR against FPR, on a linear and on a logarithmic FPR axis."""
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    linear, logarithmic = figure.subplots(1, 2)
    for report in reports:
        fpr, tpr = np.asarray(report["roc"]["fpr"]), np.asarray(report["roc"]["tpr"])
        linear.plot(fpr, tpr, label=_label(report))
        positive = fpr > 0  # log axis: FPR 0 has no place on it
        logarithmic.plot(fpr[positive], tpr[positive], label=_label(report))
    linear.plot([0, 1], [1, 0], color="grey", linestyle=":", linewidth=1, label="EER line")
    logarithmic.set_xscale("log")
    for axes, title in ((linear, "ROC"), (logarithmic, "ROC, log FPR")):
        axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, ylim=(0, 1.01))
        axes.grid(True, alpha=0.3)
    linear.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def plot_cmc(path: str | Path, reports: Sequence[dict[str, Any]]) -> Path:
    """The CMC curve of each identification report (eval.identification.identification_report): the fraction of mated
    probes whose identity ranks within the first k, against k."""
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.subplots()
    for report in reports:
        cmc = report["cmc"]
        axes.plot(cmc["ranks"], cmc["identification_rate"], marker=".",
                  label=f"{report['name']} rank-1 {report['rank_1']:.4f} rank-5 {report['rank_5']:.4f}")
    axes.set(xlabel="rank", ylabel="identification rate", title="CMC", ylim=(0, 1.01))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def _pair_names(entry: dict[str, Any]) -> list[str]:
    """What identifies the two images of a listed pair: identity/file for a folder set, image indices for a .bin."""
    if "paths" in entry:
        return ["/".join(Path(path).parts[-2:]) for path in entry["paths"]]
    return [f"image {index}" for index in entry["images"]]


def _show_pair(axes: Any, vset: VerificationSet, entry: dict[str, Any]) -> None:
    k = entry["pair"]
    axes.set_axis_off()
    axes.imshow(np.hstack(vset.images[vset.pair_rows[k]]))
    verdict = "ERROR" if entry["error"] else "correct"
    first, second = _pair_names(entry)
    axes.set_title(f"pair {k}: d={entry['distance']:.3f} (cos {entry['cosine']:.3f})\n"
                   f"threshold {entry['threshold']:.2f}, {verdict}\n{first}\n{second}",
                   fontsize=7, color="red" if entry["error"] else "black")


def plot_hardest_pairs(path: str | Path, vset: VerificationSet, report: dict[str, Any]) -> Path:
    """Side-by-side images of every listed closest mismatched pair (false matches when below the threshold, red) and
    farthest matched pair (false non-matches when not below it), with file names (or image indices), distances and
    fold thresholds; HARDEST_COLUMNS pairs per row."""
    sections = [("closest mismatched pairs", report["hardest_false_matches"]),
                ("farthest matched pairs", report["hardest_false_non_matches"])]
    rows = [max(1, math.ceil(len(entries) / HARDEST_COLUMNS)) for _, entries in sections]
    height = 2.5 * sum(rows) + 0.9  # inches: a row per HARDEST_COLUMNS pairs, room for the 4-line titles and suptitle
    figure = Figure(figsize=(3.0 * HARDEST_COLUMNS + 0.4, height))
    grid = figure.add_gridspec(sum(rows), HARDEST_COLUMNS, left=0.04, right=0.99, top=1 - 0.9 / height, bottom=0.01,
                               hspace=0.7)
    first_row = 0
    for (title, entries), section_rows in zip(sections, rows):
        if not entries:
            axes = figure.add_subplot(grid[first_row, :])
            axes.set_axis_off()
            axes.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
        for index, entry in enumerate(entries):
            row, column = divmod(index, HARDEST_COLUMNS)
            _show_pair(figure.add_subplot(grid[first_row + row, column]), vset, entry)
        middle = 1 - (first_row + section_rows / 2) / sum(rows)
        figure.text(0.005, middle, title, rotation=90, va="center", fontsize=10)
        first_row += section_rows
    figure.suptitle(f"{_label(report)}: {report['false_matches']} false matches, {report['false_non_matches']} false "
                    "non-matches", fontsize=10, y=1 - 0.1 / height, va="top")
    return _save(figure, path)


def save_report_files(output_dir: str | Path, vset: VerificationSet, report: dict[str, Any]) -> dict[str, Path]:
    """Writes `<name>[_<step>]`.json, _roc.png and _hardest_pairs.png into output_dir; returns their paths."""
    stem = report["name"] if report.get("step") is None else f"{report['name']}_{report['step']}"
    stem = re.sub(r"[^\w.-]+", "_", stem)
    output_dir = Path(output_dir)
    return {
        "json": write_json_report(output_dir / f"{stem}.json", report),
        "roc": plot_roc(output_dir / f"{stem}_roc.png", [report]),
        "hardest_pairs": plot_hardest_pairs(output_dir / f"{stem}_hardest_pairs.png", vset, report),
    }
