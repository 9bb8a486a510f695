"""The bundle's reference data in Polygraphy's own formats, and the `polygraphy run` command that reads them.

Written at compile time without importing Polygraphy (only the device needs it);
`build-engine` reads the same files with Polygraphy's loaders to verify the engine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The bundle's reference inputs/outputs in Polygraphy's JSON formats (`--load-inputs` / `--load-outputs`).
POLYGRAPHY_INPUTS = "polygraphy_inputs.json"
POLYGRAPHY_OUTPUTS = "polygraphy_outputs.json"
#: Runner name recorded in the RunResults (Polygraphy compares results runner by runner).
POLYGRAPHY_RUNNER = "lowlight-reference"


def _np_json(a: Any) -> dict[str, str]:
    """One array as Polygraphy encodes it: np.save bytes, base64, tagged `polygraphy_class: ndarray`."""
    import base64
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}


def write_polygraphy_json(bundle_dir: str | Path, reference: str = "reference.npz") -> tuple[str, str] | None:
    """Write the reference inputs (a list of feed dicts) and outputs (RunResults) as Polygraphy reads them.

    The formats are Polygraphy's own JSON (polygraphy.json / comparator.struct.RunResults),
    written here without importing Polygraphy, which is only needed on the device.
    """
    import numpy as np

    root = Path(bundle_dir)
    if not (root / reference).is_file():
        return None  # no reference outputs recorded: nothing to hand Polygraphy
    ref = np.load(root / reference)
    ins = sorted(k.split(":", 1)[1] for k in ref.files if k.startswith("input:"))
    outs = sorted(k.split(":", 1)[1] for k in ref.files if k.startswith("output:"))
    n = int(ref[f"input:{ins[0]}"].shape[0]) if ins else 0
    feeds = [{name: _np_json(ref[f"input:{name}"][i]) for name in ins} for i in range(n)]
    iterations = [{"outputs": {name: _np_json(ref[f"output:{name}"][i]) for name in outs}, "runner_name": POLYGRAPHY_RUNNER,
                   "runtime": None, "polygraphy_class": "IterationResult"} for i in range(n)]
    run_results = {"lst": [[POLYGRAPHY_RUNNER, iterations]], "polygraphy_class": "RunResults"}
    (root / POLYGRAPHY_INPUTS).write_text(json.dumps(feeds) + "\n")
    (root / POLYGRAPHY_OUTPUTS).write_text(json.dumps(run_results) + "\n")
    return POLYGRAPHY_INPUTS, POLYGRAPHY_OUTPUTS


def polygraphy_command(onnx_name: str, flags: list[str], calibration_cache: str | None, min_psnr: float) -> str:
    """A ready-to-run `polygraphy run` (run in the bundle): build with the plan's flags, compare with the bundled outputs by PSNR."""
    opts = {"STRONGLY_TYPED": "--strongly-typed", "FP16": "--fp16", "INT8": "--int8"}
    prec = "".join(f" {opts[f]}" for f in flags if f in opts)
    if "INT8" in flags and calibration_cache:
        prec += f" --calibration-cache {calibration_cache}"
    return (f"polygraphy run {onnx_name} --trt{prec} --load-inputs {POLYGRAPHY_INPUTS} --load-outputs {POLYGRAPHY_OUTPUTS} "
            f"--compare-func psnr --psnr-threshold {min_psnr:g}")
