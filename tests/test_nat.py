"""NAT on GLARE: the model (paper counts, rounds, entropy masking), its distillation and its compiled forms.

The tiny model (conftest `tiny_nat`) is trained for a few steps only: these tests check what the
model, the distill stage and the compiler do, not image quality (the shipped `small` weights'
JSON and benchmarks/nat.py report that).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lowlight.core.errors import LowlightError, ShapeError
from lowlight.models import nat as N

SHAPE = "1x3x32x32"  # tiny: f = 4 -> 8x8 = 64 tokens

#: ONNX ops that would make a compiled graph random or need a run-time matrix inverse
FORBIDDEN = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Inverse", "Det"}


# -- the model ---------------------------------------------------------------------------------------


def test_paper_config_counts() -> None:
    """GLARE's sizes (LOL.yml: 8192 x 3 codebook, ch 128, mult 1-2-4, f = 4) and our NAT choice (8 x d512, 8 heads,
    FFN 2048: 33.6M, the notes' estimate of about 34M within 5 %)."""
    with torch.device("meta"):
        model = N.build("paper")
    counts = N.count_parameters(model)
    cfg = N.CONFIGS["paper"]
    assert (cfg.codes, cfg.embed_dim, cfg.ch, cfg.ch_mult, cfg.f, cfg.rounds) == (8192, 3, 128, (1, 2, 4), 4, 4)
    assert abs(counts["nat"] / 34e6 - 1) < 0.05, counts
    assert counts["codebook"] == 8192 * 3
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert 20e6 < counts["vq_encoder"] + counts["decoder"] < 60e6, counts  # GLARE's VQGAN is about 55M with attention
    small = N.CONFIGS["small"]
    with torch.device("meta"):
        assert abs(N.count_parameters(N.build("small"))["nat"] / 0.893e6 - 1) < 0.05  # the notes' NAT-small, measured there


def test_forward_pads_any_size_and_crops_back() -> None:
    torch.manual_seed(0)
    model = N.build("tiny").eval()
    with torch.no_grad():
        out, tokens = model(torch.rand(2, 3, 30, 34), return_tokens=True)
    assert out.shape == (2, 3, 30, 34) and tokens.shape == (2, 8 * 9) and tokens.dtype == torch.int64
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_rounds_follow_the_entropy_rule() -> None:
    """Round 1 masks the tokens whose round-0 entropy exceeds tau; a masked token takes the NAT's argmax, an
    unmasked one keeps its code; the next mask is the NAT's own entropy above tau, on every position."""
    torch.manual_seed(0)
    model = N.build("tiny").eval()
    z = torch.randn(1, 3, 8, 8) * 0.05
    with torch.no_grad():
        idx0, logits0 = model.retrieve(z)
        model.tau.fill_(float(model.entropy(logits0).median()))
        r1 = model.refine(z, 1)
        r2 = model.refine(z, 2)
        m0 = model.entropy(logits0) > model.tau
        logits = model.nat(idx0, m0, model.nat.context(z))
    assert torch.equal(r1["masks"][0], m0) and 0 < int(m0.sum()) < m0.numel()
    assert torch.equal(r1["tokens"], torch.where(m0, logits.argmax(-1), idx0))
    assert torch.equal(r2["masks"][1], model.entropy(logits) > model.tau)
    with torch.no_grad():
        assert torch.equal(model.refine(z, 0)["tokens"], idx0)  # steps=0: plain retrieval


def test_bad_shapes_say_the_multiple_and_the_token_limit() -> None:
    fam = N.NATFamily()
    with pytest.raises(ShapeError, match="multiple of 4") as e:
        fam.inputs("1x3x30x32", "tiny")
    assert "1x3x32x32" in e.value.fix
    with pytest.raises(ShapeError, match="4096") as e:
        fam.inputs("1x3x512x256", "tiny")  # 128 x 64 = 8192 tokens
    assert "256x256" in e.value.fix and "tile" in e.value.fix
    assert fam.inputs("1x3x256x256", "tiny")[0].shape == (1, 3, 256, 256)


def test_steps_beyond_the_teacher_are_refused(tiny_nat: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowlight.compile.cli import main
    from lowlight.models import load

    with pytest.raises(LowlightError):
        load("nat", config="tiny", checkpoint=str(tiny_nat), steps=5)
    with pytest.raises(SystemExit) as e:  # argparse: the choices are the flag's
        main([str(tiny_nat), "--model", "nat", "--config", "tiny", "--steps", "6", "--out", "/nonexistent/x"])
    assert e.value.code == 2 and "choose from '4', '3', '2', '1', '0'" in capsys.readouterr().err


def test_load_steps(tiny_nat: Path) -> None:
    """steps=4 the teacher, 0 plain retrieval, 1..3 truncated when no student lies beside the teacher."""
    from lowlight.models import load

    for k in (4, 3, 2, 1, 0):
        m = load("nat", config="tiny", checkpoint=str(tiny_nat), steps=k)
        assert isinstance(m, N.NATGlare) and m.rounds == k and m.student_steps is None and not m.training
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = load("nat", config="tiny", checkpoint=str(tiny_nat), steps=2)(rgb=x)
    assert out.shape == x.shape


def test_compile_plan_distills_only_for_student_round_counts(tiny_nat: Path) -> None:
    """--steps 0 (plain retrieval) and 4 (the teacher) compile as they are; 1..3 need a student (the distill stage)."""
    from lowlight.compile.plan import family_plan

    fam = N.NATFamily()
    for k, distills in ((0, False), (4, False), (2, True), (3, True)):
        plan = family_plan(fam, "tiny", {"steps": str(k)}, SHAPE, str(tiny_nat))
        assert (plan.prepare is not None) == distills, k


# -- export ---------------------------------------------------------------------------------------------


class _Masks(torch.nn.Module):
    """rgb -> (each round's mask as int64, the final tokens): what the entropy rule decided, for comparison."""

    def __init__(self, model: N.NATGlare, rounds: int) -> None:
        super().__init__()
        self.model, self.rounds = model, rounds

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = self.model.ll_encoder(rgb)
        r = self.model.refine(z, self.rounds)
        return torch.stack(r["masks"]).to(torch.int64), r["tokens"]


def _export(module: torch.nn.Module, feed: dict[str, np.ndarray], outputs: list[str], path: Path) -> "object":
    import onnx

    from lowlight.compile.export import export_onnx

    export_onnx(module, feed, outputs, path)
    return onnx.load(str(path))


def test_entropy_masks_equal_in_onnxruntime(tiny_nat: Path, tmp_path: Path) -> None:
    """The exported rounds mask exactly the tokens PyTorch masks, round by round, and end on the same tokens."""
    from lowlight.core.onnx_graph import ort_session
    from lowlight.models import load

    model = load("nat", config="tiny", checkpoint=str(tiny_nat), steps=4)
    rng = np.random.default_rng(0)
    feed = {"rgb": rng.uniform(0, 0.2, (2, 3, 32, 32)).astype(np.float32)}
    _export(_Masks(model, 4), feed, ["masks", "tokens"], tmp_path / "m.onnx")
    sess = ort_session(tmp_path / "m.onnx", threads=1)
    masked = 0
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(0, 0.25, (2, 3, 32, 32)).astype(np.float32)
        got_m, got_t = sess.run(None, {"rgb": x})
        with torch.no_grad():
            want_m, want_t = _Masks(model, 4)(torch.from_numpy(x))
        assert np.array_equal(got_m, want_m.numpy()) and np.array_equal(got_t, want_t.numpy())
        masked += int(want_m.sum())
    assert masked > 0  # the rule masked something to compare


def test_each_part_exports_and_no_graph_has_random_inverse_or_large_topk(tiny_nat: Path, tmp_path: Path) -> None:
    """The low-light encoder, one NAT round and the AFT decoder export on their own and match PyTorch; the whole
    model at 256x256 (4096 tokens, more than TensorRT's TopK limit of 3840) has no TopK, random or inverse op."""
    import onnx

    from lowlight.core.onnx_graph import ort_session
    from lowlight.models import load

    model = load("nat", config="tiny", checkpoint=str(tiny_nat), steps=4)
    rng = np.random.default_rng(1)

    class Round(torch.nn.Module):
        def forward(self, idx: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return model.nat(idx, mask, model.nat.context(z))

    class Dec(torch.nn.Module):
        def forward(self, idx: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
            return model.decode(idx, [f0, f1, f2], 8, 8)

    class Enc(torch.nn.Module):
        def forward(self, rgb: torch.Tensor) -> torch.Tensor:
            return model.ll_encoder(rgb)[0]

    x = rng.uniform(0, 0.3, (1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        z, feats = model.ll_encoder(torch.from_numpy(x))
    parts = {
        "encoder": (Enc(), {"rgb": x}),
        "round": (Round(), {"idx": rng.integers(0, 32, (1, 64)).astype(np.int64), "mask": rng.random((1, 64)) < 0.5, "z": z.numpy()}),
        "decoder": (Dec(), {"idx": rng.integers(0, 32, (1, 64)).astype(np.int64), **{f"f{i}": f.numpy() for i, f in enumerate(feats)}}),
    }
    for name, (mod, feed) in parts.items():
        path = tmp_path / f"{name}.onnx"
        _export(mod, feed, ["out"], path)
        got = ort_session(path, threads=1).run(None, feed)[0]
        with torch.no_grad():
            want = mod(*[torch.from_numpy(np.asarray(v)) for v in feed.values()]).numpy()
        assert np.abs(got - want).max() < 1e-4, name
    big = _export(N._WithTokens(model), {"rgb": rng.uniform(0, 0.3, (1, 3, 256, 256)).astype(np.float32)},
                  ["enhanced", "tokens"], tmp_path / "big.onnx")
    ops = {n.op_type for n in big.graph.node}  # type: ignore[attr-defined]
    assert "TopK" not in ops and not ops & FORBIDDEN, sorted(ops)
    assert {"ArgMax", "ArgMin", "Where"} <= ops
    assert onnx is not None


# -- compiled ----------------------------------------------------------------------------------------


def _compile(ckpt: Path, out: Path, cache_dir: Path, **kw: object) -> dict:
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    fam = {k: str(v) for k, v in kw.pop("family_options", {"steps": 4}).items()}  # type: ignore[union-attr]
    opts = dict(model="nat", config="tiny", checkpoint=str(ckpt), shape=SHAPE, out=str(out), precision="fp32",
                calib_frames=8, verify_frames=4, profile_runs=2, quiet=True, family_options=fam, cache_dir=str(cache_dir))
    opts.update(kw)
    compile_bundle(CompileOptions(**opts))  # type: ignore[arg-type]
    return json.loads((out / "manifest.json").read_text())


def _graph_ops(bundle: Path) -> set[str]:
    import onnx

    return {n.op_type for p in bundle.glob("*.onnx") for n in onnx.load(str(p), load_external_data=False).graph.node}


@pytest.mark.slow
def test_compiled_fp32_equals_pytorch_with_tokens(tiny_nat: Path, tmp_path: Path, cache_dir: Path) -> None:
    """FP32 cpu bundle: enhanced within 1e-5 of PyTorch, the same tokens (agreement 1.0 in the verification), and
    the runtime returns both outputs."""
    from lowlight.models import load
    from lowlight.runtime import load as load_bundle

    m = _compile(tiny_nat, tmp_path / "b", cache_dir)
    tok = m["verification"]["outputs"]["tokens"]
    assert tok["agreement_mean"] == 1.0 and m["verification"]["max_abs_error"] < 1e-5
    assert not _graph_ops(tmp_path / "b") & FORBIDDEN
    sess = load_bundle(tmp_path / "b", verbose=False)
    x = np.random.default_rng(2).uniform(0, 0.3, (1, 3, 32, 32)).astype(np.float32)
    outs = sess.run(rgb=x)
    with torch.no_grad():
        want, tokens = load("nat", config="tiny", checkpoint=str(tiny_nat), steps=4)(torch.from_numpy(x), return_tokens=True)
    assert np.abs(outs["enhanced"] - want.numpy()).max() < 1e-5 and np.abs(sess(rgb=x) - outs["enhanced"]).max() == 0
    assert outs["tokens"].dtype == np.int64 and np.array_equal(outs["tokens"], tokens.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("target,precision", [("cpu", "int8"), ("jetson-orin", "fp16")])
def test_reduced_precision_reports_token_agreement(tiny_nat: Path, tmp_path: Path, cache_dir: Path, target: str, precision: str) -> None:
    """INT8 cpu and FP16 jetson-orin: the verification reports token agreement with FP32; the retrieval, softmax,
    entropy and arg-min/max nodes stay float (no QuantizeLinear feeds them)."""
    import onnx

    m = _compile(tiny_nat, tmp_path / "b", cache_dir, target=target, precision=precision)
    tok = m["verification"]["outputs"]["tokens"]
    assert 0.5 <= tok["agreement_mean"] <= 1.0 and tok["agreement_worst"] <= tok["agreement_mean"]
    graph = onnx.load(str(next((tmp_path / "b").glob("*.onnx"))), load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type in ("ArgMax", "ArgMin", "Softmax", "LogSoftmax"):
            src = producers.get(n.input[0])
            assert src is None or src.op_type != "DequantizeLinear", f"{n.name} reads a dequantized tensor"
    assert not {n.op_type for n in graph.node} & FORBIDDEN


# -- distillation ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_teacher_distilled_to_one_round_beats_its_truncation(tiny_nat: Path) -> None:
    """Token distillation (KL to the teacher's final distribution + GT codes + image loss): the 1-round student
    lands closer to the 4-round teacher than the teacher truncated to 1 round, on held-out photos."""
    from lowlight.compile.distill import distill
    from lowlight.models.train_loop import split_photos
    from lowlight.models.train_nat import distill_setup, heldout_pairs

    setup = distill_setup(str(tiny_nat), "tiny", batch=4, crop=32)
    assert setup["method"] == "tokens" and setup["teacher_steps"] == 4
    students = distill(setup["teacher"], 1, setup["batches"], iters_per_round=120, lr=2e-3, every=1000, keep=(1,),
                       method="tokens", teacher_steps=4, progress=lambda *_: None)
    teacher = setup["teacher"].model
    one = students[1].model.eval()
    kl_s, kl_t, agree_s, agree_t = [], [], [], []
    with torch.no_grad():
        for dark, _ in heldout_pairs(split_photos()[1][:3], 32):
            z, _ = teacher.ll_encoder(torch.from_numpy(dark)[None])
            want = teacher.refine(z, 4)
            p = torch.log_softmax(want["logits"], -1)
            for r, kl, ag in ((one.refine(z, 1), kl_s, agree_s), (teacher.refine(z, 1), kl_t, agree_t)):
                q = torch.log_softmax(r["logits"], -1)
                kl.append(float((p.exp() * (p - q)).sum(-1).mean()))
                ag.append(float((r["tokens"] == want["tokens"]).float().mean()))
    assert np.mean(kl_s) < 0.8 * np.mean(kl_t), (kl_s, kl_t)
    assert np.mean(agree_s) >= np.mean(agree_t), (agree_s, agree_t)


@pytest.mark.slow
def test_distill_command_writes_the_student_beside_the_teacher(tiny_nat: Path, tmp_path: Path, cache_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`lowlight-compile distill TEACHER --model nat --steps 2`; `load(steps=2)` then finds the student;
    --steps 4 (the teacher's rounds) is refused before any work."""
    import shutil

    from lowlight.compile.cli import main
    from lowlight.models import load

    teacher = tmp_path / "t.safetensors"
    shutil.copy(tiny_nat, teacher)
    shutil.copy(tiny_nat.with_suffix(".json"), teacher.with_suffix(".json"))
    out = tmp_path / "t_student2.safetensors"
    base = ["distill", str(teacher), "--model", "nat", "--config", "tiny", "--cache-dir", str(cache_dir), "--batch", "2",
            "--crop", "32", "--iters", "5"]
    assert main(base + ["--steps", "4", "--out", str(tmp_path / "no.safetensors")]) == 2
    assert "1 <= K < 4" in capsys.readouterr().err and not (tmp_path / "no.safetensors").exists()
    assert main(base + ["--steps", "2", "--out", str(out)]) == 0
    assert "token" in capsys.readouterr().err and out.is_file()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["steps"] == 2 and record["method"].startswith("token")
    student = load("nat", config="tiny", checkpoint=str(teacher), steps=2)
    assert student.student_steps == 2 and student.rounds == 2
    truncated = load("nat", config="tiny", checkpoint=str(teacher), steps=2, student=False)
    assert truncated.student_steps is None
    diff = [float((a - b).abs().max()) for a, b in zip(student.nat.parameters(), truncated.nat.parameters())]
    assert max(diff) > 0
