"""DarkDiff (models/darkdiff.py): paper parameter counts, shapes, the sampler, the noise contract,
export of each component, bad input, and the program equal to the PyTorch module."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lowlight.core.errors import CheckpointError, LowlightError, ShapeError
from lowlight.core.program import check_program, count_calls, run_program
from lowlight.models.darkdiff import (
    CONFIGS,
    DarkDiff,
    DarkDiffFamily,
    UNet,
    alpha_sigma,
    build,
    count_parameters,
    ddim_step,
    parameter_counts,
    predict_x0,
    time_grid,
)

FAM = DarkDiffFamily()
SHAPE = "1x4x32x32"  # tiny: packed sides multiple of 32 -> latent 8x8

#: Stable Diffusion 2.1 component sizes (diffusers configs instantiated without weights) and
#: the paper's Tab. A1 residual convs; see the docstring of models/darkdiff.py.
PAPER = {"vae_encoder": 34_163_664, "vae_decoder": 49_490_199, "residual_convs": 6_194_944,
         "unet": 865_910_724, "context": 351_662_080}
#: Our U-Net differs from SD's by design: region attention's K/V read the context width C_l
#: instead of 1024 (and the mid block's too), plus a LayerNorm on the context tokens:
#: +93,440 parameters (+0.011 %). Tolerance: 0.1 %. Every other component is exact.
UNET_TOLERANCE = 1e-3


def _tiny(seed: int = 0, steps: int = 4) -> DarkDiff:
    torch.manual_seed(seed)
    return build("tiny", steps).eval()


def _dark_raw(shape: tuple[int, ...], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.0, 0.006, shape).astype(np.float32)
    gain = np.tile(np.array([[2.1, 1.0, 1.0, 1.7]], np.float32) * 180.0, (shape[0], 1))
    return torch.from_numpy(raw), torch.from_numpy(gain)


def _torch_call(comps):  # type: ignore[no-untyped-def]
    from lowlight.compile.plan import PlanComponent, torch_call

    return torch_call([PlanComponent(c.name, c.inputs, c.outputs, c.output_layouts, module=c.module) for c in comps])


# -- sizes ---------------------------------------------------------------------------------------

def test_paper_config_matches_stable_diffusion_2_1_component_counts() -> None:
    with torch.device("meta"):  # 1.3 B parameters: no memory, no init time
        paper = DarkDiff(CONFIGS["paper"])
        sd_unet = UNet(dataclasses.replace(CONFIGS["paper"], region_attention=False))
    counts = parameter_counts(paper)
    for k in ("vae_encoder", "vae_decoder", "residual_convs", "context"):
        assert counts[k] == PAPER[k], (k, counts[k], PAPER[k])
    assert count_parameters(sd_unet) == PAPER["unet"]  # SD-2.1's U-Net, text cross-attention everywhere: exact
    assert abs(counts["unet"] - PAPER["unet"]) / PAPER["unet"] < UNET_TOLERANCE
    assert counts["unet"] - PAPER["unet"] == 93_440
    assert abs(counts["total"] / 1.307e9 - 1) < 1e-3  # notes: ~1.307 B, ~5.2 GB in fp32
    assert CONFIGS["paper"].f == 8 and CONFIGS["paper"].multiple == 256


def test_small_and_tiny_fit_their_budgets() -> None:
    with torch.device("meta"):
        small, tiny = parameter_counts(DarkDiff(CONFIGS["small"])), parameter_counts(DarkDiff(CONFIGS["tiny"]))
    assert small["total"] <= 1_600_000
    # teacher + students for K = 4, 2, 1 (U-Net + context), fp32
    assert (small["total"] + 3 * (small["unet"] + small["context"])) * 4 < 25e6
    assert tiny["total"] < 300_000
    assert CONFIGS["small"].f == 4 and CONFIGS["small"].multiple == 64  # 128^2 Bayer -> 64^2 packed -> 16^2 latent


# -- sampler ---------------------------------------------------------------------------------------

def test_ddim_with_the_exact_velocity_lands_on_x0() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    grid = time_grid(8)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and set(time_grid(4)) <= set(grid)  # nested halving grids
    for t in (1.0, 0.7, 0.3, 0.05):
        a, s = alpha_sigma(torch.tensor(t))
        assert abs(float(a**2 + s**2) - 1) < 1e-6
        z = a * x0 + s * eps
        v = a * eps - s * x0
        assert torch.allclose(predict_x0(z, v, t), x0, atol=1e-5)
        assert torch.allclose(ddim_step(z, v, t, 0.0), x0, atol=1e-5)  # t_next = 0 returns x0
        tn = t / 2  # an intermediate step: alpha' x0_hat + sigma' eps_hat, the same x0 as predict_x0
        an, sn = alpha_sigma(torch.tensor(tn))
        assert torch.allclose(ddim_step(z, v, t, tn), an * predict_x0(z, v, t) + sn * eps, atol=1e-5)
    # per-sample times [B]
    tb = torch.tensor([0.9, 0.4])
    a, s = alpha_sigma(tb.reshape(-1, 1, 1, 1))
    assert torch.allclose(ddim_step(a * x0 + s * eps, a * eps - s * x0, tb, torch.zeros(2)), x0, atol=1e-5)
    a1, _ = alpha_sigma(torch.tensor(1.0))
    assert abs(float(a1)) < 1e-6  # t = 1 is pure noise


# -- the module ------------------------------------------------------------------------------------

def test_tiny_forward_shapes_and_range() -> None:
    m = _tiny(steps=3)
    raw, gain = _dark_raw((2, 4, 32, 64))
    with torch.no_grad():
        y = m(raw, gain)
        m.student_steps = 3  # a student: one U-Net pass per step, no null condition
        ys = m(raw, gain)
    for out in (y, ys):
        assert out.shape == (2, 3, 32, 64) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((y - ys).abs().max()) > 1e-4  # guidance changes the sample
    cond = m.condition(raw, gain)
    assert cond["ctx_null"] is None and len(cond["skips"]) == 3 and len(cond["ctx"]) == 3
    assert cond["zc"].shape == (2, 4, 8, 16)


def test_noise_is_drawn_from_the_seed_with_numpy() -> None:
    m = _tiny()
    raw, gain = _dark_raw((1, 4, 32, 32))
    shape = m.latent_shape(tuple(raw.shape))
    rng = np.random.default_rng(0)
    z_t = rng.standard_normal(shape, dtype=np.float32)
    z_null = rng.standard_normal(shape, dtype=np.float32)  # drawn after z_T (teacher's null condition)
    drawn = m.draw_noise(shape)
    assert np.array_equal(drawn[0], z_t) and np.array_equal(drawn[1], z_null)
    with torch.no_grad():
        assert torch.equal(m(raw, gain), m(raw, gain, torch.from_numpy(z_t)))
        assert not torch.equal(m(raw, gain), m(raw, gain, torch.from_numpy(z_null)))
    # the program draws the same numbers in the same order
    inputs = FAM.inputs(SHAPE, "tiny", steps="4")
    comps = FAM.components(m, inputs, "tiny", steps="4")
    prog = FAM.program(comps, inputs, "tiny", steps="4")
    call = _torch_call(comps)
    seen: dict[str, Any] = {}

    def spy(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.setdefault(name, feeds)
        return call(name, feeds)

    run_program(prog, spy, {"raw": raw.numpy(), "gain": gain.numpy()}, ["srgb"], FAM.constants("tiny", steps="4"))
    assert np.array_equal(seen["step"]["z"], z_t) and np.array_equal(seen["null_context"]["z_null"], z_null)


@pytest.mark.parametrize("student", [False, True])
def test_program_over_the_components_equals_forward(student: bool) -> None:
    k = 2 if student else 4
    m = _tiny(steps=k)
    if student:
        m.student_steps = k
    raw, gain = _dark_raw((1, 4, 32, 32))
    opts = {"steps": str(k), "unroll": "no"}
    inputs = FAM.inputs(SHAPE, "tiny", **opts)
    comps = FAM.components(m, inputs, "tiny", **opts)
    prog = FAM.program(comps, inputs, "tiny", **opts)
    consts = FAM.constants("tiny", **opts)
    manifest_comps = {c.name: {"inputs": [t.to_manifest() for t in c.inputs], "outputs": [{"name": o} for o in c.outputs]} for c in comps}
    check_program(prog, manifest_comps, ["raw", "gain"], ["srgb"], consts)
    assert count_calls(prog) == {"encoder": 1, "step": k, "decoder": 1, **({} if student else {"null_context": 1})}
    assert [s["op"] for s in prog["steps"]] == (["noise", "call"] if student else ["noise", "noise", "call", "call"]) + ["loop", "call"]
    assert [t.name for t in comps[0].inputs] == ["raw", "gain"]  # the encoder takes the program's inputs only
    y_prog = run_program(prog, _torch_call(comps), {"raw": raw.numpy(), "gain": gain.numpy()}, ["srgb"], consts)["srgb"]
    with torch.no_grad():
        y = m(raw, gain).numpy()
    assert y_prog.shape == y.shape == (1, 3, 32, 32)
    assert np.abs(y_prog - y).max() < 1e-4
    # the unrolled form: one graph, the same sample
    opts["unroll"] = "yes"
    comps = FAM.components(m, inputs, "tiny", **opts)
    prog = FAM.program(comps, inputs, "tiny", **opts)
    assert [c.name for c in comps] == ["sampler"] and prog["unrolled"] is True
    assert [s["op"] for s in prog["steps"]] == ["noise"] * (1 if student else 2) + ["call"]
    y_unrolled = run_program(prog, _torch_call(comps), {"raw": raw.numpy(), "gain": gain.numpy()}, ["srgb"])["srgb"]
    assert np.abs(y_unrolled - y).max() < 1e-4


# -- export ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each component exported with the repo's exporter, with its eager feeds and outputs: the
    student's encoder, step and decoder (the compiled form) and the teacher's null_context.
    (The teacher's step is the same U-Net twice plus the elementwise CFG combine; exporting it
    too would double the slowest export.)"""
    from lowlight.compile.export import export_onnx

    m = _tiny()
    raw, gain = _dark_raw((1, 4, 32, 32))
    inputs = FAM.inputs(SHAPE, "tiny", steps="4")
    seen: dict[tuple[bool, str], Any] = {}
    chosen: dict[str, Any] = {}
    for student in (False, True):
        m.student_steps = 4 if student else None
        comps = FAM.components(m, inputs, "tiny", steps="4")
        call = _torch_call(comps)

        def spy(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = call(name, feeds)
            seen.setdefault((student, name), (feeds, out))
            return out

        run_program(FAM.program(comps, inputs, "tiny", steps="4"), spy, {"raw": raw.numpy(), "gain": gain.numpy()}, ["srgb"],
                    FAM.constants("tiny", steps="4"))
        chosen.update({c.name: (student, c) for c in comps if student or c.name == "null_context"})
    d = tmp_path_factory.mktemp("darkdiff-onnx")
    out = {}
    for name, (student, c) in chosen.items():
        m.student_steps = 4 if student else None  # the graphs read the flag when traced
        feeds, ref = seen[(student, name)]
        files = export_onnx(c.module, {t.name: feeds[t.name] for t in c.inputs}, c.outputs, d / f"{name}.onnx")
        out[name] = (files[0], c, feeds, ref)
    return out


@pytest.mark.parametrize("name", ["encoder", "null_context", "step", "decoder"])
def test_each_component_exports_and_matches_eager_in_onnxruntime(name: str, exported: dict[str, tuple]) -> None:
    import onnx

    from lowlight.core.onnx_graph import ort_session
    from lowlight.targets import get_target
    from lowlight.targets.tensorrt.op_support import find_problems

    path, comp, feeds, ref = exported[name]
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Gelu", "Attention"}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # no custom ops
    assert [o.name for o in model.graph.output] == comp.outputs
    got = ort_session(str(path), threads=2).run(None, {t.name: feeds[t.name] for t in comp.inputs})
    for o, g in zip(comp.outputs, got):
        assert g.shape == ref[o].shape
        # measured: encoder ~8e-6 (context features of magnitude ~10), step ~6e-7, decoder ~1e-6
        assert np.abs(g - ref[o]).max() <= 1e-4 * max(1.0, float(np.abs(ref[o]).max())), o
    assert find_problems(model, get_target("jetson-orin")) == []  # every op in TensorRT 10.3's parser table


def test_keep_float_covers_the_first_encoder_conv(exported: dict[str, tuple]) -> None:
    """The raw x gain product is elementwise (never quantized); boundary_convs keeps the first conv after it float."""
    import onnx

    from lowlight.compile.graph import keep_float_nodes
    from lowlight.core.onnx_graph import NODE_MODULES_KEY

    model = onnx.load(str(exported["encoder"][0]))
    modules = json.loads({p.key: p.value for p in model.metadata_props}[NODE_MODULES_KEY])
    kept = {modules.get(n, {}).get("module") for n in keep_float_nodes(model, FAM.keep_float, None)}
    assert "model.vae.encoder.conv_in" in kept
    dec = onnx.load(str(exported["decoder"][0]))
    dmods = json.loads({p.key: p.value for p in dec.metadata_props}[NODE_MODULES_KEY])
    assert "model.vae.decoder.conv_out" in {dmods.get(n, {}).get("module") for n in keep_float_nodes(dec, FAM.keep_float, None)}


# -- the family ------------------------------------------------------------------------------------

def test_family_declares_inputs_components_and_constants() -> None:
    from lowlight.models.family import get_family

    fam = get_family("darkdiff")
    assert isinstance(fam, DarkDiffFamily) and fam.default_config == "small"
    assert fam.weights == {"small": "darkdiff_small.safetensors"}
    assert fam.trainer == "lowlight.models.train_darkdiff:train"
    assert fam.resolve_options({}) == {"steps": "4", "unroll": "no"}
    raw, gain = fam.inputs("2x4x64x128", "small")
    assert (raw.name, raw.shape, raw.layout) == ("raw", (2, 4, 64, 128), "RGGB")
    assert (gain.name, gain.shape, gain.layout, gain.range) == ("gain", (2, 4), "BC", (0.0, 1e4))
    consts = fam.constants("small", steps="4")
    assert consts["t"].ravel().tolist() == [1.0, 0.75, 0.5, 0.25] and consts["t_next"].ravel().tolist() == [0.75, 0.5, 0.25, 0.0]
    assert consts["t"].dtype == np.float32 and consts["t"].shape == (4, 1)
    with torch.device("meta"):
        comps = fam.components(build("small"), [raw, gain], "small", steps="4")
    assert [c.name for c in comps] == ["encoder", "null_context", "step", "decoder"]  # a teacher: CFG needs ctx_null
    assert comps[3].outputs == ["srgb"] and comps[3].output_layouts["srgb"] == "BCHW"
    step = [t.name for t in comps[2].inputs]
    assert step[:3] == ["z", "t", "t_next"] and comps[2].inputs[0].shape == (2, 4, 16, 32)
    assert step[3:] == [f"ctx_{i}" for i in range(4)] + [f"ctx_null_{i}" for i in range(4)]


def test_model_file_never_imports_its_trainer() -> None:
    import lowlight.models.darkdiff as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any("train" in n for n in names)


def test_missing_reference_weights_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import lowlight.models.family as family
    from lowlight.models import load

    monkeypatch.setattr(family, "WEIGHTS_DIR", tmp_path)  # a checkout without the shipped weights
    with pytest.raises(CheckpointError) as e:
        load("darkdiff", config="small")
    assert "zoo train darkdiff" in (e.value.fix or "")


def test_shipped_students_load_for_their_k_and_the_teacher_for_others() -> None:
    from lowlight.models import load

    for k in (4, 2, 1):
        assert load("darkdiff", config="small", steps=k).student_steps == k
    assert load("darkdiff", config="small", steps=4, student=False).student_steps is None  # the teacher's DDIM at 4
    assert load("darkdiff", config="small", steps=8).student_steps is None  # no 8-step student shipped
    assert load("darkdiff", config="small").steps == 50


def test_make_inputs_builds_raw_and_gain_from_photos() -> None:
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.calibration.frames import load_frames

    frames = load_frames(SAMPLES_DIR, limit=4)
    feeds = FAM.make_inputs(frames, "2x4x32x64", "tiny", seed=0)
    assert len(feeds) == 2
    for f in feeds:
        assert set(f) == {"raw", "gain"} and f["raw"].shape == (2, 4, 32, 64) and f["gain"].shape == (2, 4)
        assert f["raw"].dtype == np.float32 and f["gain"].dtype == np.float32
        assert 0.0 <= f["raw"].min() and f["raw"].max() <= 1.0 and f["raw"].mean() < 0.05  # dark
        assert (f["gain"] > 0).all()
    again = FAM.make_inputs(frames, "2x4x32x64", "tiny", seed=0)
    assert np.array_equal(again[0]["raw"], feeds[0]["raw"])  # seeded


# -- bad input -------------------------------------------------------------------------------------

def test_bad_inputs_say_what_and_how_to_fix() -> None:
    m = _tiny()
    raw, gain = _dark_raw((1, 4, 32, 32))
    cases = [
        (lambda: m(raw[:, :3], gain), ShapeError, "planes"),
        (lambda: m(raw[0], gain), ShapeError, "[B,4,h,w]"),
        (lambda: m(raw, gain[:, :3]), ShapeError, "gain"),
        (lambda: m(raw, gain[0]), ShapeError, "gain"),
        (lambda: m(raw, -gain), LowlightError, "positive"),
        (lambda: m(raw, gain * 0), LowlightError, "positive"),
        (lambda: m(raw, gain * float("nan")), LowlightError, "positive"),
        (lambda: m(_dark_raw((1, 4, 48, 32))[0], gain), ShapeError, "multiples of 32"),
        (lambda: m(raw, gain, torch.zeros(1, 4, 4, 4)), ShapeError, "noise"),
        (lambda: FAM.inputs("1x3x64x64", "tiny"), ShapeError, "planes"),
        (lambda: FAM.inputs("1x4x64x100", "small"), ShapeError, "multiples of 64"),
        (lambda: FAM.inputs("1x4", "tiny"), ShapeError, "[B,4,h,w]"),
        (lambda: FAM.inputs("1x4xax64", "tiny"), ShapeError, "integers"),
        (lambda: time_grid(0), LowlightError, "step"),
    ]
    for fn, err, word in cases:
        with pytest.raises(err) as e:
            with torch.no_grad():
                fn()
        assert word in e.value.what and e.value.fix, (word, e.value.what)
    with pytest.raises(ShapeError) as e:
        FAM.inputs("1x4x64x100", "small")
    assert "128" in (e.value.fix or "")  # the padded size to use
    with pytest.raises(LowlightError):
        FAM.resolve_options({"steps": "3"})
