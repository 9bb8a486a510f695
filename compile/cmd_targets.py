"""`lowlight-compile targets`: the deployable devices and what their TensorRT can do."""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the `targets` subcommand."""
    parser.add_argument("--trt-version", default=None, help="show capabilities at this TensorRT version instead of each stack's default")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def rows(trt_version: str | None = None) -> list[dict[str, object]]:
    """One row per target (aliases folded into their target)."""
    from lowlight.targets import get_target, listed, names

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
    # Registration order (Jetsons, then desktop/datacenter GPUs, as in the device
    # table), with cpu, the everywhere default, last.
    order = [t.name for t, _ in listed() if t.name != "cpu"] + ["cpu"]
    return sorted(seen.values(), key=lambda r: order.index(str(r["name"])) if r["name"] in order else len(order))


def _yn(v: object) -> str:
    return "yes" if v is True else ("no" if v is False else ("-" if v is None else str(v)))


def _approx(row: dict[str, object], key: str) -> str:
    if key not in row:
        return "-"
    return ("~" if row.get("approximate_peaks") else "") + str(row[key])


def _render(cols: list[tuple[str, Any]], data_rows: list[dict[str, object]]) -> list[str]:
    data = [[str(fn(r)) for _, fn in cols] for r in data_rows]
    widths = [max(len(h), *(len(d[i]) for d in data)) for i, (h, _) in enumerate(cols)]
    out = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(d, widths)).rstrip() for d in data]
    return out


def table(trt_version: str | None = None) -> str:
    """Two fixed-width tables: the hardware, then what each target's TensorRT can do."""
    data = rows(trt_version)
    name = ("target", lambda r: str(r["name"]) + (f" (= {', '.join(r['aliases'])})" if r.get("aliases") else ""))
    hardware = [
        name,
        ("arch", lambda r: r.get("arch", "-")),
        ("FP16 TFLOPS", lambda r: _approx(r, "fp16_tflops")),
        ("INT8 TOPS", lambda r: _approx(r, "int8_tops")),
        ("DRAM GB/s", lambda r: r.get("dram_gbps", "-")),
        ("memory GB", lambda r: r.get("memory_gb", "-")),
        ("DLA cores", lambda r: r.get("dla_cores", "-")),
        ("default precision", lambda r: r["default_precision"]),
    ]
    software = [
        name,
        ("stack", lambda r: r.get("stack", r.get("backend", "-"))),
        ("TensorRT", lambda r: r.get("trt_version", "-")),
        ("ONNX DFT", lambda r: _yn(r.get("onnx_dft"))),
        ("plugins JIT/AOT", lambda r: "-" if "jit_plugins" not in r else f"{_yn(r['jit_plugins'])}/{_yn(r['aot_plugins'])}"),
        ("strongly typed only", lambda r: _yn(r.get("strongly_typed_only"))),
        ("INT8 calib cache", lambda r: _yn(r.get("implicit_int8_cache"))),
        ("DLA usable", lambda r: _yn(r.get("dla"))),
        ("IMoELayer", lambda r: _yn(r.get("imoe_layer"))),
    ]
    out = ["Hardware (dense peaks, no sparsity; ~ = derived, not on a spec sheet)", ""]
    out += _render(hardware, data)
    out += ["", "Software stack and TensorRT capabilities" + (f" at TensorRT {trt_version}" if trt_version else ""), ""]
    out += _render(software, data)
    out += ["", "--trt-version overrides a target's TensorRT, e.g. `--target jetson-orin --trt-version 11.4` for JetPack 7.2.2+."]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON)."""
    trt_version = getattr(args, "trt_version", None)
    if getattr(args, "json", False):
        print(json.dumps(rows(trt_version), indent=2, default=str))
    else:
        print(table(trt_version))
    return 0
