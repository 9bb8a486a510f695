"""Static check of everything that touches `tensorrt`, against tensorrt-stubs (10.13).

TensorRT cannot be installed here, so mypy is how the TensorRT package
(`targets/tensorrt/`: engine builder, build plan, op checks) and the TensorRT
runtime backend are checked. The stubs have a few syntax errors (a
parameter named `in`, a non-default parameter after defaulted ones); they are
fixed in a temp copy that goes first on MYPYPATH.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")


def _fix_def_line(line: str) -> str:
    """Give every parameter after the first defaulted one a default (`= ...`)."""
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*(->[^:]*)?:.*)$", line)
    if not m:
        return line
    params, depth, cur = [], 0, ""
    for ch in m.group(2):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    params.append(cur)
    seen_default = False
    for i, p in enumerate(params):
        if "=" in p:
            seen_default = True
        elif seen_default and p.strip() and not p.strip().startswith("*"):
            params[i] = p + " = ..."
    return m.group(1) + ",".join(params) + m.group(3)


def fix_stub(text: str) -> str:
    """Make a generated .pyi parse: rename `in` parameters, repair default order."""
    text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)
    lines = text.splitlines()
    for _ in range(200):
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError as exc:
            i = (exc.lineno or 1) - 1
            fixed = _fix_def_line(lines[i])
            if fixed == lines[i]:
                raise
            lines[i] = fixed
    return "\n".join(lines) + "\n"


def _fixed_stubs(dest: Path) -> Path:
    for pkg in STUB_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            # A skipped static check would pass `make test` unchecked: fail instead.
            pytest.fail(f"{pkg} stubs are not installed: pip install --no-deps tensorrt-stubs==10.13.0.35.1 (the Makefile does)")
        src = Path(list(spec.submodule_search_locations)[0])
        out = dest / pkg
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        for pyi in out.rglob("*.pyi"):
            pyi.write_text(fix_stub(pyi.read_text()))
    return dest


FOLDERS = ("core", "compile", "passes", "runtime", "kernels", "targets", "calibration", "models")
#: Checked whole, whether or not a module imports tensorrt itself: the plan and
#: op checks feed the engine builder.
TENSORRT_PACKAGE = REPO / "targets" / "tensorrt"


def modules_using_tensorrt() -> list[Path]:
    """Every module of ours that imports tensorrt, plus the whole TensorRT package."""
    pat = re.compile(r"^\s*(import tensorrt\b|from tensorrt\b)", re.M)
    found = set(TENSORRT_PACKAGE.rglob("*.py"))
    for folder in FOLDERS:
        for py in (REPO / folder).rglob("*.py"):
            if pat.search(py.read_text(errors="ignore")):
                found.add(py)
    return sorted(found)


def module_name(path: Path) -> str:
    """`targets/tensorrt/engine.py` -> `lowlight.targets.tensorrt.engine` (a package's __init__ -> the package)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["lowlight", *parts])


def test_stub_fixer_repairs_known_errors() -> None:
    bad = "class A:\n    def f(self, in: int, out: int) -> int: ...\n    def g(self, a: int = None, b: int) -> None: ...\n"
    ast.parse(fix_stub(bad))


def test_engine_and_backend_typecheck_against_tensorrt_stubs(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed (pip install -e '.[dev]')")
    modules = modules_using_tensorrt()
    names = {p.relative_to(REPO).as_posix() for p in modules}
    assert {"targets/tensorrt/engine.py", "runtime/tensorrt_backend.py"} <= names, names
    stubs = _fixed_stubs(tmp_path / "stubs")
    # The editable install's import hook is invisible to mypy: expose our
    # folders as the `lowlight` namespace package through symlinks.
    pkg = stubs / "lowlight"
    pkg.mkdir()
    for folder in FOLDERS:
        (pkg / folder).symlink_to(REPO / folder, target_is_directory=True)
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nfollow_imports = silent\nnamespace_packages = True\nexplicit_package_bases = True\n"
        "[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt]\nignore_errors = True\n"
        "[mypy-tensorrt_libs.*,tensorrt_libs]\nignore_missing_imports = True\n"
        # Polygraphy ships no type information (no py.typed): its loaders are Any here.
        "[mypy-polygraphy.*,polygraphy]\nignore_missing_imports = True\n"
    )
    mods = [module_name(p) for p in modules]
    env = dict(os.environ, MYPYPATH=str(stubs))
    cmd = [
        sys.executable, "-m", "mypy", "--config-file", str(config), "--python-version", "3.10",
        "--no-error-summary", "--show-error-codes", "--cache-dir", str(tmp_path / "mypy-cache"),
    ]
    for m in mods:
        cmd += ["-m", m]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert proc.returncode == 0 and not errors, proc.stdout + proc.stderr
