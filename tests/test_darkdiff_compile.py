"""DarkDiff through the compiler: distillation on the tiny config, the distill stage, the compiled student.

The tiny teacher (conftest `tiny_teacher`) is trained for a few steps only: these tests
check what distillation and compilation do to *a* teacher, not image quality (the
shipped `small` weights and benchmarks/darkdiff.py report that).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lowlight.compile.options import CompileOptions
from lowlight.compile.pipeline import compile_bundle
from lowlight.core.errors import TargetError

pytestmark = pytest.mark.slow

SHAPE = "1x4x32x32"  # packed 32x32 (a 64x64 Bayer frame): the smallest multiple tiny takes, fast


def _raw_inputs(n: int, seed: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from lowlight.calibration.frames import load_frames
    from lowlight.calibration.raw import raw_pair
    from lowlight.models.train_darkdiff import split_photos

    rng = np.random.default_rng(seed)
    out = []
    for path in split_photos()[1][:n]:
        img = load_frames(path)[0][:64, :64]
        raw, gain, _ = raw_pair(img, rng)
        out.append((torch.from_numpy(raw)[None], torch.from_numpy(gain)[None]))
    return out


def test_tiny_teacher_distilled_to_one_step_beats_its_own_one_step_ddim(tiny_teacher: Path) -> None:
    """Progressive distillation 8 -> 4 -> 2 -> 1 (after the guided stage): the 1-step student lands nearer the
    teacher's 8-step guided output than the teacher's own 1-step DDIM does, from the same z_T."""
    from lowlight.compile.distill import distill
    from lowlight.models.train_darkdiff import distill_setup

    setup = distill_setup(str(tiny_teacher), "tiny", batch=2, crop=64)
    teacher = setup["teacher"].model
    students = distill(setup["teacher"], 1, setup["batches"], start_steps=8, iters_per_round=60, lr=1e-3, every=1000,
                       keep=(1,), progress=lambda *_: None)
    student = students[1].model.eval()
    err_student, err_ddim = [], []
    with torch.no_grad():
        for raw, gain in _raw_inputs(3):
            z = torch.from_numpy(teacher.draw_noise(teacher.latent_shape(tuple(raw.shape)))[0])
            target = teacher.sample(raw, gain, z, 8)
            err_student.append(float((student.sample(raw, gain, z, 1) - target).abs().mean()))
            err_ddim.append(float((teacher.sample(raw, gain, z, 1) - target).abs().mean()))
    s, d = float(np.mean(err_student)), float(np.mean(err_ddim))
    assert s < 0.8 * d, f"1-step student {s:.4f} vs teacher's 1-step DDIM {d:.4f} (mean abs error to its 8-step output)"


@pytest.fixture(scope="module")
def student_bundle(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dd") / "fp32"
    compile_bundle(CompileOptions(model="darkdiff", config="tiny", checkpoint=str(tiny_teacher), shape=SHAPE, out=str(out),
                                  precision="fp32", calib_frames=8, verify_frames=4, profile_runs=2, quiet=True,
                                  family_options={"steps": "2"}))
    return out, cache_dir


def test_compiled_student_equals_the_pytorch_student_and_draws_the_same_noise(student_bundle: tuple[Path, Path],
                                                                             tiny_teacher: Path) -> None:
    from lowlight.models import load
    from lowlight.runtime import load as load_bundle

    bundle, _ = student_bundle
    m = json.loads((bundle / "manifest.json").read_text())
    distilled = m["distill"]
    assert distilled["steps"] == 2 and distilled["cached"] is False and Path(distilled["student"]).is_file()
    assert m["verification"]["max_abs_error"] <= 1e-3 and "distilled 2-step student" in m["verification"]["reference"]
    assert {c for c in m["components"]} == {"encoder", "step", "decoder"}  # the student has no unconditional pass
    student = load("darkdiff", config="tiny", checkpoint=str(tiny_teacher), steps=2, student=distilled["student"])
    assert student.student_steps == 2
    sess = load_bundle(bundle, verbose=False)
    for raw, gain in _raw_inputs(2):
        with torch.no_grad():
            want = student(raw, gain).numpy()  # noise=None: numpy default_rng(seed) in PyTorch too
        got = sess(raw=raw.numpy(), gain=gain.numpy())  # the caller never touches the noise
        assert got.shape == want.shape == (1, 3, 32, 32)
        assert float(np.abs(got - want).max()) <= 1e-3
    z = np.random.default_rng(9).standard_normal(student.latent_shape(tuple(raw.shape)), dtype=np.float32)
    with torch.no_grad():
        want = student(raw, gain, noise=torch.from_numpy(z)).numpy()
    got = sess(raw=raw.numpy(), gain=gain.numpy(), noise=z)  # a caller's own starting latent
    assert float(np.abs(got - want).max()) <= 1e-3 and float(np.abs(got - sess(raw=raw.numpy(), gain=gain.numpy())).max()) > 1e-3


def test_second_compile_reuses_the_distilled_student(student_bundle: tuple[Path, Path], tiny_teacher: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compile_bundle(CompileOptions(model="darkdiff", config="tiny", checkpoint=str(tiny_teacher), shape=SHAPE, out=str(tmp_path / "b"),
                                  precision="fp32", calib_frames=8, verify_frames=4, profile_runs=2, quiet=False,
                                  family_options={"steps": "2"}))
    err = capsys.readouterr().err
    assert "[2/9] distill done" in err and "cached" in err.split("[2/9] distill done")[1].splitlines()[0]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["distill"]["cached"] is True


def test_jetson_orin_student_unrolled_is_one_graph_of_trt_10_3_ops(student_bundle: tuple[Path, Path], tiny_teacher: Path,
                                                                   tmp_path: Path) -> None:
    """FP16 for AGX Orin: the K steps unrolled into one graph whose every op TensorRT 10.3 supports."""
    import onnx

    from lowlight.targets import get_target
    from lowlight.targets.tensorrt.op_support import find_problems

    out = tmp_path / "orin"
    compile_bundle(CompileOptions(model="darkdiff", config="tiny", checkpoint=str(tiny_teacher), shape=SHAPE, out=str(out),
                                  target="jetson-orin", precision="fp16", calib_frames=8, verify_frames=4, profile_runs=2,
                                  quiet=True, family_options={"steps": "2", "unroll": "yes"},
                                  fp16_engine="ort"))  # AutoCast adds ~50 s on this graph; tests/test_modelopt.py covers it
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["components"]) == ["sampler"] or len(m["components"]) == 1
    model = onnx.load(str(out / "model.onnx"))
    assert not any(n.op_type.startswith("Random") for n in model.graph.node)  # noise is an input, drawn on the host
    assert find_problems(model, get_target("jetson-orin")) == []
    assert m["verification"]["passed"]


def test_multi_component_program_for_tensorrt_is_refused_before_any_work(tiny_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(TargetError) as err:
        compile_bundle(CompileOptions(model="darkdiff", config="tiny", checkpoint=str(tiny_teacher), shape=SHAPE, out=str(out),
                                      target="jetson-orin", precision="fp16", quiet=True, family_options={"steps": "2"}))
    assert "--unroll yes" in (err.value.fix or "") and not out.exists()


def test_lowlight_run_takes_raw_frames_without_noise(student_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    from lowlight.runtime import load as load_bundle
    from lowlight.runtime.cli import main

    bundle, _ = student_bundle
    frames = tmp_path / "raw"
    frames.mkdir()
    (raw, gain), = _raw_inputs(1)
    np.savez(frames / "night_0001.npz", raw=raw[0].numpy(), gain=gain[0].numpy())
    out = tmp_path / "out"
    assert main([str(bundle), "--input", str(frames), "--output", str(out), "--quiet"]) in (0, None)
    png = np.asarray(Image.open(out / "night_0001.png"), dtype=np.float32) / 255.0
    want = load_bundle(bundle, verbose=False)(raw=raw.numpy(), gain=gain.numpy())[0].transpose(1, 2, 0)
    assert png.shape == (32, 32, 3) and float(np.abs(png - want).max()) <= 1.0 / 255 + 1e-6
    assert main([str(bundle), "--input", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o2"), "--quiet"]) == 2
    assert not (tmp_path / "o2").exists()
