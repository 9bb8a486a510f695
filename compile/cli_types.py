"""argparse building blocks shared by every `lowlight-compile` subcommand: checked value types, help formatting."""
from __future__ import annotations

import argparse
import math


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default; keeps descriptions' line breaks."""


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage line names the (sub)command."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of frames or runs)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not a count: give 1 or more")
    return v


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan/inf)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return v


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a budget in dB)."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v:g} is negative: a budget in dB is 0 or more")
    return v


def shape_text(text: str) -> str:
    """argparse type: a non-empty BxTxCxHxW-style shape of positive integers."""
    dims = text.strip().lower().split("x")
    if not text.strip() or not all(d.strip().isdigit() and int(d) > 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1x8x3x256x256 (positive integers joined by x)")
    return "x".join(str(int(d)) for d in dims)
