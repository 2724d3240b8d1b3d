"""Runs every bench script (bench/bench_*.py), then collects their JSON results into one table.

    .venv/bin/python bench/run_all.py                       # everything at full size (about 40 minutes on 2 cores)
    .venv/bin/python bench/run_all.py --quick=true          # every script at tiny sizes: checks that they all work
    .venv/bin/python bench/run_all.py --scripts=model,eval  # some of them
    .venv/bin/python bench/run_all.py --collect_only=true   # only the table, from the JSON files already there
    make bench                                              # the same as the first line

Each script runs in its own process (with this Python) and writes bench/results/<name>.json; quick runs write under
bench/results/quick/. The table (benchmark, figure, value, target) goes to the log and to summary.md beside the JSON
files, with the device and load average each file recorded. A script that fails is reported and the others still
run; the exit status is 1 when any failed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Callable

from config import Choices, Config, run_script as run_entry_point

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("run_all")
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
QUICK = RESULTS / "quick"


class Args(Config):
    # names of bench/bench_<name>.py to run; [] = all of them, in alphabetical order
    scripts: Annotated[list[str], Choices(names=script_names)] = []
    quick: bool = False  # tiny sizes (QUICK_ARGS), results under bench/results/quick/
    collect_only: bool = False  # run nothing; build the table from the JSON files already written


# Command-line arguments that make each script tiny; a script not listed here runs with --quick=true.
QUICK_ARGS: dict[str, list[str]] = {
    "input_pipeline": ["--num_identities=10", "--images_per_identity=20", "--bin_pairs=200", "--batch_size=32",
                       f"--work_dir={QUICK / 'input_pipeline_data'}", f"--output_json={QUICK / 'input_pipeline.json'}"],
    "eval": ["--num_pairs=600", "--repeats=2", f"--output_json={QUICK / 'eval.json'}"],
    "align": ["--worker_counts=[1]", f"--output_json={QUICK / 'align.json'}"],
    "export": ["--backbone=mobilefacenet", "--batch_size=2", "--repeats=1", "--bn_calibration_passes=1",
               "--formats=saved_model,onnx", f"--output_json={QUICK / 'export.json'}"],
}


def script_names() -> list[str]:
    return sorted(path.stem.removeprefix("bench_") for path in BENCH.glob("bench_*.py"))


def run_script(name: str, quick: bool) -> tuple[int, float]:
    """Runs bench/bench_<name>.py in its own process; (exit status, seconds)."""
    extra = QUICK_ARGS.get(name, ["--quick=true"]) if quick else []
    command = [sys.executable, str(BENCH / f"bench_{name}.py"), *extra]
    log.info("running %s", " ".join(command))
    start = time.perf_counter()
    status = subprocess.run(command, cwd=REPO).returncode
    return status, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------------------
# One summariser per results file: JSON -> rows (figure, value, target) and a line of conditions


def _target(value: float, minimum: float | None = None, maximum: float | None = None, unit: str = "") -> str:
    if minimum is not None:
        return f">= {minimum:g}{unit}: {'met' if value >= minimum else 'MISSED'}"
    return f"<= {maximum:g}{unit}: {'met' if value <= maximum else 'MISSED'}"


def _load(report: dict, before: str, after: str) -> str:
    if before not in report:
        return ""
    first, last = report[before], report[after]
    first = first["load_average"] if isinstance(first, dict) else first
    last = last["load_average"] if isinstance(last, dict) else last
    return f"load average {first[0]:.2f} before / {last[0]:.2f} after"


def summarise_model(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = []
    for dtype, measurements in report["peaks"].items():
        values = " / ".join(f"{m['gflops']:.0f}" for m in measurements)
        rows.append((f"matmul peak {dtype}", f"{values} GFLOP/s measured, {report['peak_gflops_used'][dtype]:.0f} "
                     "used", ""))
    net = report["network"]
    rows.append((f"{net['backbone']} cost", f"{net['inference_gflop']:.2f} GFLOP forward, "
                 f"{net['training_gflop']:.2f} GFLOP per training image", ""))
    for r in report["results"]:
        xla = " XLA" if r["xla"] else ""
        value = (f"{r['images_per_second']:.1f} img/s = {r['fraction_of_limit']:.2f} of the limit "
                 f"{r['limit_images_per_second']:.1f} (per CPU-second: {r['cpu_fraction_of_limit']:.2f})")
        key = {"mode": r["mode"], "precision": r["precision"], "batch": r["batch"], "xla": r["xla"]}
        target = next((_target(t["value"], t["minimum"]) for t in report["targets"] if t["row"] == key), "")
        rows.append((f"{r['mode']} {r['precision']}{xla} batch {r['batch']}", value, target))
    for t in report["targets"]:
        if t["row"] is None:
            rows.append((t["target"], f"{t['value']:.2f}x", _target(t["value"], t["minimum"], unit="x")))
    conditions = f"{report['backend']} on {report['device']}, {_load(report, 'conditions_before', 'conditions_after')}"
    return rows, conditions


def summarise_memory(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = []
    if report["backbone"]:
        part1 = report["backbone"]
        batches = ", ".join(str(p["batch"]) for p in part1["probes"])
        rows.append((f"{part1['backbone']} training memory ({part1['precision']})",
                     f"{part1['bytes_per_image'] / 2**20:.0f} MiB per image + {part1['intercept_bytes'] / 2**30:.2f}"
                     f" GiB (batches {batches})", ""))
    seed = report["seed_test"]
    for v in seed["variants"]:
        failing = v["smallest_failing"] or "?"
        rows.append((f"seed's max batch, {v['variant']}, within {seed['cap_bytes'] / 2**30:g} GiB",
                     f"{v['largest_fitting']} fits, {failing} does not", f"seed (Titan Xp 12 GB): "
                     f"{v['seed_titan_xp'][0]}-{v['seed_titan_xp'][1]}"))
    return rows, f"{report['backend']} on {report['device']}, {_load(report, 'conditions_before', 'conditions_after')}"


def summarise_input_pipeline(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = []
    for fmt in ("folder", "recordio", "tfrecord"):
        r = report["results"][fmt]
        rows.append((f"input pipeline {fmt} (batch {report['batch_size']})",
                     f"{r['images_per_second']:.0f} img/s ({r['images_per_cpu_second']:.0f} per CPU-second)",
                     _target(r["images_per_second"], 2000)))
    b = report["results"]["bin"]
    rows.append(("load_bin", f"{b['seconds']:.2f} s for {b['images']} images", ""))
    return rows, f"{report['cpu_count']} CPUs, {_load(report, 'load_average_before', 'load_average_after')}"


def summarise_eval(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    seconds = report["verify_seconds_median"]
    # The target is for LFW's 6,000 pairs; a smaller (quick) run is not judged.
    target = _target(seconds, maximum=1.0, unit=" s") if report["num_pairs"] >= 6000 else ""
    return [(f"verification protocol, {report['num_pairs']} pairs",
             f"{seconds:.3f} s ({report['speedup']:.0f}x the seed's loop)", target)], report.get("machine", "")


def summarise_align(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = [(f"alignment, {t['num_workers']} worker(s)", f"{t['images_per_s']:.1f} img/s "
             f"(steady {t['steady_images_per_s']:.1f})", "") for t in report["throughput"]]
    return rows, f"{report['cpu_cores']} cores, {report['total_images']} images of {report['input_dir']}"


def summarise_export(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = [(f"export {report['args']['backbone']} {r['format']}", f"{r['images_per_second']:.1f} img/s, "
             f"{r['bytes'] / 2**20:.1f} MiB, max rel. diff {r['max_relative_difference']:.1e}", "")
            for r in report["results"]]
    return rows, report.get("machine", "")


def summarise_peer(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = [(f"{r['mode']} {r['precision']} batch {r['batch']}, ours / PyTorch",
             f"{r['images_per_second']:.1f} / {r['torch_images_per_second']:.1f} img/s = {r['ratio']:.2f}x", "")
            for r in report["results"] if r["ratio"] is not None]
    conditions = (f"TensorFlow {report['tensorflow']}, PyTorch {report['torch']} on {report['device']}, "
                  f"{_load(report, 'conditions_before', 'conditions_after')}")
    return rows, conditions


def summarise_partial_fc(report: dict) -> tuple[list[tuple[str, str, str]], str]:
    rows = []
    for r in report["results"]:
        head = "full head" if r["sample_rate"] is None else f"partial_fc {r['sample_rate']:g} x{r['replicas']}"
        figure = f"head step, {r['num_classes']} classes, {head}"
        if "median_ms" not in r:
            rows.append((figure, "skipped" if r.get("skipped") else "died", ""))
            continue
        ratio = "" if r["ratio_to_full"] is None else f" = {r['ratio_to_full']:.2f}x the full head"
        rows.append((figure, f"{r['median_ms']:.0f} ms{ratio}, "
                     f"{r['analytic_bytes_per_replica'] / 2**20:.0f} MiB per replica", ""))
    return rows, f"{report['device']}, {_load(report, 'conditions_before', 'conditions_after')}"


SUMMARISERS: dict[str, Callable[[dict], tuple[list[tuple[str, str, str]], str]]] = {
    "model": summarise_model, "memory": summarise_memory, "input_pipeline": summarise_input_pipeline,
    "eval": summarise_eval, "align": summarise_align, "export": summarise_export, "peer": summarise_peer,
    "partial_fc": summarise_partial_fc,
}


def collect(folder: Path) -> str:
    """A markdown table of every results file in `folder` (files no summariser knows are listed by name)."""
    lines = ["| benchmark | figure | value | target |", "|---|---|---|---|"]
    notes = []
    for path in sorted(folder.glob("*.json")):
        kind = next((name for name in SUMMARISERS if path.stem == name or path.stem.startswith(f"{name}_")), None)
        if kind is None:
            notes.append(f"- {path.name}: no summariser")
            continue
        try:
            rows, conditions = SUMMARISERS[kind](json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as error:  # a file of an older or newer format than known here
            notes.append(f"- {path.name}: not summarised ({type(error).__name__}: {error})")
            continue
        lines += [f"| {path.stem} | {figure} | {value} | {target} |" for figure, value, target in rows]
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        notes.append(f"- {path.name}: {conditions} (written {written})")
    return "\n".join(lines + ["", *notes]) + "\n"


def main(args: Args) -> int:
    folder = QUICK if args.quick else RESULTS
    names = args.scripts or script_names()
    unknown = sorted(set(names) - set(script_names()))
    if unknown:
        raise ValueError(f"Args: scripts {unknown} not found; bench/ has {', '.join(script_names())}")
    failed = []
    if not args.collect_only:
        for name in names:
            status, seconds = run_script(name, args.quick)
            log.info("bench_%s: exit status %d after %.0f s", name, status, seconds)
            if status:
                failed.append(name)
    table = collect(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.md").write_text(table)
    log.info("results in %s:\n%s", folder, table)
    if failed:
        log.error("failed: %s", ", ".join(f"bench_{name}.py" for name in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    run_entry_point(Args, main)
