"""The ``matscale models`` verb: the shipped models, or one model's card."""

from __future__ import annotations

import argparse
from typing import Any


def add_verbs(verbs: Any) -> None:
    """Register ``models`` on the CLI's subparsers."""
    m = verbs.add_parser(
        "models",
        help="list the models shipped inside the package, or print one's model card",
        description="Without a name: every shipped model with its size, heads and default head "
        "(usable offline wherever a model file is taken). With a name: its model card.",
    )
    m.add_argument("name", nargs="?", default=None, help="a shipped model's name")
    m.set_defaults(run=_models)


def _models(args: argparse.Namespace) -> int:
    from matscale import pretrained

    if args.name is not None:
        print(pretrained.card(args.name), end="")
        return 0
    names = pretrained.available()
    if not names:
        print("no models are shipped with this installation")
        return 0
    rows = {name: pretrained.describe(name) for name in names}
    wide = max(len("default head"), *(len(r["default_head"]) for r in rows.values()))
    print(f"{'name':<28}{'MiB':>6}{'parameters':>12}  {'default head':<{wide}}  heads")
    for name, info in rows.items():
        print(f"{name:<28}{info['mib']:>6.1f}{info['parameters']:>12,}  "
              f"{info['default_head']:<{wide}}  {', '.join(info['heads'])}")  # fmt: skip
    return 0
