"""NAT on GLARE: the PyTorch 4-round teacher vs the compiled 2-round student, in one run.

    nice .venv/bin/python benchmarks/nat.py [--config small] [--size 64] [--runs 5]

On the held-out pairs `zoo train nat` reports on (the centre crop of each photo of
../shared/data/clean that training held out, darkened by
`calibration.degrade.linear_low_light` at a fixed seed):

  retrieval            PyTorch, no refinement (steps 0)
  teacher 4            PyTorch, the slides' 4 rounds
  teacher 2 / 1        PyTorch, the teacher truncated (the baselines distillation must beat)
  student 2 / 1        PyTorch, the distilled students
  compiled student 2 FP32 / INT8   CPU bundles (onnxruntime)

PSNR/SSIM against the clean photo, token accuracy against the clean photo's codes,
token agreement with the 4-round teacher, and for the bundles PSNR and token agreement
against their PyTorch model; each bundle's own verification (the FP16 `jetson-orin`
bundle included). Latency: median per frame after a warm-up, same threads.
Writes benchmarks/results/nat-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import timed, write_result


def main() -> None:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle
    from lowlight.core.metrics import psnr, ssim
    from lowlight.models import load
    from lowlight.models.train_loop import split_photos
    from lowlight.models.train_nat import gt_codes, heldout_pairs
    from lowlight.runtime import load as load_bundle

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default="/tmp/lowlight-nat-bench", help="where the compiled bundles go (reused)")
    a = p.parse_args()
    shape = f"1x3x{a.size}x{a.size}"
    pairs = heldout_pairs(split_photos()[1], a.size)
    out = Path(a.out)
    bundles: dict[str, Any] = {}
    for prec, target in (("fp32", "cpu"), ("int8", "cpu"), ("fp16", "jetson-orin")):
        dst = out / f"nat-{a.config}-student2-{a.size}-{target}-{prec}"
        if not (dst / "manifest.json").exists():
            compile_bundle(CompileOptions(model="nat", config=a.config, shape=shape, out=str(dst), precision=prec, target=target,
                                          calib_frames=16, verify_frames=8, profile_runs=2, quiet=True, family_options={"steps": "2"}))
        if target == "cpu":
            bundles[f"compiled student 2 {prec.upper()} (onnxruntime)"] = load_bundle(dst, verbose=False)
    verified = {}
    for dst in sorted(out.glob(f"nat-{a.config}-*-{a.size}-*")):
        v = json.loads((dst / "manifest.json").read_text())["verification"]
        tok = v["outputs"]["tokens"]
        verified[dst.name] = {"fidelity_psnr_db": round(v["fidelity_psnr_db"], 2), "worst_sample_db": round(v["fidelity_psnr_db_min"], 2),
                              "token_agreement": round(tok["agreement_mean"], 4), "token_agreement_worst": round(tok["agreement_worst"], 4),
                              "passed": v["passed"]}

    models = {"retrieval": load("nat", config=a.config, steps=0), "teacher 4": load("nat", config=a.config, steps=4),
              "teacher 2": load("nat", config=a.config, steps=2, student=False), "teacher 1": load("nat", config=a.config, steps=1, student=False),
              "student 2": load("nat", config=a.config, steps=2), "student 1": load("nat", config=a.config, steps=1)}
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, ms: float, y: np.ndarray, tokens: np.ndarray, target: np.ndarray, gt: np.ndarray, teacher: np.ndarray,
            ref: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        r = rows.setdefault(name, {k: [] for k in ("ms", "psnr", "ssim", "token_accuracy", "agreement_teacher4", "vs_pytorch", "agreement_pytorch")})
        r["ms"].append(ms)
        r["psnr"].append(psnr(y, target))
        r["ssim"].append(ssim(y, target))
        r["token_accuracy"].append(float((tokens == gt).mean()))
        r["agreement_teacher4"].append(float((tokens == teacher).mean()))
        if ref is not None:
            r["vs_pytorch"].append(psnr(y, ref[0]))
            r["agreement_pytorch"].append(float((tokens == ref[1]).mean()))

    teacher4 = models["teacher 4"]
    for dark, clean in pairs:
        x = torch.from_numpy(dark)[None]
        gt = gt_codes(teacher4, torch.from_numpy(clean)[None]).numpy()
        with torch.no_grad():
            t_tokens = teacher4(x, return_tokens=True)[1].numpy()
        ys: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, m in models.items():
            with torch.no_grad():
                sec, (y, tok) = timed(lambda m=m: m(x, return_tokens=True), a.runs)
            ys[name] = (y.numpy(), tok.numpy())
            add(f"{name} (PyTorch)", sec * 1e3, ys[name][0], ys[name][1], clean[None], gt, t_tokens)
        for name, sess in bundles.items():
            sec, o = timed(lambda s=sess: s.run(rgb=dark[None]), a.runs)
            add(name, sec * 1e3, o["enhanced"], o["tokens"], clean[None], gt, t_tokens, ys["student 2"])
    summary = {name: {"ms_per_frame": round(float(np.median(r["ms"])), 2), "psnr_db": round(float(np.mean(r["psnr"])), 3),
                      "ssim": round(float(np.mean(r["ssim"])), 4), "token_accuracy": round(float(np.mean(r["token_accuracy"])), 4),
                      "token_agreement_with_teacher4": round(float(np.mean(r["agreement_teacher4"])), 4), "frames": len(r["psnr"]),
                      **({"psnr_vs_pytorch_db": round(float(np.mean(r["vs_pytorch"])), 2),
                          "token_agreement_with_pytorch": round(float(np.mean(r["agreement_pytorch"])), 4)} if r["vs_pytorch"] else {})}
               for name, r in rows.items()}
    base = summary["teacher 4 (PyTorch)"]["ms_per_frame"]
    for s in summary.values():
        s["speedup_vs_teacher4"] = round(base / s["ms_per_frame"], 2)
    result = {
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": datetime.date.today().isoformat(),
        "command": "nice .venv/bin/python benchmarks/nat.py " + " ".join(f"--{k} {v}" for k, v in vars(a).items() if k != "out"),
        "shape": shape, "results": summary, "bundles_verified_vs_pytorch": verified,
    }
    write_result("nat", result)


if __name__ == "__main__":
    main()
