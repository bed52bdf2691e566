"""The CLI's help formatter: argparse's, with each option's default where it says something."""

from __future__ import annotations

import argparse


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` lines end in "(default: ...)", except where the default is None, False or
    empty: "(default: None)" after an option whose help already says what leaving it out does
    (the model's default head, the ensemble's friction) only contradicts that, and "(default:
    [])" after a repeatable option says nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)
