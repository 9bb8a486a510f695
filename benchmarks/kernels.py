"""Benchmark the lowlight Triton kernels against PyTorch eager and torch.compile.

GPU (the real run):
    python benchmarks/kernels.py --out benchmarks/results/kernels_<gpu>_<date>.json
CPU smoke test (tiny sizes, Triton interpreter; proves the script runs, numbers mean nothing):
    python benchmarks/kernels.py --cpu-smoke

Per case it times our kernel, the PyTorch reference in eager mode and under
torch.compile (and, for the MoE, the usual per-expert Python loop and, on CUDA,
the single-kernel MoE of the TensorRT plugin), checks our output against the
reference, and reports achieved DRAM GB/s for the memory-bound gates (against
the device's peak, when known) and TFLOP/s for the MoE (useful sparse FLOPs).
Results go to stdout as a Markdown table and, with --out, to JSON with device,
date, versions and the command line.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

# --cpu-smoke must switch Triton to its interpreter before triton is imported.
if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from lowlight.kernels import reference as ref  # noqa: E402

#: Peak DRAM bandwidth (GB/s) by device-name fragment: docs/targets.md's table plus H100 PCIe / H200 / GH200.
PEAK_DRAM_GBS = {
    "H200": 4800.0, "GH200": 4000.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0, "A100 80GB": 2039.0, "A100": 1555.0,
    "RTX 4090": 1008.0, "RTX 3090": 936.0, "Orin": 204.8,
}
#: Dense FP16 tensor-core peak (TFLOP/s), same sources.
PEAK_FP16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "RTX 4090": 165.0,
                    "RTX 3090": 71.0, "Orin": 42.5}


def _lookup(table: dict[str, float], name: str) -> float | None:
    for frag, v in table.items():  # ordered most specific first
        if frag in name:
            return v
    return None


@dataclass
class Case:
    kernel: str
    shape: str
    dtype: str
    ms: dict[str, float | None] = field(default_factory=dict)  # impl -> milliseconds
    max_rel_err: float | None = None
    bytes_moved: int | None = None
    flops: int | None = None
    gbs: float | None = None
    pct_peak_dram: float | None = None
    tflops: float | None = None
    speedup: dict[str, float | None] = field(default_factory=dict)  # ours vs impl
    notes: str = ""


#: Time CUDA calls inside a CUDA graph (--cudagraph): launches replay without the Python launch path, so small
#: kernels are timed on the GPU instead of at the host's launch rate (~80 us a call measured on an H100 host).
CUDAGRAPH = False


def bench(fn: Callable[[], Any], cuda: bool, reps: int) -> float:
    """Median milliseconds per call."""
    if cuda:
        import triton.testing

        if CUDAGRAPH:
            fn()  # autotune and compile outside the capture
            return float(triton.testing.do_bench_cudagraph(fn, rep=reps * 10, return_mode="median"))
        return float(triton.testing.do_bench(fn, warmup=25, rep=reps * 10, return_mode="median"))
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return sorted(ts)[len(ts) // 2]


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Every case recompiles the same reference function for its shape; past dynamo's default limit (8) it would
    # silently fall back to eager and the "torch.compile" column would time eager.
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    return torch.compile(fn, dynamic=False)


def _try(label: str, fn: Callable[[], Any], cuda: bool, reps: int, notes: list[str]) -> float | None:
    try:
        return bench(fn, cuda, reps)
    except Exception as e:  # a baseline that cannot run is reported, not fatal
        notes.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None


def _rel_err(out: Any, want: Any) -> float:
    outs = out if isinstance(out, tuple) else (out,)
    wants = want if isinstance(want, tuple) else (want,)
    return max((o.float() - w.float()).abs().max().item() / max(1.0, w.float().abs().max().item())
               for o, w in zip(outs, wants))


def _finish(c: Case, device_name: str) -> Case:
    ours = c.ms.get("triton")
    if ours:
        for k, v in c.ms.items():
            if k != "triton" and v:
                c.speedup[k] = round(v / ours, 2)
        if c.bytes_moved:
            c.gbs = round(c.bytes_moved / (ours * 1e-3) / 1e9, 1)
            peak = _lookup(PEAK_DRAM_GBS, device_name)
            c.pct_peak_dram = round(100 * c.gbs / peak, 1) if peak else None
        if c.flops:
            c.tflops = round(c.flops / (ours * 1e-3) / 1e12, 2)
    return c


# ------------------------------------------------------------------- cases
def spectral_case(B: int, C: int, H: int, W: int, dtype: torch.dtype, dev: str, reps: int, name: str) -> Case:
    from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton

    cuda = dev == "cuda"
    Wf = W // 2 + 1
    g = torch.Generator(device="cpu").manual_seed(0)
    # re/im as AMNet has them: .real/.imag views of one rfft2 output (interleaved).
    spec = torch.complex(torch.randn(B, C, H, Wf, generator=g), torch.randn(B, C, H, Wf, generator=g))
    if dtype == torch.float32:
        spec = spec.to(dev)
        re, im = spec.real, spec.imag  # strided views, no copy
    else:  # 16-bit: separate planes (what an fp16 engine holds)
        re, im = spec.real.to(dev, dtype).contiguous(), spec.imag.to(dev, dtype).contiguous()
    w = [t.to(dev, dtype) for t in (torch.randn(2 * C, 2 * C, generator=g) / (2 * C) ** 0.5, torch.randn(2 * C, generator=g),
                                    torch.randn(2 * C, 2 * C, generator=g) / (2 * C) ** 0.5, torch.randn(2 * C, generator=g))]
    c = Case("spectral_gate", f"{name}: B={B} C={C} {H}x{Wf} (from {H}x{W})", str(dtype).split(".")[-1])
    esize = re.element_size()
    c.bytes_moved = 4 * B * C * H * Wf * esize + 2 * (4 * C * C + 2 * C) * esize  # re, im in; 2 out; weights
    c.flops = B * H * Wf * (2 * 2 * (2 * C) ** 2)  # two [2C x 2C] mixes per pixel
    notes: list[str] = []
    ours = lambda: spectral_gate_triton(re, im, *w)  # noqa: E731
    eager = lambda: ref.spectral_gate_ref(re, im, *w)  # noqa: E731
    comp_fn = _compiled(ref.spectral_gate_ref)
    comp = lambda: comp_fn(re, im, *w)  # noqa: E731
    c.max_rel_err = _rel_err(ours(), ref.spectral_gate_ref(*(t.float() for t in (re, im, *w))))
    c.ms = {"triton": _try("triton", ours, cuda, reps, notes), "eager": _try("eager", eager, cuda, reps, notes),
            "torch.compile": _try("torch.compile", comp, cuda, reps, notes)}
    c.notes = "; ".join(notes)
    return c


def illumination_case(B: int, C: int, H: int, W: int, k: int, dtype: torch.dtype, dev: str, reps: int,
                      name: str) -> Case:
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    cuda = dev == "cuda"
    g = torch.Generator(device="cpu").manual_seed(1)
    z = torch.randn(B, C, H, W, generator=g).to(dev, dtype)
    w = (torch.randn(C, C, generator=g) / C ** 0.5).to(dev, dtype)
    b = torch.randn(C, generator=g).to(dev, dtype)
    c = Case("illumination_gate", f"{name}: B={B} C={C} {H}x{W} k={k}", str(dtype).split(".")[-1])
    c.bytes_moved = 3 * B * C * H * W * z.element_size()  # z in; high, low out
    c.flops = B * H * W * 2 * C * C
    notes: list[str] = []
    ours = lambda: illumination_gate_triton(z, w, b, k)  # noqa: E731
    eager = lambda: ref.illumination_gate_ref(z, w, b, k)  # noqa: E731
    comp_fn = _compiled(ref.illumination_gate_ref)
    comp = lambda: comp_fn(z, w, b, k)  # noqa: E731
    c.max_rel_err = _rel_err(ours(), ref.illumination_gate_ref(z.float(), w.float(), b.float(), k))
    c.ms = {"triton": _try("triton", ours, cuda, reps, notes), "eager": _try("eager", eager, cuda, reps, notes),
            "torch.compile": _try("torch.compile", comp, cuda, reps, notes)}
    c.notes = "; ".join(notes)
    return c


def moe_ref_routed_as_input(x: torch.Tensor, wr: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                            w2: torch.Tensor) -> torch.Tensor:
    """The MoE in fp32, routed on `x @ wr` in the inputs' dtype, as the kernels and torch's matmul round it.

    Routing on fp32 logits instead would flip a token's experts wherever its 2nd and 3rd logits are closer than
    the 16-bit rounding (8 of 16384 tokens at N=16384, E=8 in fp16: a 0.4 "error" that is a tie, not a bug).
    """
    idx, wts = ref.top2_route_ref(x @ wr)
    xf = x.float()
    gate = torch.zeros(x.shape[0], w1.shape[0], device=x.device).scatter(1, idx, wts)
    y = torch.zeros_like(xf)
    for e in range(w1.shape[0]):
        y += gate[:, e:e + 1] * ((torch.nn.functional.silu(xf @ w1[e].float()) * (xf @ w3[e].float())) @ w2[e].float())
    return y


def moe_case(N: int, D: int, F: int, E: int, dtype: torch.dtype, dev: str, reps: int) -> Case:
    from lowlight.kernels.moe_kernel import moe_top2_triton

    cuda = dev == "cuda"
    g = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(N, D, generator=g).to(dev, dtype)
    wr = torch.randn(D, E, generator=g).to(dev, dtype)
    w1 = (torch.randn(E, D, F, generator=g) / D ** 0.5).to(dev, dtype)
    w3 = (torch.randn(E, D, F, generator=g) / D ** 0.5).to(dev, dtype)
    w2 = (torch.randn(E, F, D, generator=g) / F ** 0.5).to(dev, dtype)
    args = (x, wr, w1, w3, w2)
    c = Case("moe_top2", f"N={N} D={D} F={F} E={E}", str(dtype).split(".")[-1])
    c.flops = N * 2 * 6 * D * F + 2 * N * D * E  # two experts per token (gate, up, down) + router
    notes: list[str] = []
    ours = lambda: moe_top2_triton(*args)  # noqa: E731
    loop = lambda: ref.moe_top2_loop(*args)  # noqa: E731
    dense = lambda: ref.moe_top2_ref(*args)  # noqa: E731
    comp_loop_fn = _compiled(ref.moe_top2_loop)
    comp_dense_fn = _compiled(ref.moe_top2_ref)
    want = moe_ref_routed_as_input(*args)
    c.max_rel_err = _rel_err(ours(), want)
    c.ms = {"triton": _try("triton", ours, cuda, reps, notes),
            "per-expert loop": _try("loop", loop, cuda, reps, notes),
            "dense eager": _try("dense", dense, cuda, reps, notes),
            "torch.compile(loop)": _try("compile(loop)", lambda: comp_loop_fn(*args), cuda, reps, notes),
            "torch.compile(dense)": _try("compile(dense)", lambda: comp_dense_fn(*args), cuda, reps, notes)}
    if cuda:  # the single-kernel MoE of the TensorRT plugin (one launch; a tile runs every expert it picked)
        from lowlight.kernels.moe_fused_kernel import moe_top2_fused

        fused = lambda: moe_top2_fused(*args)  # noqa: E731
        notes.append(f"fused max rel err {_rel_err(fused(), want):.2e}")
        c.ms["fused (TensorRT plugin)"] = _try("fused", fused, cuda, reps, notes)
    c.notes = "; ".join(notes)
    return c


# -------------------------------------------------------------------- sizes
def gpu_cases(dtypes: list[torch.dtype]) -> list[tuple[Callable[..., Case], tuple[Any, ...]]]:
    """The sizes the models use: AMNet at 360x640 frames, MMAIF-style MoE."""
    out: list[tuple[Callable[..., Case], tuple[Any, ...]]] = []
    for dtype in dtypes:  # the MoE first: its comparison with the per-expert loop is what the plugin exists for
        for N in (4096, 16384):
            for E in (4, 8):
                out.append((moe_case, (N, 512, 1024, E, dtype)))
    for dtype in dtypes:
        # AMNet base as built (models/amnet.py): S2DG on the 1/4-res features, C=64, pool_k=5,
        # for a clip of 8 frames; plus the grid C=16/32/48 at 1/1, 1/2, 1/4 resolution.
        out.append((spectral_case, (8, 64, 90, 160, dtype, "amnet-base 1/4 res, 8 frames")))
        out.append((illumination_case, (8, 64, 90, 160, 5, dtype, "amnet-base 1/4 res, 8 frames")))
        # Large enough (118 MB in fp16) that DRAM, not launch latency, bounds it: where the bandwidth aim is judged.
        out.append((spectral_case, (8, 16, 360, 640, dtype, "8 frames 360x640 C=16")))
        out.append((illumination_case, (8, 16, 360, 640, 5, dtype, "8 frames 360x640 C=16")))
        for C, H, W in ((16, 360, 640), (32, 180, 320), (48, 90, 160)):
            out.append((spectral_case, (1, C, H, W, dtype, f"{H}x{W} C={C}")))
            for k in (1, 5, 7):
                out.append((illumination_case, (1, C, H, W, k, dtype, f"{H}x{W} C={C}")))
    return out


def smoke_cases() -> list[tuple[Callable[..., Case], tuple[Any, ...]]]:
    return [
        (spectral_case, (1, 4, 6, 10, torch.float32, "smoke")),
        (illumination_case, (1, 4, 6, 10, 3, torch.float32, "smoke")),
        (moe_case, (40, 16, 32, 4, torch.float32)),
    ]


def measured_copy_gbs(reps: int = 20) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of a 2 GiB buffer: the attainable
    DRAM ceiling in the same run, beside the datasheet peak."""
    import triton.testing

    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = float(triton.testing.do_bench(lambda: dst.copy_(src), warmup=5, rep=reps * 10, return_mode="median"))
    del src, dst
    torch.cuda.empty_cache()
    return round(2 * (2 << 30) / (ms * 1e-3) / 1e9, 1)


def table(cases: list[Case]) -> str:
    def f(v: float | None, nd: int = 3) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    rows = ["| kernel | shape | dtype | ours ms | baselines ms | speedup (x) | GB/s (% peak) | TFLOP/s | max rel err |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        base = ", ".join(f"{k} {f(v)}" for k, v in c.ms.items() if k != "triton")
        sp = ", ".join(f"{k} {v}" for k, v in c.speedup.items())
        bw = "-" if c.gbs is None or c.kernel == "moe_top2" else f"{c.gbs} ({f(c.pct_peak_dram, 1)}%)"
        rows.append(f"| {c.kernel} | {c.shape} | {c.dtype} | {f(c.ms.get('triton'))} | {base} | {sp} | {bw} | "
                    f"{f(c.tflops, 1) if c.kernel == 'moe_top2' else '-'} | {f(c.max_rel_err, 5)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (Triton interpreter)")
    p.add_argument("--dtype", choices=["fp16", "fp32", "bf16", "all"], default="fp16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--only", choices=["spectral_gate", "illumination_gate", "moe_top2"], default=None)
    p.add_argument("--match", default=None, help="only cases whose shape label matches this regex")
    p.add_argument("--cudagraph", action="store_true",
                   help="time inside CUDA graphs (GPU time without the host's launch cost)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    a = p.parse_args(argv)
    if a.out and os.path.exists(a.out):
        # the results file is rewritten after every case: it must be one this run creates, never an existing file
        print(f"{a.out} exists: pass a new --out path (or move that file away yourself)", file=sys.stderr)
        return 2
    global CUDAGRAPH
    CUDAGRAPH = a.cudagraph

    if a.cpu_smoke:
        dev, device_name, cases_in, reps = "cpu", f"CPU ({platform.processor() or platform.machine()}), Triton interpreter", smoke_cases(), 2
        os.environ.setdefault("LOWLIGHT_TRITON_ON_CPU", "1")
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run on a GPU machine, or pass --cpu-smoke", file=sys.stderr)
            return 2
        dev, device_name, reps = "cuda", torch.cuda.get_device_name(), a.reps
        names = {"fp16": [torch.float16], "fp32": [torch.float32], "bf16": [torch.bfloat16],
                 "all": [torch.float16, torch.float32, torch.bfloat16]}
        cases_in = gpu_cases(names[a.dtype])
    copy_gbs = None if a.cpu_smoke else measured_copy_gbs()
    if copy_gbs:
        print(f"measured device-to-device copy: {copy_gbs} GB/s (datasheet {_lookup(PEAK_DRAM_GBS, device_name)})")
    results: list[Case] = []

    def write() -> None:  # after every case: a run cut short by a time limit keeps what it measured
        if not a.out:
            return
        import triton

        doc = {
            "device": device_name,
            "peak_dram_gbs": _lookup(PEAK_DRAM_GBS, device_name),
            "measured_copy_gbs": copy_gbs,
            "peak_fp16_tflops": _lookup(PEAK_FP16_TFLOPS, device_name),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]),
            "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
            "cpu_smoke": a.cpu_smoke,
            "timing": "CUDA graph replay (triton do_bench_cudagraph)" if a.cudagraph else "triton do_bench (host launches)",
            "results": [asdict(c) for c in results],
        }
        # a fresh temporary file beside --out, renamed over the results file this run created (checked above)
        fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".json", dir=os.path.dirname(os.path.abspath(a.out)))
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, a.out)

    for fn, args in cases_in:
        if a.only and fn.__name__.split("_")[0] not in a.only:
            continue
        if a.match and not re.search(a.match, str(args[-1] if fn is not moe_case else "")):
            continue
        t0 = time.perf_counter()
        c = _finish(fn(*args[:-1], dev, reps, args[-1]) if fn is not moe_case else fn(*args, dev, reps), device_name)
        results.append(c)
        write()
        print(f"{c.kernel:18s} {c.shape:45s} {c.dtype:8s} ours {c.ms.get('triton')} ms  speedup {c.speedup}"
              f"  ({time.perf_counter() - t0:.0f} s incl. compiles)", flush=True)
    print()
    print(table(results))
    if a.out:
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
