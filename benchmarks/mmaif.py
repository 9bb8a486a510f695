"""MMAIF: the PyTorch flow teacher vs the compiled 1-step student vs the regression model, in one run.

    nice .venv/bin/python benchmarks/mmaif.py [--config small] [--size 64] [--runs 5]

On the held-out pairs `zoo train mmaif` reports on (the centre crop of each photo
of ../shared/data/clean that training held out, degraded by `calibration.fusion`
at a fixed seed, every shipped prompt, both tasks):

  teacher 5        PyTorch, midpoint with velocity reuse, 5 DiT passes
  teacher 1        PyTorch, the teacher's own sampler at 1 step (the baseline distillation must beat)
  student 1        PyTorch, the distilled 1-step student
  regression       PyTorch, one pass, no timestep
  compiled 1-step student FP32 / INT8, compiled regression FP32   CPU bundles (onnxruntime)

and each bundle's own verification against PyTorch (PSNR mean / worst, routing agreement), the FP16
`jetson-orin` bundle (1-step student, unrolled) included.

Latency: median per pair after a warm-up, same threads. Quality: PSNR/SSIM against the
clean photo, and of the compiled bundles against their PyTorch model.

Expert dispatch in the compiled graph: the student's unrolled graph exported once with
its `lowlight::MoETop2` nodes, then lowered two ways and timed in onnxruntime:
`dense` (the project's decomposition: every expert on every token, zero gates outside
each token's top 2) and `dispatch` (per expert: NonZero over the tokens that picked
it, Gather, the GLU on those rows only, ScatterND-add back; exact, data-dependent
shapes). Writes benchmarks/results/mmaif-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import timed, write_result




def dispatch_lowering(model: Any) -> Any:
    """Replace each lowlight MoETop2 node by an exact per-expert dispatch (NonZero/Gather/ScatterND-add)."""
    import onnx
    from onnx import helper as oh

    from lowlight.core.onnx_graph import CUSTOM_DOMAIN

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    shapes = {i.name: list(i.dims) for i in g.initializer}
    nodes = []
    const = 0

    def c(values: list[int], name: str) -> str:
        nonlocal const
        const += 1
        t = f"dispatch_const_{const}_{name}"
        nodes.append(oh.make_node("Constant", [], [t], value=oh.make_tensor(t + "_v", onnx.TensorProto.INT64, [len(values)], values)))
        return t

    for node in g.node:
        if node.domain != CUSTOM_DOMAIN or node.op_type != "MoETop2":
            nodes.append(node)
            continue
        x, wr, w1, w3, w2 = node.input
        n_exp = shapes[w1][0] if w1 in shapes else None
        if n_exp is None:
            raise ValueError("dispatch lowering needs the expert weights as initializers")
        p = node.name or node.output[0]

        def t(s: str) -> str:
            return f"{p}__{s}"

        nodes += [oh.make_node("MatMul", [x, wr], [t("logits")]), oh.make_node("Softmax", [t("logits")], [t("probs")], axis=-1),
                  oh.make_node("TopK", [t("probs"), c([2], "k")], [t("vals"), t("idx")], axis=-1),
                  oh.make_node("ReduceSum", [t("vals"), c([-1], "ax")], [t("vsum")], keepdims=1),
                  oh.make_node("Div", [t("vals"), t("vsum")], [t("wts")]),
                  oh.make_node("Sub", [x, x], [t("y0")])]
        acc = t("y0")
        for e in range(n_exp):
            def u(s: str, e: int = e) -> str:
                return t(f"e{e}_{s}")
            nodes += [
                oh.make_node("Equal", [t("idx"), c([e], "e")], [u("hit")]),
                oh.make_node("Cast", [u("hit")], [u("hitf")], to=onnx.TensorProto.FLOAT),
                oh.make_node("Mul", [t("wts"), u("hitf")], [u("wsel")]),
                oh.make_node("ReduceSum", [u("wsel"), c([1], "ax1")], [u("we")], keepdims=0),  # [N]
                oh.make_node("ReduceMax", [u("hitf"), c([1], "ax1")], [u("picked")], keepdims=0),
                oh.make_node("NonZero", [u("picked")], [u("nz")]),  # [1, M]
                oh.make_node("Transpose", [u("nz")], [u("rows")], perm=[1, 0]),  # [M, 1]
                oh.make_node("Reshape", [u("nz"), c([-1], "flat")], [u("tok")]),
                oh.make_node("Gather", [x, u("tok")], [u("xe")], axis=0),
                oh.make_node("Gather", [u("we"), u("tok")], [u("g")], axis=0),
                oh.make_node("Unsqueeze", [u("g"), c([1], "ax1")], [u("g1")]),
                oh.make_node("Gather", [w1, c([e], "e")], [u("w1")], axis=0),
                oh.make_node("Gather", [w3, c([e], "e")], [u("w3")], axis=0),
                oh.make_node("Gather", [w2, c([e], "e")], [u("w2")], axis=0),
                oh.make_node("Squeeze", [u("w1"), c([0], "ax0")], [u("w1s")]),
                oh.make_node("Squeeze", [u("w3"), c([0], "ax0")], [u("w3s")]),
                oh.make_node("Squeeze", [u("w2"), c([0], "ax0")], [u("w2s")]),
                oh.make_node("MatMul", [u("xe"), u("w1s")], [u("h1")]),
                oh.make_node("Sigmoid", [u("h1")], [u("sg")]),
                oh.make_node("Mul", [u("h1"), u("sg")], [u("silu")]),
                oh.make_node("MatMul", [u("xe"), u("w3s")], [u("h3")]),
                oh.make_node("Mul", [u("silu"), u("h3")], [u("h")]),
                oh.make_node("MatMul", [u("h"), u("w2s")], [u("ye")]),
                oh.make_node("Mul", [u("ye"), u("g1")], [u("yw")]),
                oh.make_node("ScatterND", [acc, u("rows"), u("yw")], [u("acc")], reduction="add"),
            ]
            acc = u("acc")
        nodes.append(oh.make_node("Identity", [acc], [node.output[0]]))
    del g.node[:]
    g.node.extend(nodes)
    keep = [f for f in out.functions if f.domain != CUSTOM_DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    imports = [o for o in out.opset_import if o.domain != CUSTOM_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    return out


def expert_dispatch(student: Any, size: int, runs: int) -> dict[str, Any]:
    """Dense vs per-expert dispatch lowering of the student's unrolled graph: ms and max difference."""
    import onnx

    from lowlight.compile.export import export_onnx
    from lowlight.core.onnx_graph import ort_session
    from lowlight.models.mmaif import UnrolledGraph
    from lowlight.passes.custom_ops import decompose_custom_ops

    student.set_task("mef")
    lat = student.latent_shape(1, size, size)
    rng = np.random.default_rng(0)
    feed = {"under": rng.random((1, 3, size, size), dtype=np.float32), "over": rng.random((1, 3, size, size), dtype=np.float32),
            "noise": rng.standard_normal(lat, dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "student.onnx"
        export_onnx(UnrolledGraph(student, int(student.steps)), feed, ["fused"], path)
        raw = onnx.load(str(path))
        forms = {"dense (all experts, zero gates)": decompose_custom_ops(raw), "dispatch (per-expert gather/scatter)": dispatch_lowering(raw)}
        res: dict[str, Any] = {}
        outs = {}
        for name, m in forms.items():
            p = Path(tmp) / f"{name.split()[0]}.onnx"
            onnx.save(m, str(p))
            sess = ort_session(p)
            sec, y = timed(lambda s=sess: s.run(None, feed)[0], runs)
            outs[name] = y
            res[name] = {"ms": round(sec * 1e3, 2), "nodes": len(m.graph.node)}
        a, b = outs.values()
        res["max_abs_difference"] = float(np.abs(a - b).max())
        dense, disp = (res[k]["ms"] for k in forms)
        res["dispatch_speedup_over_dense"] = round(dense / disp, 3)
    return res


def main() -> None:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle
    from lowlight.core.metrics import psnr, ssim
    from lowlight.models import load
    from lowlight.models.mmaif import PROMPTS, TASKS
    from lowlight.models.train_loop import split_photos
    from lowlight.models.train_mmaif import heldout_pairs
    from lowlight.runtime import load as load_bundle

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default="/tmp/lowlight-mmaif-bench", help="where the compiled bundles go (reused)")
    a = p.parse_args()
    shape = f"1x3x{a.size}x{a.size}"
    pairs = heldout_pairs(split_photos()[1], a.size)
    out = Path(a.out)
    bundles: dict[tuple[str, str], Any] = {}
    for task in TASKS:
        for label, fam_opts, prec in (("student 1", {"steps": "1"}, "fp32"), ("student 1", {"steps": "1"}, "int8"),
                                      ("regression", {"variant": "regression"}, "fp32")):
            dst = out / f"mmaif-{a.config}-{task}-{label.split()[0]}-{a.size}-{prec}"
            if not (dst / "manifest.json").exists():
                compile_bundle(CompileOptions(model="mmaif", config=a.config, shape=shape, out=str(dst), precision=prec,
                                              calib_frames=16, verify_frames=8, profile_runs=2, quiet=True,
                                              family_options={**fam_opts, "task": task}))
            bundles[(task, f"compiled {label} {prec.upper()} (onnxruntime)")] = (load_bundle(dst, verbose=False), label)

    verified: dict[str, Any] = {}
    for task in TASKS:  # the FP16 AGX Orin bundle: the 1-step student unrolled into one graph (TensorRT 10.3 decomposes the MoE)
        dst = out / f"mmaif-{a.config}-{task}-student-{a.size}-orin-fp16"
        if not (dst / "manifest.json").exists():
            compile_bundle(CompileOptions(model="mmaif", config=a.config, shape=shape, out=str(dst), precision="fp16",
                                          target="jetson-orin", calib_frames=16, verify_frames=8, profile_runs=2, quiet=True,
                                          family_options={"steps": "1", "task": task, "unroll": "yes"}))
    for dst in sorted(out.glob(f"mmaif-{a.config}-*-{a.size}-*")):
        v = json.loads((dst / "manifest.json").read_text())["verification"]
        verified[dst.name] = {"fidelity_psnr_db": round(v["fidelity_psnr_db"], 2), "worst_sample_db": round(v["fidelity_psnr_db_min"], 2),
                              "routing_agreement": (v.get("routing") or {}).get("agreement"), "passed": v["passed"]}

    rows: dict[str, dict[str, list[float]]] = {}

    def add(task: str, name: str, ms: float, y: np.ndarray, target: np.ndarray, ref: np.ndarray | None = None) -> None:
        r = rows.setdefault(f"{task}: {name}", {"ms": [], "psnr": [], "ssim": [], "vs_pytorch": []})
        r["ms"].append(ms)
        r["psnr"].append(psnr(y, target))
        r["ssim"].append(ssim(y, target))
        if ref is not None:
            r["vs_pytorch"].append(psnr(y, ref))

    models = {"teacher 5": load("mmaif", config=a.config, steps=5), "teacher 1": load("mmaif", config=a.config, steps=1, student=False),
              "student 1": load("mmaif", config=a.config, steps=1), "regression": load("mmaif", config=a.config, variant="regression")}
    for prompt, items in pairs.items():
        task = PROMPTS[prompt][0]
        (n0, _), (n1, _) = TASKS[task]
        for m in models.values():
            m.set_task(task, prompt)
        for x0, x1, target in items:
            feed = {n0: x0[None], n1: x1[None]}
            tfeed = {k: torch.from_numpy(v) for k, v in feed.items()}
            ys: dict[str, np.ndarray] = {}
            for name, m in models.items():
                with torch.no_grad():
                    sec, y = timed(lambda m=m: m(**tfeed).numpy(), a.runs)
                ys[name] = y
                add(task, f"{name} (PyTorch)", sec * 1e3, y, target[None])
            if prompt != [n for n, (t, _) in PROMPTS.items() if t == task][0]:
                continue  # bundles are compiled with the task's default prompt
            for (btask, name), (sess, label) in bundles.items():
                if btask == task:
                    sec, y = timed(lambda s=sess: s(**feed), a.runs)
                    add(task, name, sec * 1e3, y, target[None], ys[label])
    summary = {name: {"ms_per_pair": round(float(np.median(r["ms"])), 2), "psnr_db": round(float(np.mean(r["psnr"])), 3),
                      "ssim": round(float(np.mean(r["ssim"])), 4), "pairs": len(r["psnr"]),
                      **({"psnr_vs_pytorch_db": round(float(np.mean(r["vs_pytorch"])), 2)} if r["vs_pytorch"] else {})}
               for name, r in rows.items()}
    for task in TASKS:
        base = summary[f"{task}: teacher 5 (PyTorch)"]["ms_per_pair"]
        for name, s in summary.items():
            if name.startswith(task):
                s["speedup_vs_teacher5"] = round(base / s["ms_per_pair"], 2)
    result = {
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": datetime.date.today().isoformat(),
        "command": "nice .venv/bin/python benchmarks/mmaif.py " + " ".join(f"--{k} {v}" for k, v in vars(a).items() if k != "out"),
        "shape": shape, "results": summary, "bundles_verified_vs_pytorch": verified,
        "expert_dispatch": expert_dispatch(models["student 1"], a.size, a.runs),
    }
    write_result("mmaif", result)


if __name__ == "__main__":
    main()
