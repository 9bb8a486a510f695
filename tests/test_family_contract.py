"""The family contract and "any model in": every discovered family, a family in one new file,
an iterative program over several components, a user's function, an ONNX file, entry points, v1 bundles."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lowlight.calibration.data import SAMPLES_DIR
from lowlight.compile.cli import main
from lowlight.compile.options import CompileOptions
from lowlight.compile.pipeline import compile_bundle
from lowlight.core.errors import LowlightError, ShapeError
from lowlight.models.family import Family, discover, family_names, get_family

TOY = Path(__file__).resolve().parent / "families" / "toy.py"


def _opts(tmp_path: Path, out: str, **kw: object) -> CompileOptions:
    base = dict(target="cpu", precision="fp32", out=str(tmp_path / out), cache_dir=str(tmp_path / "cache"),
                calib=str(SAMPLES_DIR), calib_frames=8, verify_frames=3, profile_runs=2, quiet=True)
    base.update(kw)
    return CompileOptions(**base)  # type: ignore[arg-type]


def _smallest(fam: Family) -> str:
    return "tiny" if "tiny" in fam.configs else fam.default_config


@pytest.mark.parametrize("name", family_names())
def test_every_discovered_family_honours_the_contract(name: str, tmp_path: Path, data_dir: Path) -> None:
    """build, inputs, make_inputs, a tiny export and a compile, through the declared interface only."""
    from lowlight.calibration.frames import load_frames
    from lowlight.compile.export import export_onnx

    fam = get_family(name)
    assert isinstance(fam, Family) and fam.name == name and fam.default_config in fam.configs
    config = _smallest(fam)
    options = fam.resolve_options({})
    assert set(options) == {o.name for o in fam.options}
    for o in fam.options:
        assert o.default in o.choices and o.help
    shape = fam.default_shape(config, **options)
    small = "x".join(map(str, (*[int(d) for d in shape.split("x")][:-2], 64, 64)))
    inputs = fam.inputs(small, config, **options)
    assert inputs and all(t.layout for t in inputs)
    feeds = fam.make_inputs(load_frames(SAMPLES_DIR, limit=4), small, config, seed=0, **options)
    assert feeds and {t.name for t in inputs} == set(feeds[0])
    for t in inputs:
        assert feeds[0][t.name].shape == t.shape and feeds[0][t.name].dtype == np.float32
    model = fam.build(config, **options).eval()
    comps = fam.components(model, inputs, config, **options)
    assert comps and all(c.outputs for c in comps)
    files = export_onnx(comps[0].module, {t.name: feeds[0][t.name] for t in comps[0].inputs}, comps[0].outputs, tmp_path / "c.onnx")
    assert files[0].stat().st_size > 0
    with pytest.raises(ShapeError):
        fam.inputs("1x2", config, **options)
    if fam.weights_path(config) is not None:
        r = compile_bundle(_opts(tmp_path, "b", model=name, config=config, shape=small))
        assert r.manifest["family"] == name and r.manifest["family_options"] == options
        assert r.verification["passed"]


def test_a_family_in_one_new_file_compiles_for_cpu_and_jetson_orin(tmp_path: Path, data_dir: Path, capsys) -> None:
    spec = f"{TOY}:ToyDenoiser"
    common = ["--model", spec, "--cache-dir", str(tmp_path / "cache"), "--verify-frames", "3", "--profile-runs", "2", "--quiet"]
    assert main(common + ["--target", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert main(common + ["--target", "jetson-orin", "--out", str(tmp_path / "orin")]) == 0
    out = capsys.readouterr().out
    assert "NOT BUILT YET" in out  # no TensorRT here: the plan is in the bundle
    cpu = json.loads((tmp_path / "cpu" / "manifest.json").read_text())
    orin = json.loads((tmp_path / "orin" / "manifest.json").read_text())
    assert cpu["family"] == "toy-denoiser" and cpu["precision"] == "fp32" and cpu["verification"]["passed"]
    assert orin["precision"] == "fp16" and (tmp_path / "orin" / "build_plan.json").is_file()


def test_iterative_family_compiles_to_components_and_a_program(tmp_path: Path, data_dir: Path) -> None:
    import lowlight.runtime as rt
    from lowlight.core.program import count_calls, run_program

    r = compile_bundle(_opts(tmp_path, "iter", model=f"{TOY}:ToyIterative"))
    m = r.manifest
    assert list(m["components"]) == ["encoder", "step", "decoder"] and "model" not in m
    assert m["program"]["unrolled"] is False and count_calls(m["program"]) == {"encoder": 1, "step": 3, "decoder": 1}
    assert (r.bundle / "constants.npz").is_file() and m["files"]["constants.npz"]
    assert {t["layout"] for t in m["components"]["step"]["inputs"]} == {"latent", "other"}
    assert r.verification["fidelity_psnr_db"] > 100  # fp32 program vs the PyTorch program, same noise
    sess = rt.load(r.bundle, verbose=False)
    x = np.load(r.bundle / "reference.npz")["input:rgb"][0]
    ref = np.load(r.bundle / "reference.npz")["output:enhanced"][0]
    y = sess(rgb=x)
    assert y.shape == ref.shape and np.abs(y - ref).max() < 1e-5
    # the noise comes from the bundle's seed: another seed gives another sample, the same seed the same
    assert np.abs(sess.run(seed=123, rgb=x)["enhanced"] - y).max() > 1e-4
    assert np.array_equal(sess.run(rgb=x)["enhanced"], y)
    # the PyTorch reference running the same schedule agrees (one comparison for host and device)
    fam = get_family(f"{TOY}:ToyIterative")
    model = fam.build("tiny")
    from lowlight.compile.plan import PlanComponent, torch_call

    comps = fam.components(model, fam.inputs("1x3x32x32", "tiny"), "tiny", unroll="no")
    call = torch_call([PlanComponent(c.name, c.inputs, c.outputs, c.output_layouts, module=c.module) for c in comps])
    torch_y = run_program(m["program"], call, {"rgb": x}, ["enhanced"], fam.constants("tiny"))["enhanced"]
    assert np.abs(torch_y - y).max() < 1e-5


def test_iterative_family_int8_calibrates_every_component(tmp_path: Path, data_dir: Path) -> None:
    r = compile_bundle(_opts(tmp_path, "iter8", model=f"{TOY}:ToyIterative", precision="int8", min_fidelity=20.0))
    m = r.manifest
    assert all(c["precision"] == "int8" for c in m["components"].values())
    assert m["components"]["step"]["ops"].get("QuantizeLinear", 0) > 0
    assert m["stages"]["components"]["step"]["quantize"]["engine"] in ("nncf", "ort")


def test_unrolled_form_is_one_graph_and_says_so(tmp_path: Path, data_dir: Path) -> None:
    r = compile_bundle(_opts(tmp_path, "unrolled", model=f"{TOY}:ToyIterative", family_options={"unroll": "yes"}))
    m = r.manifest
    assert list(m["components"]) == ["sampler"] and m["program"]["unrolled"] is True
    assert [s["op"] for s in m["program"]["steps"]] == ["noise", "call"]
    assert r.verification["fidelity_psnr_db"] > 100


def test_a_users_function_returning_a_module_compiles_and_runs(tmp_path: Path, data_dir: Path) -> None:
    from lowlight.runtime.cli import main as run_main

    r = compile_bundle(_opts(tmp_path, "fn", model=f"{TOY}:make_model", shape="1x3x32x32"))
    assert r.manifest["inputs"][0]["name"] == "rgb" and r.manifest["outputs"][0]["name"] == "enhanced"
    assert r.manifest["inputs"][0]["layout"] == "BCHW" and r.verification["passed"]
    src = tmp_path / "frames"
    src.mkdir()
    for p in sorted(SAMPLES_DIR.glob("*.png"))[:2]:
        shutil.copy(p, src / p.name)
    assert run_main([str(r.bundle), "--input", str(src), "--output", str(tmp_path / "enhanced"), "--quiet"]) == 0
    assert len(list((tmp_path / "enhanced").glob("*.png"))) == 2


@pytest.mark.parametrize("spec, words", [
    ("{tmp}/broken.py:f", "failed to import: ZeroDivisionError"),
    ("{toy}:missing", "has no 'missing'"),
    ("{toy}:not_a_model", "returned a int, not a torch.nn.Module"),
    ("{tmp}/absent.py:f", "does not exist"),
])
def test_bad_model_files_exit_2_with_what_and_fix(spec: str, words: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    model = spec.format(tmp=tmp_path, toy=TOY)
    assert main(["--model", model, "--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "c"), "--quiet", "--shape", "1x3x32x32"]) == 2
    err = capsys.readouterr().err
    assert words in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def _export_toy_onnx(path: Path, dynamic: bool) -> None:
    torch.manual_seed(3)
    c = 8
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(c, 3, 3, padding=1), torch.nn.Sigmoid(),
    ).eval()
    x = torch.rand(1, 3, 32, 32)
    kw = {"dynamic_axes": {"img": {2: "h", 3: "w"}}} if dynamic else {}
    torch.onnx.export(model, (x,), str(path), input_names=["img"], output_names=["out"], dynamo=False, opset_version=17, **kw)


def test_onnx_file_in_compiles_and_verifies_against_itself(tmp_path: Path, data_dir: Path, capsys) -> None:
    onnx_path = tmp_path / "user.onnx"
    _export_toy_onnx(onnx_path, dynamic=True)
    base = ["--cache-dir", str(tmp_path / "c"), "--verify-frames", "3", "--calib-frames", "8", "--profile-runs", "2", "--quiet"]
    # dynamic dimensions without --shape: what and fix
    assert main([str(onnx_path), "--out", str(tmp_path / "nope")] + base) == 2
    assert "has dynamic dimensions" in capsys.readouterr().err
    assert main([str(onnx_path), "--shape", "1x3x48x64", "--precision", "int8", "--out", str(tmp_path / "b")] + base) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["inputs"][0] == {"name": "img", "shape": [1, 3, 48, 64], "dtype": "float32", "layout": "BCHW", "range": [0.0, 1.0]}
    assert m["verified_against"] == "FP32 ONNX (onnxruntime)" and m["source"]["kind"] == "onnx"
    assert m["verification"]["fidelity_psnr_db"] > 30 and m["ops"].get("QuantizeLinear", 0) > 0


def test_broken_onnx_file_exits_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    assert main([str(bad), "--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not a valid ONNX model" in err and "fix:" in err


def test_entry_point_families_are_discovered(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "site"
    (pkg / "acme_lowlight").mkdir(parents=True)
    (pkg / "acme_lowlight" / "__init__.py").write_text(
        f"import importlib.util\nspec = importlib.util.spec_from_file_location('acme_toy', {str(TOY)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "class AcmeDenoiser(mod.ToyDenoiser):\n    name = 'acme-denoiser'\n"
    )
    dist = pkg / "acme_lowlight-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-lowlight\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lowlight.families]\nacme = acme_lowlight:AcmeDenoiser\n")
    monkeypatch.syspath_prepend(str(pkg))
    import lowlight.models.family as fm

    monkeypatch.setattr(fm, "_DISCOVERED", False)
    monkeypatch.setattr(fm, "_FAMILIES", {})
    discover()
    assert "acme-denoiser" in family_names() and {"amnet", "gmmoe"} <= set(family_names())


def test_v1_bundles_still_load(fp32_bundle, tmp_path: Path) -> None:
    """A bundle written before components (format 1: one `model`, every file under `files`)."""
    import lowlight.runtime as rt
    from lowlight.core.bundle import sha256

    root = tmp_path / "v1"
    shutil.copytree(fp32_bundle.bundle, root)
    m = json.loads((root / "manifest.json").read_text())
    for key in ("components", "program", "reports"):
        m.pop(key, None)
    for t in m["inputs"] + m["outputs"]:
        t.pop("layout", None)
    m["format_version"] = 1
    m["files"] = {p.name: sha256(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (root / "manifest.json").write_text(json.dumps(m))
    sess = rt.load(root, verbose=False)
    x = np.load(root / "reference.npz")["input:rgb"][0]
    assert np.abs(sess(rgb=x) - np.load(root / "reference.npz")["output:enhanced"][0]).max() < 1e-4
    assert list(sess.backends) == ["model"]


def test_unknown_family_option_is_refused() -> None:
    with pytest.raises(LowlightError, match="has no option --experts"):
        get_family("amnet").resolve_options({"experts": "top2"})
    with pytest.raises(LowlightError, match="is not one of"):
        get_family("gmmoe").resolve_options({"experts": "top3"})
