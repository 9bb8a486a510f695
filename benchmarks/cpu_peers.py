"""AMNet on the CPU against every peer a user would try, in one run, with the machine's own limits.

    nice .venv/bin/python benchmarks/cpu_peers.py [--config base] [--shape 1x8x3x256x256] [--rounds 10]

Contenders (same input, same thread count, timed interleaved: every round runs each
contender once in a rotated order, so load from other processes falls on all alike;
median over the rounds):

  PyTorch eager FP32                     the model as trained
  torch.compile (inductor, freezing)     PyTorch's own compiler
  our FP32 artifact (onnxruntime)        `lowlight-compile --precision fp32 --backend onnxruntime`
  OpenVINO FP32 (same ONNX)              that bundle's ONNX in OpenVINO, hint f32 pinned
  our INT8 artifact (onnxruntime)        `--precision int8 --backend onnxruntime`
  OpenVINO on our INT8 ONNX              that bundle's Q/DQ graph in OpenVINO
  OpenVINO BF16 (same FP32 ONNX)         hint bf16 (processors with AVX512-BF16/AMX)
  OpenVINO INT8, NNCF default            nncf.quantize on the OpenVINO model, no ignored scope
  our bundle, --backend auto (INT8)      what the cpu target picks for --precision int8
  our bundle, BF16                       `--precision bf16` (OpenVINO)

Fidelity: PSNR against FP32 PyTorch on 8 real low-light photos (DICM,
../shared/data/lowlight_real; each photo a clip with camera motion), mean / worst.
Machine limits measured in the same run: FP32 GEMM (torch.mm, 2048^3), INT8 GEMM
(onnxruntime MatMulInteger u8 x s8, 2048^3: MLAS's VNNI kernel), DRAM copy bandwidth
(numpy, 512 MiB). Each row is also given as a share of its compute floor (the model's
GFLOP at the FP32 or INT8 GEMM peak; BF16 rows against FP32). Writes
benchmarks/results/cpu_peers-<date>.json; the README's performance table is made from it
(`--table` prints it).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from _common import timed, write_result


# -- machine limits -----------------------------------------------------------------------------------


def gemm_fp32_gflops(n: int = 2048, runs: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), runs)[0] / 1e9


def gemm_int8_gops(n: int = 2048, runs: int = 5, threads: int = 2) -> float:
    """onnxruntime MatMulInteger, uint8 activations x int8 weights (what a U8S8 Q/DQ conv runs on)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lowlight.core.onnx_graph import ort_session

    w = numpy_helper.from_array(np.random.default_rng(0).integers(-127, 127, (n, n), dtype=np.int8), "w")
    node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
    graph = helper.make_graph([node], "mmi", [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [w])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mmi.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        sess = ort_session(path, threads=threads)
        a = np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)
        sec = timed(lambda: sess.run(None, {"a": a}), runs)[0]
    return 2 * n**3 / sec / 1e9


def dram_gbs(mib: int = 512, runs: int = 5) -> float:
    a = np.ones(mib * 2**20 // 4, dtype=np.float32)
    b = np.empty_like(a)
    return 2 * a.nbytes / timed(lambda: np.copyto(b, a), runs)[0] / 1e9  # read + write


# -- contenders -----------------------------------------------------------------------------------------


def _psnrs(run: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: list[dict[str, np.ndarray]], refs: list[np.ndarray]) -> list[float]:
    from lowlight.core.metrics import psnr

    return [float(psnr(run(f), r)) for f, r in zip(feeds, refs)]


def _ov_compiled(model: Any, hint: str, threads: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(req.infer(feed)[compiled.output(0)])
    return run


def main() -> None:
    from lowlight.calibration.data import shared_data_dir
    from lowlight.calibration.frames import load_frames
    from lowlight.compile.openvino import bf16_support, time_interleaved
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle
    from lowlight.compile.roofline import estimate
    from lowlight.models import get_family, load
    from lowlight.runtime import load as load_bundle

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="base")
    p.add_argument("--shape", default="1x8x3x256x256")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="/tmp/lowlight-cpu-peers", help="where the compiled bundles go (reused)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out (its first compile takes minutes)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["LOWLIGHT_THREADS"] = str(a.threads)

    limits = {"fp32_gemm_gflops": round(gemm_fp32_gflops(), 1), "int8_gemm_gops": round(gemm_int8_gops(threads=a.threads), 1),
              "dram_copy_gbs": round(dram_gbs(), 1)}
    print(f"machine limits: {limits}")

    fam = get_family("amnet")
    out = Path(a.out)
    bundles: dict[str, Path] = {}
    for name, prec, backend in (("fp32", "fp32", "onnxruntime"), ("int8", "int8", "onnxruntime"), ("auto-int8", "int8", "auto"),
                                ("bf16", "bf16", "openvino")):
        if prec == "bf16" and not bf16_support().get("available"):
            continue
        dst = out / f"amnet-{a.config}-{name}"
        if not (dst / "manifest.json").exists():
            compile_bundle(CompileOptions(config=a.config, precision=prec, shape=a.shape, out=str(dst), backend=backend,
                                          profile_runs=2, quiet=True))
        bundles[name] = dst
    module = fam.export_module(load("amnet", a.config), modalities="rgb").eval()
    frames = load_frames(shared_data_dir() / "lowlight_real", limit=8, every=8)
    feeds = fam.make_inputs(frames, a.shape, a.config, seed=3)
    with torch.no_grad():
        refs = [module(torch.from_numpy(f["rgb"])).numpy() for f in feeds]
    x = feeds[0]

    runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {}

    def eager(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(feed["rgb"])).numpy()
    runners["PyTorch eager FP32"] = eager
    if not a.no_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(module)

        def inductor(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.no_grad():
                return compiled(torch.from_numpy(feed["rgb"])).numpy()
        t0 = time.perf_counter()
        inductor(x)
        print(f"torch.compile: first call {time.perf_counter() - t0:.0f} s")
        runners["torch.compile (inductor, freezing)"] = inductor
    for name, label in (("fp32", "our FP32 artifact (onnxruntime)"), ("int8", "our INT8 artifact (onnxruntime)")):
        sess = load_bundle(bundles[name], verbose=False)
        runners[label] = lambda feed, s=sess: s(**feed)
    import openvino as ov

    runners["OpenVINO FP32 (same ONNX)"] = _ov_compiled(ov.Core().read_model(str(bundles["fp32"] / "model.onnx")), "f32", a.threads)
    runners["OpenVINO on our INT8 ONNX"] = _ov_compiled(ov.Core().read_model(str(bundles["int8"] / "model.onnx")), "f32", a.threads)
    if "bf16" in bundles:
        runners["OpenVINO BF16 (same FP32 ONNX)"] = _ov_compiled(ov.Core().read_model(str(bundles["fp32"] / "model.onnx")), "bf16", a.threads)
    import nncf

    ov_model = ov.Core().read_model(str(bundles["fp32"] / "model.onnx"))
    calib = fam.make_inputs(load_frames(shared_data_dir() / "lowlight_real", limit=16, every=4)[1::2], a.shape, a.config, seed=5)
    q = nncf.quantize(ov_model, nncf.Dataset(calib))
    runners["OpenVINO INT8, NNCF default (all convs and DFT matmuls)"] = _ov_compiled(q, "f32", a.threads)
    for name, label in (("auto-int8", "our bundle, --backend auto, INT8"), ("bf16", "our bundle, BF16 (OpenVINO)")):
        if name in bundles:
            sess = load_bundle(bundles[name], verbose=False)
            runners[label] = lambda feed, s=sess: s(**feed)

    print(f"timing {len(runners)} contenders interleaved, {a.rounds} rounds ...")
    times = time_interleaved({k: (lambda r=r: r(x)) for k, r in runners.items()}, rounds=a.rounds, warmup=2)

    from lowlight.targets import get_target

    gflop = float(estimate(bundles["fp32"] / "model.onnx", get_target("cpu"), "fp32")["gflops"])
    floors = {"fp32": gflop / limits["fp32_gemm_gflops"] * 1e3, "int8": gflop / limits["int8_gemm_gops"] * 1e3}
    rows = []
    for label, run in runners.items():
        ms = float(np.median(times[label]))
        ps = None if label == "PyTorch eager FP32" else _psnrs(run, feeds, refs)
        kind = "int8" if "INT8" in label else "fp32"
        rows.append({"contender": label, "ms": round(ms, 1), "fidelity_db_mean": None if ps is None else round(float(np.mean(ps)), 2),
                     "fidelity_db_worst": None if ps is None else round(float(np.min(ps)), 2),
                     "floor": kind, "share_of_floor": round(floors[kind] / ms, 3)})
    auto = {}
    if "auto-int8" in bundles:
        import json

        auto = json.loads((bundles["auto-int8"] / "manifest.json").read_text()).get("backend_selection", {})
    result = {
        "host": f"{platform.processor() or platform.machine()}, {a.threads} threads", "date": datetime.date.today().isoformat(),
        "command": f".venv/bin/python benchmarks/cpu_peers.py --config {a.config} --shape {a.shape} --rounds {a.rounds} --threads {a.threads}",
        "shape": a.shape, "gflop_per_clip": round(gflop, 2), "limits": limits,
        "floor_ms": {k: round(v, 1) for k, v in floors.items()}, "rows": rows, "auto_int8_selection": auto,
        "bf16": bf16_support(), "torch": torch.__version__, "openvino": ov.__version__,
    }
    write_result("cpu_peers", result)
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """The README's performance table from a cpu_peers result."""
    lines = ["| contender | ms per clip | fidelity dB (mean / worst) | share of its floor |", "|---|---:|---|---:|"]
    for r in result["rows"]:
        fid = "reference" if r["fidelity_db_mean"] is None else f"{r['fidelity_db_mean']:.1f} / {r['fidelity_db_worst']:.1f}"
        lines.append(f"| {r['contender']} | {r['ms']:.0f} | {fid} | {100 * r['share_of_floor']:.0f} % ({r['floor'].upper()}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
