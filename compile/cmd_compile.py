"""`lowlight-compile [CHECKPOINT|MODEL.onnx] --model FAMILY --target T ...`: checkpoint in, verified bundle out.

The model family's declared options become flags here: the parser is built
after `--model` is known, so this file never names a family or one of its options.
"""
from __future__ import annotations

import argparse
from typing import Any

from lowlight.compile.cli_types import nonneg_float, positive_int, shape_text
from lowlight.models.family import default_family

SUMMARY = "compile a checkpoint (or an ONNX file, or your own model) into a verified bundle"


def add_arguments(p: argparse.ArgumentParser, family: Any = None) -> None:
    """Flags of the compile command; `family` adds its declared options."""
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="safetensors or weights-only state_dict checkpoint, or an ONNX model file (default: the family's shipped reference weights)")
    p.add_argument("--model", default=default_family(),
                   help="model family (`lowlight-compile zoo list`), path/to/file.py:Name for your own model, or an installed `lowlight.families` entry point")
    p.add_argument("--config", default=None,
                   help="model config, 'auto' (read the layout from the checkpoint), or the official options FILE.yml "
                        "(default: auto with a checkpoint, else the family's deployed config)")
    p.add_argument("--target", default="cpu", help="deployment target (see `lowlight-compile targets`)")
    p.add_argument("--trt-version", default=None, help="override the target's TensorRT version, e.g. 11.4")
    p.add_argument("--dla", action="store_true", help="Jetson: plan for a DLA core with GPU fallback")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8", "bf16"], default=None,
                   help="default: fp32 on cpu, fp16 on GPU targets; bf16: cpu target, OpenVINO, on a processor with AVX512-BF16/AMX")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "openvino"], default=None,
                   help="cpu target: the runtime the bundle is built and verified for; auto builds the precision on every backend "
                        "installed here (openvino: pip install 'lowlight-compile[openvino]'), verifies each, times them "
                        "interleaved and keeps the fastest that meets --min-fidelity (default: $LOWLIGHT_BACKEND if set, else auto)")
    p.add_argument("--calib", default=None, help="calibration frames (DIR or VIDEO) for int8 (default: the shipped sample frames)")
    p.add_argument("--verify-data", default=None, help="held-out frames (DIR or VIDEO) for verification (default: ../shared/data/lowlight_real)")
    p.add_argument("--ground-truth", default=None, help="folder of clean photos: also verify on synthetic low-light pairs made from them")
    p.add_argument("--shape", type=shape_text, default=None, help="input shape, e.g. 1x8x3x256x256 (default: the family's)")
    p.add_argument("--out", default=None, help="bundle directory; only an absent path, an empty folder or a bundle is replaced (default: bundles/MODEL-CONFIG-TARGET-PRECISION)")
    p.add_argument("--min-fidelity", type=nonneg_float, default=35.0, help="fail below this PSNR (dB) to the FP32 model")
    p.add_argument("--max-drop", type=nonneg_float, default=0.3, help="fail above this PSNR drop (dB) against ground truth")
    p.add_argument("--pixel-format", choices=["bgr24", "rgb24", "nv12", "yuyv"], default=None,
                   help="take and return the camera's uint8 frames in this format, converted inside the graph "
                        "(TensorRT does it on the GPU; YUV is BT.601 limited range); default: float RGB in [0,1]")
    p.add_argument("--int8-engine", choices=["auto", "nncf", "ort", "modelopt"], default="auto",
                   help="post-training quantizer (auto: cpu times NNCF and ORT; TensorRT targets try NNCF and, where "
                        "installed ([modelopt] extra), NVIDIA Model Optimizer, keeping the larger INT8 share)")
    p.add_argument("--fp16-engine", choices=["auto", "autocast", "ort"], default="auto",
                   help="FP16 conversion (auto: Model Optimizer's AutoCast for TensorRT targets where installed, which "
                        "runs the graph on the calibration frames and keeps overflowing nodes FP32; ort: onnxruntime's "
                        "converter, the family's keep-float policy only; about a minute less on large unrolled graphs)")
    p.add_argument("--calib-frames", type=positive_int, default=16, help="calibration samples, spread over the whole --calib source")
    p.add_argument("--verify-frames", type=positive_int, default=8, help="held-out verification samples (never calibration frames)")
    p.add_argument("--profile-runs", type=positive_int, default=20, help="timed runs for the latency profile")
    p.add_argument("--cache-dir", default=None, help="stage cache (default: ~/.cache/lowlight-compile or $LOWLIGHT_CACHE)")
    p.add_argument("--force", action="store_true", help="redo every stage instead of reusing cached results")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    if family is not None and family.options:
        g = p.add_argument_group(f"options of --model {family.name}")
        for o in family.options:
            g.add_argument(o.flag, dest=f"family_{o.name}", choices=o.choices, default=o.default, help=o.help)


def family_for(argv: list[str]) -> Any:
    """The family named by --model in argv (default: the one that says it is), so its options can become flags."""
    from lowlight.models import get_family

    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("checkpoint", nargs="?")
    peek.add_argument("--model", default=default_family())
    known, _ = peek.parse_known_args(argv)
    if known.checkpoint and str(known.checkpoint).lower().endswith(".onnx"):
        return None  # an ONNX file brings its own inputs: no family options
    return get_family(known.model)


def run(a: argparse.Namespace) -> int:
    """Compile and print the summary: bundle, verification, profile, engine status."""
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    family_options = {k[len("family_"):]: v for k, v in vars(a).items() if k.startswith("family_")}
    opts = CompileOptions(
        checkpoint=a.checkpoint, model=a.model, config=a.config, target=a.target, precision=a.precision,
        calib=a.calib, verify_data=a.verify_data, ground_truth=a.ground_truth, shape=a.shape, out=a.out,
        family_options=family_options, min_fidelity=a.min_fidelity, max_drop=a.max_drop, int8_engine=a.int8_engine, fp16_engine=a.fp16_engine,
        calib_frames=a.calib_frames, verify_frames=a.verify_frames, force=a.force, cache_dir=a.cache_dir,
        trt_version=a.trt_version, dla=a.dla, profile_runs=a.profile_runs, quiet=a.quiet, pixel_format=a.pixel_format,
        backend=a.backend,
    )
    r = compile_bundle(opts)
    v = r.verification
    print(f"\nbundle: {r.bundle}")
    print(f"  target {r.manifest['target']}, precision {r.manifest['precision']}, backend {r.manifest.get('backend', r.manifest['runtime'])}, "
          f"inputs {[i['name'] + str(i['shape']) for i in r.manifest['inputs']]}")
    sel = r.manifest.get("backend_selection")
    if sel and len(sel.get("candidates", [])) > 1:
        print(f"  backend choice: {sel['chosen']}: {sel['reason']}")
    line = f"  verification: {v['fidelity_psnr_db']:.2f} dB / SSIM {v['fidelity_ssim']:.4f} vs {v.get('reference', 'FP32 PyTorch')}"
    if "ground_truth" in v:
        line += f"; {v['ground_truth']['drop_db']:+.3f} dB drop vs ground truth"
    print(line + f"  ({r.bundle / 'verification.md'})")
    if r.profile:
        lat = r.profile["latency_ms"]
        print(f"  profile on this host: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, {r.profile['fps']:.1f} frames/s  ({r.bundle / 'profile.md'})")
    engine = r.manifest.get("engine")
    if r.manifest.get("runtime") == "tensorrt":
        if engine:
            print(f"  TensorRT engine: {r.bundle / engine['file']}")
        else:
            why = r.manifest.get("engine_status", "TensorRT is not available on this host")
            print(f"  TensorRT engine: NOT BUILT YET ({why}).")
            print(f"    finish on the device: lowlight-compile build-engine {r.bundle}")
    for n in r.notes:
        print(f"  note: {n}")
    return 0
