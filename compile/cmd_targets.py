"""`lowlight-compile targets`: the deployable devices and what their TensorRT can do."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the `targets` subcommand."""
    parser.add_argument("--trt-version", default=None, help="show capabilities at this TensorRT version instead of each stack's default")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def rows(trt_version: str | None = None) -> list[dict[str, object]]:
    """One row per target (aliases folded into their target)."""
    from lowlight.targets import get_target, names

    seen: dict[str, dict[str, object]] = {}
    for name in names():
        base = get_target(name)
        if base.name in seen:
            if name != base.name:
                aliases = seen[base.name].setdefault("aliases", [])
                assert isinstance(aliases, list)
                aliases.append(name)
            continue
        target = get_target(name, trt_version) if (trt_version and base.runtime == "tensorrt") else base
        row: dict[str, object] = {"name": target.name, "runtime": target.runtime,
                                  "default_precision": target.default_precision, "aliases": []}
        row.update(target.facts)
        seen[target.name] = row
    return list(seen.values())


def _yn(v: object) -> str:
    return "yes" if v is True else ("no" if v is False else ("-" if v is None else str(v)))


def _approx(row: dict[str, object], key: str) -> str:
    if key not in row:
        return "-"
    return ("~" if row.get("approximate_peaks") else "") + str(row[key])


def table(trt_version: str | None = None) -> str:
    """The targets table as fixed-width text."""
    cols = [
        ("target", lambda r: str(r["name"]) + (f" (= {', '.join(r['aliases'])})" if r.get("aliases") else "")),  # type: ignore[arg-type]
        ("arch", lambda r: r.get("arch", "-")),
        ("TRT", lambda r: r.get("trt_version", "-")),
        ("stack", lambda r: r.get("stack", r.get("backend", "-"))),
        ("FP16 TF", lambda r: _approx(r, "fp16_tflops")),
        ("INT8 TOPS", lambda r: _approx(r, "int8_tops")),
        ("DRAM GB/s", lambda r: r.get("dram_gbps", "-")),
        ("mem GB", lambda r: r.get("memory_gb", "-")),
        ("DLA", lambda r: r.get("dla_cores", "-")),
        ("default", lambda r: r["default_precision"]),
        ("ONNX DFT", lambda r: _yn(r.get("onnx_dft"))),
        ("plugins JIT/AOT", lambda r: "-" if "jit_plugins" not in r else f"{_yn(r['jit_plugins'])}/{_yn(r['aot_plugins'])}"),
        ("strongly typed", lambda r: _yn(r.get("strongly_typed_only"))),
        ("INT8 cache", lambda r: _yn(r.get("implicit_int8_cache"))),
        ("DLA usable", lambda r: _yn(r.get("dla"))),
        ("IMoELayer", lambda r: _yn(r.get("imoe_layer"))),
    ]
    data = [[str(fn(r)) for _, fn in cols] for r in rows(trt_version)]
    widths = [max(len(h), *(len(d[i]) for d in data)) for i, (h, _) in enumerate(cols)]
    out = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(d, widths)) for d in data]
    out.append("")
    out.append("Peaks are dense (no sparsity); '~' devices (Orin NX/Nano, Thor) have derived figures. "
               "--trt-version overrides a target's TensorRT, e.g. `--target jetson-orin --trt-version 11.4` for JetPack 7.2.2+.")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON)."""
    trt_version = getattr(args, "trt_version", None)
    if getattr(args, "json", False):
        print(json.dumps(rows(trt_version), indent=2, default=str))
    else:
        print(table(trt_version))
    return 0
