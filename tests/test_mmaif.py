"""MMAIF: the model (paper counts, RoPE export, inputs), its distillation and its compiled forms.

The tiny model (conftest `tiny_mmaif`) is trained for a few steps only: these tests check
what the model, the distill stage and the compiler do, not image quality (the shipped
`small` weights' JSON and benchmarks/mmaif.py report that).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lowlight.core.errors import LowlightError, ShapeError
from lowlight.models import mmaif as M

SHAPE = "1x3x32x32"  # tiny: f = 2, patch 2 -> 8x8 latent tokens


# -- the model ---------------------------------------------------------------------------------------


def test_paper_config_counts_within_5_percent_of_the_paper() -> None:
    """Sec. 4.2: "a total of 282M parameters, with approximately 185M being activated". Our unstated choices
    (expert GLU hidden 1664, NAF expansion 1, prompt tokens through the shared QKV) land within 5 % of both."""
    with torch.device("meta"):
        model = M.build("paper")
    counts = M.dit_parameters(model.flow)
    total, active = M.PAPER_PARAMS
    assert abs(counts["total"] / total - 1) < 0.05, counts
    assert abs(counts["active"] / active - 1) < 0.05, counts
    cfg = M.CONFIGS["paper"]
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.lora, cfg.patch, cfg.rope_base, cfg.experts) == (16, 576, 12, 128, 2, 2000.0, 4)
    assert model.flow.t_embed is not None and model.regression.t_embed is None  # regression: no timestep embedder


class _Rope(torch.nn.Module):
    """Tokens of a [B, C, h, w] map rotated by 2D RoPE built in the graph from the map's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.reshape(b, 1, c, h * w).transpose(2, 3)  # [B, 1, N, C]
        cos, sin = M.rope_tables(h, w, c, 2000.0)
        return M.apply_rope(tokens, cos, sin)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dynamic", [False, True])
def test_rope_exports_at_static_and_at_different_sizes(dynamic: bool, tmp_path: Path) -> None:
    """2D RoPE from `grid_positions` (expand, not repeat_interleave, which mis-exports with a symbolic size):
    onnxruntime equals eager at 8x6, 12x10 and 5x7, exported once per size or once with symbolic h, w."""
    sizes = [(8, 6), (12, 10), (5, 7)]
    path = tmp_path / "rope.onnx"
    if dynamic:
        h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
        torch.onnx.export(_Rope().eval(), (torch.randn(1, 16, 8, 6),), str(path), dynamo=True,
                          dynamic_shapes={"x": {2: h, 3: w}})
    for hh, ww in sizes:
        x = torch.randn(1, 16, hh, ww)
        if not dynamic:
            torch.onnx.export(_Rope().eval(), (x,), str(path), dynamo=True)
        got = _ort(path, x.numpy())
        want = _Rope()(x).numpy()
        assert got.shape == want.shape and float(np.abs(got - want).max()) < 1e-5, (hh, ww)


def test_rope_tables_rotate_each_axis_by_its_position() -> None:
    """Relative: q(r1, c1) . k(r2, c2) after RoPE depends only on (r1 - r2, c1 - c2)."""
    cos, sin = M.rope_tables(6, 6, 8, 2000.0)
    q, k = torch.randn(8), torch.randn(8)

    def dot(a: int, b: int) -> float:
        qa = M.apply_rope(q.expand(1, 1, 36, 8), cos[None, None], sin[None, None])[0, 0, a]
        kb = M.apply_rope(k.expand(1, 1, 36, 8), cos[None, None], sin[None, None])[0, 0, b]
        return float(qa @ kb)

    assert abs(dot(0 * 6 + 1, 2 * 6 + 3) - dot(3 * 6 + 2, 5 * 6 + 4)) < 1e-4  # both (2, 2) apart
    assert abs(dot(0, 7) - dot(0, 13)) > 1e-4  # different offsets differ


def test_inputs_of_the_other_task_or_a_missing_input_are_refused_with_the_fix() -> None:
    model = M.build("tiny").eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(LowlightError) as err:
        model(visible=x, infrared=x[:, :1])
    assert "under=" in err.value.what and "task='vif'" in (err.value.fix or "")
    with pytest.raises(LowlightError) as err:
        model(under=x)
    assert "over" in err.value.what
    with pytest.raises(ShapeError):
        model(under=x, over=x[:, :, :16])
    with pytest.raises(LowlightError) as err:
        model.set_task("mef", "vif-dark")
    assert "mef-exposure" in (err.value.fix or "")


def test_sizes_off_the_multiple_are_padded_and_cropped_back() -> None:
    model = M.build("tiny", task="vif").eval()
    with torch.no_grad():
        y = model(visible=torch.rand(1, 3, 30, 27), infrared=torch.rand(1, 1, 30, 27))
    assert y.shape == (1, 3, 30, 27) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_moe_balance_loss_is_one_when_balanced_and_grows_when_collapsed() -> None:
    moe = M.MoEGLU(8, 16, 4).train()
    moe.collect = True
    torch.nn.init.zeros_(moe.router.weight)  # equal probabilities; ties pick experts 0, 1
    moe(torch.randn(64, 8))
    even = float(moe.aux.pop())
    assert abs(even - 1.0) < 1e-6  # E * sum f_e P_e = 4 * (2 * 0.5 * 0.25)
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[5.0] * 8, [4.0] * 8, [0.0] * 8, [0.0] * 8]))
    moe(torch.rand(64, 8) + 0.5)
    assert float(moe.aux.pop()) > 1.5


def test_load_interface_teacher_students_and_regression(tiny_mmaif: Path) -> None:
    from lowlight.models import load

    teacher = load("mmaif", config="tiny", checkpoint=str(tiny_mmaif), variant="flow", task="mef")
    assert teacher.steps == 5 and teacher.student_steps is None and not teacher.training
    own2 = load("mmaif", config="tiny", checkpoint=str(tiny_mmaif), steps=2, student=False, task="vif")
    assert own2.steps == 2 and own2.student_steps is None and own2.task == "vif"
    reg = load("mmaif", config="tiny", checkpoint=str(tiny_mmaif), variant="regression", steps=1, task="mef")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, b = teacher(under=x, over=x), teacher(under=x, over=x)
        r = reg(under=x, over=x)
    assert torch.equal(a, b)  # the noise comes from the config's seed: deterministic
    assert r.shape == (1, 3, 32, 32) and not torch.allclose(r, a)


# -- distillation ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_teacher_distilled_to_one_step_beats_its_own_one_step_euler(tiny_mmaif: Path) -> None:
    """Reflow on the teacher's couplings, then one-step distillation, through the distill stage: the 1-step
    student lands nearer the teacher's 5-step output than the teacher run for 1 step does, from the same z_0."""
    from lowlight.compile.distill import distill
    from lowlight.models.train_mmaif import distill_setup, heldout_pairs
    from lowlight.models.train_loop import split_photos

    setup = distill_setup(str(tiny_mmaif), "tiny", batch=4, crop=32)
    assert setup["method"] == "reflow" and setup["teacher_steps"] == 5
    students = distill(setup["teacher"], 1, setup["batches"], iters_per_round=150, lr=1e-3, every=1000, keep=(2, 1),
                       method="reflow", teacher_steps=5, progress=lambda *_: None)
    teacher = setup["teacher"].model
    one = students[1].model.eval()
    err_s, err_t = [], []
    with torch.no_grad():
        for prompt, items in heldout_pairs(split_photos()[1][:2], 32).items():
            for x0n, x1n, _ in items:
                x0, x1 = torch.from_numpy(x0n)[None], torch.from_numpy(x1n)[None].expand(-1, 3, -1, -1)
                cond, p = teacher.condition(x0, x1), teacher.prompts[M.PROMPT_NAMES.index(prompt)][None]
                z = torch.from_numpy(teacher.draw_noise(teacher.latent_shape(1, 32, 32)))
                target = teacher.sample(z, cond, p, 5)
                err_s.append(float((one.sample(z, cond, p, 1) - target).square().mean()))
                err_t.append(float((teacher.sample(z, cond, p, 1) - target).square().mean()))
    s, t = float(np.mean(err_s)), float(np.mean(err_t))
    assert s < 0.7 * t, f"1-step student {s:.5f} vs the teacher's 1-step Euler {t:.5f} (MSE to its 5-step latent)"


@pytest.mark.slow
def test_distill_command_writes_the_student_beside_the_teacher(tiny_mmaif: Path, tmp_path: Path, cache_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`lowlight-compile distill TEACHER --model mmaif --steps 1`: reflow + one-step through the stage; `load(steps=1)`
    then finds the student beside the teacher; K >= the teacher's 5 steps is refused before any work."""
    import shutil

    from lowlight.compile.cli import main
    from lowlight.models import load

    teacher = tmp_path / "t.safetensors"
    shutil.copy(tiny_mmaif, teacher)
    out = tmp_path / "t_student1.safetensors"
    base = ["distill", str(teacher), "--model", "mmaif", "--config", "tiny", "--cache-dir", str(cache_dir), "--batch", "2",
            "--crop", "32", "--iters", "10"]
    assert main(base + ["--steps", "5", "--out", str(tmp_path / "no.safetensors")]) == 2
    assert "1 <= K < 5" in capsys.readouterr().err and not (tmp_path / "no.safetensors").exists()
    assert main(base + ["--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "reflow" in err and out.is_file()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["steps"] == 1 and record["method"].startswith("reflow")
    student = load("mmaif", config="tiny", checkpoint=str(teacher), steps=1)
    assert student.student_steps == 1
    # --init: the one-step stage continued from that student, in place; the record keeps the one it started from
    before = out.read_bytes()
    assert main(base + ["--steps", "1", "--init", str(out), "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    assert "continued from the given student" in capsys.readouterr().err and out.read_bytes() != before
    record = json.loads(out.with_suffix(".json").read_text())
    assert [r["round"] for r in record["rounds"]] == ["one-step (continued)"]
    assert record["init"]["record"]["rounds"][0]["round"] == "reflow" and len(record["init"]["sha256"]) == 64
    # refused before any work: not a 1-step student of this teacher, or not K = 1
    for extra, says in ((["--steps", "2", "--init", str(out)], "--init continues the one-step stage"),
                        (["--steps", "1", "--init", str(teacher)], "was not written by `lowlight-compile distill`"),
                        (["--steps", "1", "--init", str(tmp_path / "none.safetensors")], "no such file")):
        assert main(base + extra + ["--out", str(tmp_path / "no.safetensors")]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "no.safetensors").exists()
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"  # the same tensors, another file: another teacher by sha256
    save_file(load_file(str(teacher)), str(other), metadata={"note": "another teacher"})
    assert main(["distill", str(other)] + base[2:] + ["--steps", "1", "--init", str(out), "--out", str(tmp_path / "no.safetensors")]) == 2
    assert "distilled from another teacher" in capsys.readouterr().err


def test_regression_variant_compiles_without_distillation(tiny_mmaif: Path) -> None:
    """--variant regression is one pass: the plan has no distill stage whatever --steps is (flow at 1 step has one)."""
    from lowlight.compile.plan import family_plan
    from lowlight.models import get_family

    fam = get_family("mmaif")
    base = {"task": "mef", "prompt": "default", "unroll": "no"}
    assert family_plan(fam, "tiny", {**base, "variant": "regression", "steps": "1"}, SHAPE, str(tiny_mmaif)).prepare is None
    assert family_plan(fam, "tiny", {**base, "variant": "flow", "steps": "1"}, SHAPE, str(tiny_mmaif)).prepare is not None


# -- compiled ----------------------------------------------------------------------------------------


def _compile(ckpt: Path, out: Path, cache_dir: Path, **kw: object) -> dict:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    fam = {k: str(v) for k, v in kw.pop("family_options", {}).items()}  # type: ignore[union-attr]
    opts = dict(model="mmaif", config="tiny", checkpoint=str(ckpt), shape=SHAPE, out=str(out), precision="fp32",
                calib_frames=8, verify_frames=4, profile_runs=2, quiet=True, family_options=fam,
                cache_dir=str(cache_dir))
    opts.update(kw)
    compile_bundle(CompileOptions(**opts))  # type: ignore[arg-type]
    return json.loads((out / "manifest.json").read_text())


def _pair(task: str, seed: int = 3) -> dict[str, np.ndarray]:
    from lowlight.calibration.frames import load_frames
    from lowlight.calibration.fusion import fusion_pair
    from lowlight.models.train_loop import split_photos

    img = load_frames(split_photos()[1][0])[0][:32, :32]
    a, b, _ = fusion_pair(M.task_prompts(task)[0], img, np.random.default_rng(seed))
    (n0, _), (n1, _) = M.TASKS[task]
    return {n0: a[None], n1: b[None]}


@pytest.mark.slow
@pytest.mark.parametrize("unroll", ["no", "yes"])
def test_compiled_program_equals_pytorch_at_fp32(tiny_mmaif: Path, tmp_path: Path, cache_dir: Path, unroll: str) -> None:
    """The 1-step student (distilled by the compile's distill stage: none lies beside this teacher), as components
    looped by the program and unrolled into one graph: equal to the PyTorch student with the same host noise."""
    from lowlight.models import load
    from lowlight.runtime import load as load_bundle

    m = _compile(tiny_mmaif, tmp_path / "b", cache_dir, family_options={"steps": 1, "task": "vif", "unroll": unroll})
    assert m["verification"]["max_abs_error"] <= 1e-3
    assert set(m["components"]) == ({"sampler"} if unroll == "yes" else {"encoder", "step", "decoder"})
    ref_steps = m.get("distill", {}).get("student")
    model = load("mmaif", config="tiny", checkpoint=str(tiny_mmaif), steps=1, task="vif", **({"student": ref_steps} if ref_steps else {}))
    sess = load_bundle(tmp_path / "b", verbose=False)
    feed = _pair("vif")
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
    got = sess(**feed)
    assert got.shape == want.shape == (1, 3, 32, 32)
    assert float(np.abs(got - want).max()) <= 1e-3


@pytest.mark.slow
def test_moe_top2_is_one_lowlight_node_on_tensorrt_10_9_and_decomposed_elsewhere(tiny_mmaif: Path, tmp_path: Path,
                                                                                 cache_dir: Path) -> None:
    import onnx

    from lowlight.targets import get_target
    from lowlight.targets.tensorrt.op_support import find_problems

    layers = M.CONFIGS["tiny"].layers
    m = _compile(tiny_mmaif, tmp_path / "rtx", cache_dir, target="rtx-4090", precision="fp16", family_options={"variant": "regression"})
    g = onnx.load(str(tmp_path / "rtx" / "model.onnx"))
    moe = [n for n in g.graph.node if n.op_type == "MoETop2"]
    assert len(moe) == layers and all(n.domain == "lowlight" for n in moe)
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("plugin_namespace") == b"lowlight" for n in moe)
    assert not any(n.op_type == "TopK" for n in g.graph.node)  # the routing is inside the plugin
    assert m["verification"]["passed"]
    m = _compile(tiny_mmaif, tmp_path / "orin", cache_dir, target="jetson-orin", precision="fp16",
                 family_options={"steps": 1, "unroll": "yes"})  # the 1-step flow student, one graph
    g = onnx.load(str(tmp_path / "orin" / "model.onnx"))
    assert not any(n.domain == "lowlight" for n in g.graph.node)  # TensorRT 10.3: decomposed
    assert sum(n.op_type == "TopK" for n in g.graph.node) == layers
    assert find_problems(g, get_target("jetson-orin")) == []
    routing = m["verification"]["routing"]
    assert routing["tokens"] == 4 * layers * 8 * 8 and 0.0 <= routing["agreement"] <= 1.0  # 4 frames, 1 step, 8x8 tokens
    assert not any(n.op_type.startswith("Random") for n in g.graph.node)  # the noise is an input drawn on the host


@pytest.mark.slow
def test_int8_cpu_reports_routing_agreement_and_keeps_the_router_float(tiny_mmaif: Path, tmp_path: Path, cache_dir: Path) -> None:
    import onnx

    # one INT8 engine: the router's precision is the family's floor under every engine (auto would run NNCF too)
    m = _compile(tiny_mmaif, tmp_path / "i8", cache_dir, precision="int8", int8_engine="ort",
                 family_options={"variant": "regression", "task": "mef"})
    routing = m["verification"]["routing"]
    assert routing["decisions"] == 4 * M.CONFIGS["tiny"].layers and routing["tokens"] == 4 * M.CONFIGS["tiny"].layers * 64
    assert "routing agreement" in (tmp_path / "i8" / "verification.md").read_text()
    g = onnx.load(str(tmp_path / "i8" / "model.onnx"))
    producers = {o: n for n in g.graph.node for o in n.output}
    for topk in (n for n in g.graph.node if n.op_type == "TopK"):
        src = producers.get(topk.input[0])
        assert src is not None and src.op_type != "DequantizeLinear"  # the top-2 reads float logits


@pytest.mark.slow
def test_openvino_bundle_reports_routing_agreement(tiny_mmaif: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The routing probe reads an OpenVINO bundle's own IR (TopK indices as extra outputs), not only onnxruntime graphs."""
    pytest.importorskip("openvino")
    m = _compile(tiny_mmaif, tmp_path / "ov", cache_dir, backend="openvino", family_options={"variant": "regression", "task": "mef"})
    assert m["backend"] == "openvino"
    routing = m["verification"]["routing"]
    layers = M.CONFIGS["tiny"].layers
    assert routing["decisions"] == 4 * layers and routing["tokens"] == 4 * layers * 64  # 4 frames, 8x8 tokens
    assert routing["agreement"] >= 0.99  # FP32 on OpenVINO against FP32 onnxruntime graphs
    assert "routing agreement with FP32" in (tmp_path / "ov" / "verification.md").read_text()
    assert not any("routing agreement is measured on onnxruntime graphs only" in w for w in m.get("warnings", []))


def test_bad_compile_inputs_exit_2_with_the_fix(tiny_mmaif: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "lowlight.compile.cli", str(tiny_mmaif), "--model", "mmaif", "--config", "tiny",
            "--target", "cpu", "--precision", "fp32"]
    cases = [
        (["--shape", "1x3x30x32"], "multiple of 4"),
        (["--prompt", "sunny"], "--prompt"),
        (["--task", "vif", "--prompt", "mef-blur"], "vif-lowlight"),
    ]
    for i, (extra, say) in enumerate(cases):
        out = tmp_path / f"out{i}"
        run = subprocess.run(base + extra + ["--out", str(out)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and say in run.stderr and not out.exists(), (extra, run.stderr[-400:])


@pytest.mark.slow
def test_lowlight_run_fuses_npz_pairs(tiny_mmaif: Path, tmp_path: Path, cache_dir: Path) -> None:
    """`lowlight-run` takes a folder of .npz pairs (one array per input) and writes PNGs equal to the session's output."""
    from PIL import Image

    from lowlight.runtime import load as load_bundle
    from lowlight.runtime.cli import main

    _compile(tiny_mmaif, tmp_path / "b", cache_dir, family_options={"variant": "regression", "task": "vif"})
    frames = tmp_path / "pairs"
    frames.mkdir()
    feed = _pair("vif")
    np.savez(frames / "scene_01.npz", **{k: v[0] for k, v in feed.items()})
    out = tmp_path / "out"
    assert main([str(tmp_path / "b"), "--input", str(frames), "--output", str(out), "--quiet"]) in (0, None)
    png = np.asarray(Image.open(out / "scene_01.png"), dtype=np.float32) / 255.0
    want = load_bundle(tmp_path / "b", verbose=False)(**feed)[0].transpose(1, 2, 0)
    assert png.shape == (32, 32, 3) and float(np.abs(png - want).max()) <= 1.0 / 255 + 1e-6
    assert main([str(tmp_path / "b"), "--input", str(tmp_path / "x.png"), "--output", str(tmp_path / "o2"), "--quiet"]) == 2
    assert not (tmp_path / "o2").exists()
