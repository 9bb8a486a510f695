"""`lowlight-compile`: one command tree. Each subcommand lives in its own module with
`SUMMARY`, `add_arguments(parser)` and `run(args) -> int`; this file only dispatches
and turns every user mistake into a message with a fix and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from lowlight.core.errors import LowlightError

#: subcommand -> module (imported only when that subcommand runs: heavy imports stay deferred)
SUBCOMMANDS = {
    "profile": "lowlight.compile.cmd_profile",
    "zoo": "lowlight.compile.cmd_zoo",
    "targets": "lowlight.compile.cmd_targets",
    "build-engine": "lowlight.targets.tensorrt.cmd_build_engine",
    "compare": "lowlight.compile.cmd_compare",
    "distill": "lowlight.compile.cmd_distill",
}
#: subcommand -> "module:function(args)" run after it succeeded: composition that keeps
#: lower layers (the TensorRT package) from importing the compiler's reports.
AFTER = {
    "build-engine": "lowlight.compile.profile:refresh_after_engine",
}
#: shown without importing the modules (bare `lowlight-compile` must answer fast)
SUMMARIES = {
    "profile": "measure a bundle's latency and top operators on this host",
    "zoo": "reference models: list them, or reproduce their weights",
    "targets": "list deployment targets and what their TensorRT can do",
    "build-engine": "on the device: build the TensorRT engine of a bundle and verify it",
    "compare": "compare two bundles' latency and fidelity side by side (Markdown or JSON)",
    "distill": "distill a diffusion teacher into a K-step student (guided + progressive distillation)",
}


from lowlight.core.about import version  # noqa: E402  (re-exported: `lowlight-compile --version`)


def _top_help() -> str:
    width = max(map(len, SUMMARIES))
    rows = "\n".join(f"  {k:{width}s}  {v}" for k, v in SUMMARIES.items())
    return (
        "usage: lowlight-compile [CHECKPOINT|MODEL.onnx] [--model FAMILY] [--target T] [options]   (compile)\n"
        "       lowlight-compile SUBCOMMAND [options]\n\n"
        "Compile a low-light enhancement model into a verified deployment bundle.\n\n"
        f"subcommands:\n{rows}\n\n"
        "  lowlight-compile --model FAMILY --help   every compile option, that family's own flags included\n"
        "  lowlight-compile SUBCOMMAND --help       that subcommand's options\n"
        "  lowlight-compile --version\n"
    )


def _compile(argv: list[str]) -> int:
    from lowlight.compile import cmd_compile
    from lowlight.compile.cli_types import parser

    p = parser("lowlight-compile", cmd_compile.__doc__ or "")
    p.add_argument("--version", action="version", version=f"lowlight-compile {version()}")
    cmd_compile.add_arguments(p, cmd_compile.family_for(argv))
    return int(cmd_compile.run(p.parse_args(argv)))


def _subcommand(name: str, argv: list[str]) -> int:
    from lowlight.compile.cli_types import parser

    mod = importlib.import_module(SUBCOMMANDS[name])
    p = parser(f"lowlight-compile {name}", (mod.__doc__ or SUMMARIES[name]).strip().splitlines()[0])
    mod.add_arguments(p)
    args = p.parse_args(argv)
    rc = int(mod.run(args))
    if rc == 0 and name in AFTER and getattr(args, "bundle", None):
        module, _, fn = AFTER[name].partition(":")
        getattr(importlib.import_module(module), fn)(args.bundle)
    return rc


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lowlight-compile`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv in (["-h"], ["--help"]):
            print(_top_help())
            return 0
        if argv == ["--version"]:
            print(f"lowlight-compile {version()}")
            return 0
        if argv[0] in SUBCOMMANDS:
            return _subcommand(argv[0], argv[1:])
        return _compile(argv)
    except LowlightError as exc:
        print(f"\nerror: {exc.what}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the output path was left as it was (a bundle is renamed into place only once complete)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lowlight-compile targets --json | head`: the reader left; not an error of ours or theirs.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError:
        print("\nerror: out of memory", file=sys.stderr)
        print("  fix: use a smaller --shape (or batch), or a machine with more memory", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file system problem on a path the user gave (permissions, full disk, a folder that vanished).
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"\nerror: {exc.strerror or exc}{where}", file=sys.stderr)
        print("  fix: check that path exists, is the kind of file expected, and that you may read/write it", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
