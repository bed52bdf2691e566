"""The scaling verbs of the CLI: ``matscale sweep plan|run|slurm``, ``fit``, ``plot``,
``report``. Each parses its arguments and calls the scaling package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from matscale.arguments import non_negative_int
from matscale.errors import ConfigError
from matscale.helpformat import DefaultsHelp


def add_verbs(verbs: Any) -> None:
    """Register the scaling verbs on the CLI's subparsers."""
    sweep = verbs.add_parser("sweep", help="plan and run a model × data size sweep")
    sverbs = sweep.add_subparsers(title="sweep verbs")
    for name, run, text in (
        ("plan", _plan, "list the runs of a sweep config and which are done"),
        ("run", _run, "train the runs not yet done, one after another (resumable)"),
        ("slurm", _slurm, "write a SLURM array script with one task per run"),
    ):
        p = sverbs.add_parser(name, help=text)
        p.add_argument("config", type=Path, help="sweep YAML (e.g. configs/sweeps/cpu.yaml)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. epochs=5")
        p.set_defaults(run=run)
        if name == "run":
            p.add_argument(
                "--index", type=int, nargs="+", default=None, help="only these runs (by #)"
            )
            p.add_argument("--progress", action="store_true", help="progress bar per run")
            p.add_argument(
                "--stop-on-error", action="store_true", help="stop at the first failed run"
            )
        if name == "slurm":
            p.add_argument("--out", type=Path, default=None, help="default: print it")
    for name, run, text in (
        ("fit", _fit, "fit power laws to a sweep's results and print them"),
        ("plot", _plot, "draw a sweep's scaling figures (PNG and SVG)"),
        ("report", _report, "fits, figures and a Markdown report of a sweep"),
    ):
        p = verbs.add_parser(name, help=text, formatter_class=DefaultsHelp)
        p.add_argument("sweep_dir", type=Path, help="the sweep's folder (holds results.jsonl)")
        p.add_argument(
            "--metric",
            nargs="+",
            default=None,
            help="metric keys (default: test/energy_mae_meV_per_atom "
            "test/forces_mae_meV_per_A, or with --which best their validation errors, "
            "without test/); a source's: test/emt-metals/forces_mae_meV_per_A",
        )
        p.add_argument(
            "--which",
            choices=["final", "best"],
            default="final",
            help="errors of the final weights or the best validation evaluation",
        )
        p.add_argument(
            "--bootstrap", type=non_negative_int, default=300, help="bootstrap refits (CIs)"
        )
        if name != "fit":
            p.add_argument("--out", type=Path, default=None, help="default: SWEEP_DIR/report")
        if name == "report":
            p.add_argument("--no-figures", action="store_true", help="tables only")
        p.set_defaults(run=run)


def _load(args: argparse.Namespace) -> Any:
    from matscale.scaling.sweep import load_sweep

    return load_sweep(args.config, list(args.overrides))


def _guard(fn: Any) -> Any:
    """Config and input mistakes end with one clear line, not a traceback."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except KeyError as exc:  # its str() is the repr of its message: print the message
            print(f"matscale: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        except (ConfigError, ValueError, FileNotFoundError) as exc:
            print(f"matscale: error: {exc}", file=sys.stderr)
            return 2

    return wrapped


@_guard
def _plan(args: argparse.Namespace) -> int:
    from matscale.scaling.results import RESULTS, read_rows, run_hash
    from matscale.scaling.sweep import describe_plan, plan

    sweep = _load(args)
    runs = plan(sweep)
    rows = read_rows(sweep.sweep_dir / RESULTS)
    done = {run_hash(row) for row in rows}
    print(describe_plan(runs, done, rows))
    print(f"{len(runs)} runs, {sum(r.config_hash in done for r in runs)} done; results: "
          f"{sweep.sweep_dir / RESULTS}")  # fmt: skip
    return 0


@_guard
def _run(args: argparse.Namespace) -> int:
    from matscale.parallel.distributed import launch_position
    from matscale.scaling.runner import run_sweep

    outcome = run_sweep(
        _load(args), only=args.index, progress=args.progress, keep_going=not args.stop_on_error
    )
    if launch_position().main:  # every process of a multi-process sweep got here
        print(", ".join(f"{len(v)} {k}" for k, v in outcome.items()))
        if outcome["failed"]:
            print("failed: " + ", ".join(outcome["failed"]), file=sys.stderr)
    return 1 if outcome["failed"] else 0


@_guard
def _slurm(args: argparse.Namespace) -> int:
    from matscale.scaling.runner import slurm_script

    text = slurm_script(_load(args), args.config, list(args.overrides))
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}; submit with: sbatch {args.out}")
    else:
        print(text, end="")
    return 0


def _rows(sweep_dir: Path) -> list[dict[str, Any]]:
    from matscale.scaling.results import RESULTS, read_results

    path = sweep_dir if sweep_dir.is_file() else sweep_dir / RESULTS
    rows = read_results(path)
    if not rows:
        raise ValueError(f"{path}: no finished runs")
    return rows


def _metrics(args: argparse.Namespace) -> tuple[str, ...]:
    """The metrics asked for, or the defaults of ``--which``: the test errors of the final
    weights, or for ``best`` (the evaluation of lowest validation error, which records only
    validation errors) the same errors on validation."""
    from matscale.scaling.report import DEFAULT_METRICS

    if args.metric:
        return tuple(args.metric)
    if args.which == "best":
        return tuple(m.removeprefix("test/") for m in DEFAULT_METRICS)
    return DEFAULT_METRICS


@_guard
def _fit(args: argparse.Namespace) -> int:
    from matscale.scaling.analysis import analyse
    from matscale.scaling.report import as_json

    rows = _rows(args.sweep_dir)
    for m in _metrics(args):
        a = analyse(rows, m, which=args.which, bootstrap=args.bootstrap)
        print(json.dumps(as_json(a), indent=1))
    return 0


@_guard
def _plot(args: argparse.Namespace) -> int:
    from matscale.scaling.analysis import analyse
    from matscale.scaling.plot import plot_all

    rows = _rows(args.sweep_dir)
    out = args.out or _folder(args.sweep_dir) / "report"
    for m in _metrics(args):
        for p in plot_all(analyse(rows, m, which=args.which, bootstrap=args.bootstrap), rows, out):
            print(f"wrote {p}")
    return 0


@_guard
def _report(args: argparse.Namespace) -> int:
    from matscale.scaling.report import write_report

    folder = _folder(args.sweep_dir)
    path = write_report(
        folder,
        args.out or folder / "report",
        metrics=_metrics(args),
        which=args.which,
        bootstrap=args.bootstrap,
        command=args.command_line,
        figures=not args.no_figures,
    )
    print(f"wrote {path}")
    return 0


def _folder(sweep_dir: Path) -> Path:
    return sweep_dir.parent if sweep_dir.is_file() else sweep_dir
