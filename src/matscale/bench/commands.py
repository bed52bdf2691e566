"""The ``matscale bench`` verb: parses its arguments and calls :mod:`matscale.bench.run`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matscale.arguments import positive_int
from matscale.bench.run import SUITES
from matscale.helpformat import DefaultsHelp


def add_verbs(verbs: Any) -> None:
    """Register ``bench`` on the CLI's subparsers."""
    b = verbs.add_parser(
        "bench",
        help="score models, teachers and GFN2-xTB against published references",
        formatter_class=DefaultsHelp,
    )
    b.add_argument(
        "subjects",
        nargs="+",
        help="model files (model.pt), shipped models (matscale-foundation-v2; `matscale "
        "models` lists them), teachers (sevennet, chgnet) or gfn2-xtb, side by side",
    )
    b.add_argument(
        "--head",
        default=argparse.SUPPRESS,
        help="the head of every matscale model (default: a shipped model's default head, or "
        "a model's only one)",
    )
    b.add_argument(
        "--suite",
        nargs="+",
        choices=SUITES,
        default=list(SUITES),
        help="dcdft: equations of state of 71 elemental crystals against WIEN2k; "
        "s22: dimer interaction energies against CCSD(T); md: NVE drift of oxides and alloys",
    )
    b.add_argument(
        "--md-steps",
        type=positive_int,
        default=10_000,
        help="NVE steps of 1 fs per md system (the drift is fitted over them)",
    )
    b.add_argument(
        "--elements", nargs="+", default=argparse.SUPPRESS, help="dcdft elements (default: all)"
    )
    b.add_argument("--out", type=Path, default=Path("bench"), help="folder for JSON and plots")
    b.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    from matscale.bench.eos import check_elements
    from matscale.bench.run import bench, table
    from matscale.bench.subjects import subject

    head, elements = getattr(args, "head", None), getattr(args, "elements", None)
    if elements and "dcdft" in args.suite:
        check_elements(elements)  # before any model is loaded
    subjects = [subject(spec, head=head) for spec in args.subjects]
    results = bench(
        subjects,
        suites=tuple(args.suite),
        elements=elements,
        out=args.out,
        md_steps=args.md_steps,
    )
    print(table(results))
    for name, r in results.items():
        for suite, result in r.items():  # dcdft lists elements, s22 systems (dimers)
            if missing := result.get("not_covered", []):
                what = "elements" if suite == "dcdft" else "systems with elements"
                print(f"{name}, {suite}: not covered ({what} it never saw): {', '.join(missing)}")
    print(f"wrote {args.out / 'bench.json'}")
    return 0
