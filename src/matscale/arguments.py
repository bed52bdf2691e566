"""Argument types shared by the CLI's verbs: a bad value is argparse's one-line usage error
naming the option, before any work."""

from __future__ import annotations

import argparse


def non_negative_int(text: str) -> int:
    """An integer ≥ 0 (counts: steps, refits)."""
    return _int_from(text, 0)


def positive_int(text: str) -> int:
    """An integer ≥ 1 (a count a measurement needs: the steps a drift is fitted over)."""
    return _int_from(text, 1)


def _int_from(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ {least}, got {value}")
    return value
