"""The ``matscale plan`` verb: memory per device and time per step of a run on given hardware
(:mod:`matscale.parallel.planner`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from matscale.errors import ConfigError
from matscale.helpformat import DefaultsHelp


def add_verbs(verbs: Any) -> None:
    """Register ``plan`` on the CLI's subparsers."""
    from matscale.parallel.planner import HARDWARE

    p = verbs.add_parser(
        "plan",
        help="memory per device and time per step of a training run on given hardware",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("config", nargs="?", type=Path, default=None, help="YAML run config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument(
        "--hardware",
        choices=sorted(HARDWARE),
        default="cpu-2core",
        help="the device of each process (cpu-2core: this machine's kind, 24 GiB shared)",
    )
    p.add_argument("--devices", type=int, default=1, help="devices (processes) in the run")
    p.add_argument(
        "--edges-per-atom",
        type=float,
        default=None,
        help="directed edges per atom (default: the store's, else 40)",
    )
    p.add_argument(
        "--utilisation", type=float, default=0.1, help="share of the matmul peak reached"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=_plan)


def _plan(args: argparse.Namespace) -> int:
    from matscale.config import load
    from matscale.parallel.planner import (
        HARDWARE,
        edges_per_atom_of,
        fits,
        format_plan,
        model_costs,
        plan,
    )

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in str(config):  # only overrides were given
        overrides.insert(0, str(config))
        config = None
    cfg = load(config, overrides)
    if args.devices < 1:
        raise ConfigError(f"--devices must be at least 1, got {args.devices}")
    if not 0 < args.utilisation <= 1:
        raise ConfigError(f"--utilisation must lie in (0, 1], got {args.utilisation}")
    if args.edges_per_atom is not None and not 0 < args.edges_per_atom < math.inf:
        raise ConfigError(f"--edges-per-atom must be a positive number, got {args.edges_per_atom}")
    if args.devices > 1 and cfg.parallel.backend == "none":
        raise ConfigError(
            f"--devices {args.devices} with parallel.backend=none: one process trains alone; "
            "set parallel.backend=ddp, fsdp or deepspeed"
        )
    ratio = args.edges_per_atom or edges_per_atom_of(cfg.data.store, cfg.model.cutoff)
    note = "" if args.edges_per_atom or ratio else " (no store: assumed)"
    ratio = ratio or 40.0
    model = cfg.model if cfg.model.heads else _with_heads(cfg)
    costs = model_costs(model, checkpointing=cfg.parallel.activation_checkpointing)
    hardware = HARDWARE[args.hardware]
    result = plan(
        cfg, hardware, args.devices, costs, edges_per_atom=ratio, utilisation=args.utilisation
    )
    if note:
        result.assumptions.append(f"edges per atom {ratio:g}{note}")
    if args.json:
        print(
            json.dumps(
                {
                    "hardware": hardware.name,
                    "parameters": costs.parameters,
                    **result.as_dict(),
                    "fits": fits(result, hardware),
                },
                indent=1,
            )
        )
    else:
        print(f"{costs.parameters:,} parameters")
        print(format_plan(result, hardware))
    return 0


def _with_heads(cfg: Any) -> Any:
    """The model config with the store's sources as heads (one head if there is no store)."""
    from dataclasses import replace

    from matscale.data.store import Store
    from matscale.errors import DataError

    try:
        heads = tuple(Store(cfg.data.store).sources)
    except (DataError, OSError):
        heads = ("default",)
    return replace(cfg.model, heads=heads)
