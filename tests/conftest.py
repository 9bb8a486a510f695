"""Shared fixtures: the shared data folder, a per-session stage cache, tiny AMNet bundles."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lowlight.calibration.data import SAMPLES_DIR, shared_data_dir

TINY_SHAPE = "1x4x3x64x64"
# The suite's cpu bundles are onnxruntime bundles (their tests read model.onnx): with OpenVINO installed,
# --backend auto would time both backends and ship whichever is faster under load that moment.
# tests/test_openvino.py passes backend= explicitly.
os.environ.setdefault("LOWLIGHT_BACKEND", "onnxruntime")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir(required=False)
    if d is None:
        pytest.fail("../shared/data is missing: the tests read real photos from it (set LOWLIGHT_DATA)")
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stage-cache")
    os.environ["LOWLIGHT_CACHE"] = str(path)
    return path


def compile_tiny(out: Path, cache_dir: Path, **kw: object):
    """Compile the shipped tiny AMNet at a small shape (helper for the pipeline tests)."""
    from lowlight.compile.options import CompileOptions
    from lowlight.compile.pipeline import compile_bundle

    opts = dict(config="tiny", shape=TINY_SHAPE, out=str(out), cache_dir=str(cache_dir), calib=str(SAMPLES_DIR),
                calib_frames=8, verify_frames=3, profile_runs=3, quiet=True)
    opts.update(kw)
    return compile_bundle(CompileOptions(**opts))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, data_dir: Path):
    return compile_tiny(tmp_path_factory.mktemp("b") / "tiny-fp32", cache_dir, precision="fp32")


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, data_dir: Path):
    return compile_tiny(tmp_path_factory.mktemp("b") / "tiny-int8", cache_dir, precision="int8")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny DarkDiff teacher (`zoo train darkdiff --config tiny`, a few steps): the distill and compile tests' input."""
    from lowlight.models.train_darkdiff import train

    out = tmp_path_factory.mktemp("darkdiff") / "tiny.safetensors"
    train("tiny", str(out), steps=4, vae_steps=4, batch=2, eval_images=1, eval_steps=(50, 1), every=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_nat(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny NAT on GLARE (VQ, low-light encoder, NAT teacher, AFT decoder; `zoo train nat --config tiny`, a few steps)."""
    from lowlight.models.train_nat import train

    out = tmp_path_factory.mktemp("nat") / "tiny.safetensors"
    train("tiny", str(out), steps=60, vq_steps=60, enc_steps=40, dec_steps=20, batch=4, eval_images=1, every=20, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mmaif(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny MMAIF (VAE, flow teacher and regression DiT; `zoo train mmaif --config tiny`, a few steps)."""
    from lowlight.models.train_mmaif import train

    out = tmp_path_factory.mktemp("mmaif") / "tiny.safetensors"
    train("tiny", str(out), steps=40, vae_steps=20, reg_steps=10, batch=4, eval_images=1, every=10, progress=False)
    return out
