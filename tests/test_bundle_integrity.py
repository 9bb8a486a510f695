"""Bundle integrity: what `lowlight.runtime.load` refuses, what it only warns about, and a fuzz.

Every refusal must be a BundleError with a `what` and a `fix` (the CLIs print both),
never a traceback, and loading never writes into the bundle.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lowlight.core.bundle import MANIFEST, write_manifest
from lowlight.core.errors import BundleError, InputError
from lowlight.runtime import load

pytestmark = pytest.mark.slow

SHAPE = (1, 4, 3, 64, 64)


def _copy(fp32_bundle, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A private copy of the tiny bundle and its parsed manifest."""
    root = tmp_path / "b"
    shutil.copytree(fp32_bundle.bundle, root)
    return root, json.loads((root / MANIFEST).read_text())


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes (links as their target): to show a refused load changed nothing."""
    return {p.relative_to(root).as_posix(): (str(p.readlink()).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def _refused(root: Path) -> BundleError:
    """load(root) must raise a BundleError with a what and a fix and leave the bundle as it was."""
    before = _snapshot(root)
    with pytest.raises(BundleError) as e:
        load(root, verbose=False)
    assert e.value.what and e.value.fix
    assert _snapshot(root) == before
    return e.value


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


# -- finding 3: the manifest must vouch for the model -------------------------------------


def test_manifest_without_files_is_refused(fp32_bundle, tmp_path: Path):
    root, man = _copy(fp32_bundle, tmp_path)
    _tamper(root / "model.onnx")  # what the missing hashes would have let through
    del man["files"]
    (root / MANIFEST).write_text(json.dumps(man))
    err = _refused(root)
    assert "required key 'files'" in err.what and "is missing" in err.what
    assert "recompile" in err.fix


def test_files_without_the_model_is_refused(fp32_bundle, tmp_path: Path):
    root, man = _copy(fp32_bundle, tmp_path)
    _tamper(root / "model.onnx")
    del man["files"]["model.onnx"]
    (root / MANIFEST).write_text(json.dumps(man))
    err = _refused(root)
    assert "model.onnx is not listed with a hash under 'files'" in err.what


@pytest.mark.parametrize("model", ["/tmp/evil/model.onnx", "../outside/model.onnx", "sub/../../outside/model.onnx", "C:\\evil\\model.onnx"])
def test_model_path_outside_the_bundle_is_refused(fp32_bundle, tmp_path: Path, model: str):
    root, man = _copy(fp32_bundle, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "model.onnx", outside / "model.onnx")  # a real, well-hashed model out there
    man["model"] = model
    man["files"][model] = man["files"]["model.onnx"]
    (root / MANIFEST).write_text(json.dumps(man))
    err = _refused(root)
    assert f"{model!r} points outside the bundle" in err.what
    assert (outside / "model.onnx").read_bytes() == (root / "model.onnx").read_bytes()


def test_symlinked_model_outside_the_bundle_is_refused(fp32_bundle, tmp_path: Path):
    root, _ = _copy(fp32_bundle, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(root / "model.onnx", outside)  # same bytes, so the hash alone would pass
    (root / "model.onnx").symlink_to(outside)
    err = _refused(root)
    assert err.what == f"bundle file model.onnx resolves outside {root} (a link?)"
    assert (root / "model.onnx").is_symlink() and outside.is_file()


@pytest.mark.parametrize("text, words", [
    ("{}", "required key 'format_version' is missing"),
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ("null", "expected a JSON object, got NoneType"),
    ("7", "expected a JSON object, got int"),
    ('{"format_version": 1, "model": "model.onnx"', "is not valid JSON (Expecting"),
    ("", "is not valid JSON"),
    ("\xff\xfe{", "is not valid JSON"),
    ('{"format_version": ' + "9" * 5000 + "}", "is not valid JSON (Exceeds the limit"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
], ids=["empty-object", "list", "null", "int", "truncated", "empty-file", "not-utf8", "huge-int", "deep-nesting"])
def test_unreadable_manifest_is_a_bundle_error(fp32_bundle, tmp_path: Path, text: str, words: str):
    root, _ = _copy(fp32_bundle, tmp_path)
    (root / MANIFEST).write_bytes(text.encode("latin-1"))
    err = _refused(root)
    assert words in err.what and str(root / MANIFEST) in err.what
    assert err.fix == "the bundle is damaged or was edited by hand: recompile it, or copy it again from where it was built"


def test_manifest_without_inputs_is_a_bundle_error(fp32_bundle, tmp_path: Path):
    root, man = _copy(fp32_bundle, tmp_path)
    del man["inputs"]
    (root / MANIFEST).write_text(json.dumps(man))
    err = _refused(root)
    assert "required key 'inputs'" in err.what and "is missing" in err.what


def test_edited_reports_only_warn(fp32_bundle, tmp_path: Path, capsys):
    root, _ = _copy(fp32_bundle, tmp_path)
    for name in ("verification.md", "profile.md"):
        with open(root / name, "a") as f:
            f.write("\nchecked by J. on the test track\n")
    manifest_before = (root / MANIFEST).read_bytes()
    sess = load(root, verbose=True)
    assert sess.warnings == [
        "report profile.md was changed after compilation (the model files are intact)",
        "report verification.md was changed after compilation (the model files are intact)",
    ]
    y = sess(rgb=np.full(SHAPE, 0.2, np.float32))
    sess(rgb=np.full(SHAPE, 0.3, np.float32))
    assert y.shape == SHAPE
    err = capsys.readouterr().err
    for w in sess.warnings:
        assert err.count(w) == 1  # printed once, at load, not per call
    assert (root / MANIFEST).read_bytes() == manifest_before  # loading does not "fix" the hashes
    assert load(root, verbose=False).warnings == sess.warnings
    assert capsys.readouterr().err == ""  # verbose=False prints nothing


def test_deleted_report_only_warns(fp32_bundle, tmp_path: Path):
    root, _ = _copy(fp32_bundle, tmp_path)
    (root / "verification.json").unlink()
    assert load(root, verbose=False).warnings == ["report verification.json was removed after compilation (the model files are intact)"]


# -- backend load errors ------------------------------------------------------------------


def test_garbage_model_rehashed_is_a_bundle_error(fp32_bundle, tmp_path: Path):
    root, man = _copy(fp32_bundle, tmp_path)
    (root / "model.onnx").write_bytes(b"this is not an onnx model\n" * 100)
    write_manifest(root, man)  # the hashes vouch for the garbage: only onnxruntime can tell
    err = _refused(root)
    assert err.what.startswith(f"onnxruntime cannot load {root / 'model.onnx'}: ")
    assert "Protobuf parsing failed" in err.what and "\n" not in err.what
    assert "recompile the bundle" in err.fix


def test_model_that_disagrees_with_manifest_is_a_bundle_error(fp32_bundle, tmp_path: Path):
    root, man = _copy(fp32_bundle, tmp_path)

    def write_raw(m: dict) -> None:  # write_manifest validates: write what a hand edit would
        (root / "manifest.json").write_text(json.dumps(m))

    man = json.loads((root / "manifest.json").read_text())
    man["inputs"][0]["shape"] = [1, 4, 3, 64, 96]
    write_raw(man)
    err = _refused(root)
    assert err.what.endswith("the manifest gives 'rgb' shape [1, 4, 3, 64, 96], component 'model' takes [1, 4, 3, 64, 64]")
    man["inputs"][0]["shape"] = list(SHAPE)
    man["outputs"][0]["name"] = "output"
    write_raw(man)
    err = _refused(root)
    assert err.what.endswith("no step produces the output(s) ['output']")
    man["outputs"][0]["name"] = "enhanced"
    man["components"]["model"]["outputs"][0]["name"] = "output"  # the component now disagrees with its graph
    man["program"]["steps"][0]["out"] = {"output": "enhanced"}
    write_raw(man)
    err = _refused(root)
    assert err.what == f"{root}: the manifest lists outputs ['output'], the model has ['enhanced']"


def _with_engine(fp32_bundle, tmp_path: Path, monkeypatch, error: Exception) -> Path:
    """A bundle with an engine entry, on a 'machine' where TensorRT looks usable but opening fails."""
    import lowlight.runtime.tensorrt_backend as trt_backend

    root, man = _copy(fp32_bundle, tmp_path)
    (root / "model.engine").write_bytes(b"\x00not a plan" * 64)
    write_manifest(root, man | {"engine": {"file": "model.engine", "trt_version": "10.3.0", "arch": "sm_87"}})

    class Failing:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise error

    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda manifest: (True, "TensorRT 10.3.0 on sm_87"))
    monkeypatch.setattr(trt_backend, "TensorRTBackend", Failing)
    return root


@pytest.mark.parametrize("error, said", [
    (RuntimeError("cuMemAlloc failed: out of memory\n(pycuda details)"), "cuMemAlloc failed: out of memory"),
    (BundleError("TensorRT could not deserialize model.engine", "rebuild it"), "TensorRT could not deserialize model.engine"),
])
def test_tensorrt_failure_falls_back_to_onnxruntime(fp32_bundle, tmp_path: Path, monkeypatch, capsys, error, said):
    root = _with_engine(fp32_bundle, tmp_path, monkeypatch, error)
    sess = load(root, verbose=True)
    assert sess.backend_name.startswith("onnxruntime")
    assert sess(rgb=np.full(SHAPE, 0.2, np.float32)).shape == SHAPE
    err = capsys.readouterr().err
    assert f"(TensorRT could not open model.engine: {said})" in err and "pycuda details" not in err


def test_tensorrt_failure_with_tensorrt_requested(fp32_bundle, tmp_path: Path, monkeypatch):
    root = _with_engine(fp32_bundle, tmp_path, monkeypatch, RuntimeError("cuInit failed: no CUDA-capable device\nmore"))
    with pytest.raises(BundleError) as e:
        load(root, backend="tensorrt", verbose=False)
    assert e.value.what == f"TensorRT could not open {root / 'model.engine'}: cuInit failed: no CUDA-capable device"
    assert "backend='onnxruntime'" in e.value.fix
    deserialize = BundleError("TensorRT could not deserialize model.engine", "rebuild it on this device")
    root2 = _with_engine(fp32_bundle, tmp_path / "2", monkeypatch, deserialize)
    with pytest.raises(BundleError) as e:
        load(root2, backend="tensorrt", verbose=False)
    assert e.value is deserialize


def test_bad_load_arguments_are_input_errors(fp32_bundle):
    with pytest.raises(InputError, match="unknown backend 'tensorrt8'") as e:
        load(fp32_bundle.bundle, backend="tensorrt8", verbose=False)
    assert "auto, tensorrt, onnxruntime" in e.value.fix
    with pytest.raises(InputError, match="threads must be a non-negative integer, got -2"):
        load(fp32_bundle.bundle, threads=-2, verbose=False)


# -- fuzz ---------------------------------------------------------------------------------

#: Keys the runtime acts on: half the mutations aim here, the rest anywhere.
_CRITICAL = ("format_version", "model", "inputs", "outputs", "files", "reports", "engine", "reference")
#: Placeholders swapped into the JSON text after dumping (json.dumps cannot write them).
_HUGE_INT, _DEEP = "\x00HUGE_INT", "\x00DEEP"


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_paths(v, prefix + (k,)))
    return out


def _random_value(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = int(rng.integers(12 if depth < 2 else 6))
    if kind == 0:
        return int(rng.integers(-5, 100))
    if kind == 1:
        return [2**31, 2**63, 10**30, -(10**30), -1, 0, _HUGE_INT][int(rng.integers(7))]
    if kind == 2:
        return [1e308, -1e308, 1.5, -0.0, float("nan"), float("inf"), 3.5e38, 0.5][int(rng.integers(8))]
    if kind == 3:
        return ["", "../x", "/etc/passwd", "model.onnx", "reference.npz", "verification.md", "C:\\x", "a" * 5000,
                ".", "sub/../model.onnx", "./model.onnx", "\u00e9\u6f22", "x" * 64, "0" * 64][int(rng.integers(14))]
    if kind == 4:
        return None
    if kind == 5:
        return bool(rng.integers(2))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(int(rng.integers(4)))]
    if kind == 7:
        return {str(k): _random_value(rng, depth + 1) for k in rng.choice(["name", "shape", "file", "range", "dtype", "model.onnx", "q"], int(rng.integers(4)), replace=False)}
    if kind == 8:
        return [int(d) for d in rng.integers(-3, 100, size=int(rng.integers(1, 6)))]
    if kind == 9:
        return "".join(rng.choice(list("0123456789abcdef"), 64))
    if kind == 10:
        return _DEEP
    return [[], {}][int(rng.integers(2))]


def _mutate_tree(rng: np.random.Generator, man: dict[str, Any]) -> list[str]:
    """Apply 1-3 structural mutations in place; returns what was done (for failure messages)."""
    done = []
    for _ in range(int(rng.integers(1, 4))):
        paths = _paths(man)
        critical = [p for p in paths if p[0] in _CRITICAL]
        pool = critical if rng.random() < 0.5 and critical else paths
        if not pool:
            break
        path = pool[int(rng.integers(len(pool)))]
        parent: Any = man
        for k in path[:-1]:
            parent = parent[k]
        op = int(rng.integers(5))
        if op == 0:  # delete a key / list item, at any depth
            del parent[path[-1]]
            done.append(f"del {path}")
        elif op in (1, 2):  # change the value (and usually its type)
            parent[path[-1]] = _random_value(rng)
            done.append(f"set {path}={_short(parent[path[-1]])}")
        elif op == 3:  # add a key the runtime reads, to any object
            target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else man
            key = str(rng.choice([*_CRITICAL, "range", "dtype", "file", "name", "shape"]))
            target[key] = _random_value(rng)
            done.append(f"add {path}.{key}={_short(target[key])}")
        else:  # a tensor's shape: negative, zero, huge, off by one, wrong type
            t = man.get(str(rng.choice(["inputs", "outputs"])))
            if isinstance(t, list) and t and isinstance(t[0], dict) and isinstance(t[0].get("shape"), list) and t[0]["shape"]:
                i = int(rng.integers(len(t[0]["shape"])))
                t[0]["shape"][i] = [-1, 0, -64, 2**40, 65, 63, 1.0, "64", None][int(rng.integers(9))]
                done.append(f"shape[{i}]={t[0]['shape'][i]!r}")
    return done


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _mutate_bytes(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """Byte flips, a truncation, appended/inserted garbage or a deleted slice of `data`."""
    b = bytearray(data)
    op = int(rng.integers(4))
    if op == 0:
        n = int(rng.integers(1, 6))
        for _ in range(n):
            i = int(rng.integers(len(b)))
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b), f"flip {n} bytes"
    if op == 1:
        n = int(rng.integers(len(b)))
        return bytes(b[:n]), f"truncate to {n}"
    if op == 2:
        extra = rng.bytes(int(rng.integers(1, 200)))
        at = len(b) if rng.random() < 0.5 else int(rng.integers(len(b)))
        return bytes(b[:at] + extra + b[at:]), f"insert {len(extra)} bytes at {at}"
    i = int(rng.integers(len(b)))
    j = min(len(b), i + int(rng.integers(1, 100)))
    return bytes(b[:i] + b[j:]), f"delete bytes {i}:{j}"


def _check_loads_or_refuses(root: Path, what: str, outcomes: dict[str, int], failures: list[str]) -> None:
    """One fuzz case: a BundleError with what + fix, or a session that runs a well-shaped input."""
    try:
        sess = load(root, verbose=False)
    except BundleError as exc:
        if not (exc.what and exc.fix and len(str(exc)) < 2000):
            failures.append(f"{what}: BundleError without a short what + fix: {str(exc)[:300]!r}")
        outcomes["refused"] += 1
        return
    except Exception as exc:  # noqa: BLE001 - anything else is the bug this test looks for
        failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
        return
    try:
        feeds = {}
        for name, shape in sess.inputs.items():
            lo, hi = sess.ranges[name]
            u = np.random.default_rng(0).random(shape)
            feeds[name] = (lo + (hi - lo) * u).astype(np.float32)  # inside the declared range
        y = sess(**feeds)
        assert y.shape == tuple(sess.manifest["outputs"][0]["shape"]), (y.shape, sess.manifest["outputs"][0]["shape"])
        outcomes["runs"] += 1
    except Exception as exc:  # noqa: BLE001
        failures.append(f"{what}: loaded, then {type(exc).__name__}: {str(exc)[:300]}")


def test_fuzzed_bundles_load_or_refuse_cleanly(fp32_bundle, tmp_path: Path):
    start = time.perf_counter()
    root, original = _copy(fp32_bundle, tmp_path)
    manifest_text = (root / MANIFEST).read_text()
    model_bytes = (root / "model.onnx").read_bytes()
    before = sorted(p.name for p in root.iterdir())
    rng = np.random.default_rng(20261124)
    outcomes = {"refused": 0, "runs": 0}
    failures: list[str] = []

    for case in range(700):  # manifest.json: structural mutations, then sometimes raw bytes
        man = copy.deepcopy(original)
        done = _mutate_tree(rng, man)
        text = json.dumps(man).replace(json.dumps(_HUGE_INT), "9" * 5000).replace(json.dumps(_DEEP), "[" * 50_000 + "]" * 50_000)
        data = text.encode()
        if rng.random() < 0.3 or not done:
            data, how = _mutate_bytes(rng, data)
            done.append(how)
        (root / MANIFEST).write_bytes(data)
        _check_loads_or_refuses(root, f"manifest case {case} ({'; '.join(done)})", outcomes, failures)
    (root / MANIFEST).write_text(manifest_text)
    manifest_outcomes = dict(outcomes)

    for case in range(200):  # model.onnx changed, manifest not re-hashed: always refused
        data, how = _mutate_bytes(rng, model_bytes)
        (root / "model.onnx").write_bytes(data)
        try:
            load(root, verbose=False)
            failures.append(f"model case {case} ({how}): a changed model.onnx loaded")
        except BundleError as exc:
            if "model.onnx (sha256 mismatch)" not in exc.what or not exc.fix:
                failures.append(f"model case {case} ({how}): {exc.what!r}")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"model case {case} ({how}): {type(exc).__name__}: {exc}")

    rehashed = {"refused": 0, "runs": 0}
    for case in range(100):  # model.onnx changed and the manifest re-hashed: onnxruntime has to judge it
        data, how = _mutate_bytes(rng, model_bytes)
        (root / "model.onnx").write_bytes(data)
        write_manifest(root, original)
        _check_loads_or_refuses(root, f"rehashed model case {case} ({how})", rehashed, failures)

    elapsed = time.perf_counter() - start
    assert not failures, f"{len(failures)} cases failed, e.g.:\n" + "\n".join(failures[:15])
    assert sorted(p.name for p in root.iterdir()) == before  # no stray files from 1,000 loads
    # Enough of each outcome that the fuzz tested both paths (counts are fixed by the seed).
    assert manifest_outcomes["refused"] >= 300 and manifest_outcomes["runs"] >= 50, manifest_outcomes
    assert rehashed["refused"] >= 30 and rehashed["runs"] >= 10, rehashed
    assert elapsed < 60, f"fuzz took {elapsed:.1f} s"
