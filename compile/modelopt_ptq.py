"""NVIDIA Model Optimizer (`nvidia-modelopt`) for TensorRT targets: INT8 PTQ and AutoCast FP16, in a child process.

Model Optimizer's ONNX quantizer rewrites onnxruntime's quantization classes for the whole process the first time it
runs (`modelopt.onnx.quantization.ort_patching.patch_ort_modules`: calibrators, the QDQ registry, the quantizer's
range adjustment). Afterwards onnxruntime's own `quantize_static` fails on our graphs ("Quantization parameters are
not specified for param view"), so both entry points run `python -m lowlight.compile.modelopt_ptq` in a fresh
interpreter; frames travel as .npz files in a temporary folder beside the output.

- `int8`: Q/DQ placed by TensorRT's rules (on the inputs of Conv/MatMul/Gemm and the ops TensorRT fuses with them),
  symmetric int8, calibrated with onnxruntime on the CPU (`CALIBRATION`).
- `autocast`: the graph runs once in FP32 on the frames; nodes whose values exceed `AUTOCAST_DATA_MAX` stay FP32.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: Model Optimizer's calibration: global max, not its default entropy. On AMNet tiny (jetson-orin, 1x4x3x128x128,
#: 16 real low-light frames; worst / mean PSNR of 8 others vs the float graph): max 36.8 / 40.1 dB, entropy 36.4 / 38.8.
CALIBRATION = "max"
#: AutoCast keeps a node FP32 when its inputs or outputs exceed this magnitude on the calibration frames (Model
#: Optimizer's default): a sum of squares over a NAFNet-style LayerNorm can leave FP16's range (65504) long before
#: the activations themselves do.
AUTOCAST_DATA_MAX = 512.0


@functools.lru_cache(maxsize=1)
def missing() -> str | None:
    """Why Model Optimizer's ONNX tools cannot be imported here, or None (importing patches nothing)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("modelopt").setLevel(logging.ERROR)
            import modelopt.onnx.autocast  # noqa: F401
            import modelopt.onnx.quantization  # noqa: F401
    except Exception as e:  # ImportError, or its [onnx] dependencies' own import errors
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def int8(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]], keep_float: list[str]) -> None:
    """INT8 Q/DQ of `src` into `dst` by Model Optimizer, calibrated on `feeds`; `keep_float` nodes stay float."""
    _run("int8", src, dst, feeds, keep_float)


def autocast(src: str | Path, dst: str | Path, keep_float: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """FP16 of `src` into `dst` by AutoCast (float32 inputs/outputs); returns which nodes it kept FP32 beyond
    `keep_float` ("fp32_by_measurement")."""
    stayed = _run("autocast", src, dst, feeds, keep_float)
    floor = set(keep_float)
    return {"engine": "modelopt.autocast", "data_max": AUTOCAST_DATA_MAX, "calibration_samples": len(feeds),
            "kept_float": len(keep_float), "fp32_by_measurement": [n for n in stayed if n not in floor]}


def _run(job: str, src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]], keep_float: list[str]) -> list[str]:
    from lowlight.core.errors import LowlightError

    why = missing()
    if why:
        raise LowlightError(f"NVIDIA Model Optimizer's ONNX tools are not importable ({why})",
                            "pip install 'lowlight-compile[modelopt]', or use another --int8-engine")
    dst = Path(dst)
    # Model Optimizer also saves renamed copies next to the model it reads: it gets a copy, never the cached artifact
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        work = Path(tmp)
        shutil.copyfile(src, work / "model.onnx")
        (work / "frames").mkdir()
        for i, f in enumerate(feeds):
            np.savez(work / "frames" / f"{i:04d}.npz", **f)
        (work / "keep.json").write_text(json.dumps(list(keep_float)))
        done = subprocess.run([sys.executable, "-m", "lowlight.compile.modelopt_ptq", job, str(work)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not (work / "out.onnx").is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise LowlightError(f"Model Optimizer's {job} failed (exit {done.returncode}):\n{tail}",
                                "use --int8-engine nncf or ort (or --precision fp32); report the graph if this persists")
        shutil.move(str(work / "out.onnx"), dst)
        return json.loads((work / "fp32_nodes.json").read_text()) if job == "autocast" else []


# -- the child process --------------------------------------------------------------------------------------------

def _child(job: str, work: Path) -> None:
    import onnx

    from lowlight.kernels.trt_plugins import tensorrt_available

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    from modelopt.onnx import trt_utils

    if not tensorrt_available():
        # tensorrt-stubs' bare `tensorrt/` folder imports as an empty namespace package, which Model Optimizer
        # takes for TensorRT and asks for plugin layers (AttributeError: no trt.Logger)
        trt_utils.TRT_PYTHON_AVAILABLE = False
    keep = json.loads((work / "keep.json").read_text())
    exclude = [f"^{re.escape(n)}$" for n in keep] or None
    src, out = work / "model.onnx", work / "out.onnx"
    if job == "int8":
        from modelopt.onnx.quantization import quantize

        frames = [dict(np.load(p)) for p in sorted((work / "frames").glob("*.npz"))]
        data = {k: np.concatenate([f[k] for f in frames], axis=0) for k in frames[0]}
        quantize(str(src), quantize_mode="int8", calibration_data=data, calibration_method=CALIBRATION,
                 calibration_eps=["cpu"], nodes_to_exclude=exclude,
                 high_precision_dtype="fp32",  # the rest stays as exported: FP16 is the TensorRT builder's flag
                 output_path=str(out), log_level="ERROR")
        return
    from modelopt.onnx.autocast import convert_to_mixed_precision

    model = convert_to_mixed_precision(str(src), low_precision_type="fp16", keep_io_types=True,
                                       calibration_data=str(work / "frames"), providers=["cpu"],
                                       nodes_to_exclude=exclude, data_max=AUTOCAST_DATA_MAX)
    onnx.save(model, str(out))
    typed = onnx.shape_inference.infer_shapes(model)
    fp32 = {v.name for v in (*typed.graph.value_info, *typed.graph.output) if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    stayed = [n.name for n in model.graph.node if n.op_type not in ("Cast", "Constant") and any(o in fp32 for o in n.output)]
    (work / "fp32_nodes.json").write_text(json.dumps(stayed))


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Model Optimizer work for lowlight.compile (run by it, in a fresh process)")
    p.add_argument("job", choices=["int8", "autocast"])
    p.add_argument("work", type=Path, help="folder with model.onnx, frames/*.npz and keep.json; out.onnx is written there")
    a = p.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _child(a.job, a.work)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
