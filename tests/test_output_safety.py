"""lowlight-compile never loses a user's data: --out rules, lock, leftovers, umask, exit 2 for every mistake.

Each test asserts the file system afterwards (what still exists, byte for
byte), the exit code and the message.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SHAPE, compile_tiny
from lowlight.calibration.data import SAMPLES_DIR
from lowlight.compile.cli import main
from lowlight.core.errors import OutputError, ShapeError
from lowlight.core.fsio import OutputLock, current_umask


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_args(out: Path | str, cache_dir: Path, *extra: str) -> list[str]:
    return ["--model", "amnet", "--config", "tiny", "--shape", TINY_SHAPE, "--precision", "fp32", "--calib", str(SAMPLES_DIR),
            "--verify-frames", "3", "--profile-runs", "3", "--cache-dir", str(cache_dir), "--quiet", "--out", str(out), *extra]


def user_folder(root: Path) -> Path:
    (root / "work").mkdir()
    (root / "work" / "model.pt").write_bytes(b"\x80\x02 my checkpoint")
    (root / "work" / "train.py").write_text("print('training')\n")
    (root / "work" / ".hidden").write_text("secret\n")
    return root / "work"


def test_out_dot_is_refused_and_the_working_folder_survives(tmp_path: Path, cache_dir: Path, monkeypatch, capsys) -> None:
    work = user_folder(tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.chdir(work)
    assert main(tiny_args(".", cache_dir)) == 2
    err = capsys.readouterr().err
    assert "already exists and is not a bundle" in err and "fix:" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_out_file_is_refused_without_hidden_copies(tmp_path: Path, cache_dir: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    assert main(tiny_args(tmp_path / "notes.txt", cache_dir)) == 2
    assert "is a file, not a bundle" in capsys.readouterr().err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_inside_an_input_is_refused(tmp_path: Path, cache_dir: Path, capsys) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted(SAMPLES_DIR.glob("*.png"))[:6]:
        (calib / p.name).write_bytes(p.read_bytes())
    before = snapshot(tmp_path)
    args = tiny_args(calib / "bundle", cache_dir)
    args[args.index("--calib") + 1] = str(calib)
    assert main(args) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_empty_folder_and_own_bundle_are_replaced(tmp_path: Path, cache_dir: Path, fp32_bundle) -> None:
    (tmp_path / "empty").mkdir()
    r = compile_tiny(tmp_path / "empty", cache_dir, precision="fp32")
    assert (r.bundle / "manifest.json").is_file()
    again = compile_tiny(tmp_path / "empty", cache_dir, precision="fp32")  # a bundle we made: replaced
    assert (again.bundle / "profile.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no lock, partial or old copy left


def _bundle_then_ctrl_c_in(module: str, name: str, tmp_path: Path, cache_dir: Path, monkeypatch) -> tuple[Path, dict[str, bytes]]:
    """A finished bundle at tmp/b and its snapshot; from now on `module.name` raises KeyboardInterrupt."""
    import importlib

    out = tmp_path / "b"
    compile_tiny(out, cache_dir, precision="fp32")

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    return out, snapshot(tmp_path)


def test_profile_failure_keeps_the_previous_bundle(tmp_path: Path, cache_dir: Path, fp32_bundle, monkeypatch) -> None:
    out, before = _bundle_then_ctrl_c_in("lowlight.compile.profile", "profile_bundle", tmp_path, cache_dir, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        compile_tiny(out, cache_dir, precision="fp32", min_fidelity=20.0)  # options differ: a new bundle would differ
    assert snapshot(tmp_path) == before


def test_interrupt_message_is_true(tmp_path: Path, cache_dir: Path, fp32_bundle, monkeypatch, capsys) -> None:
    out, before = _bundle_then_ctrl_c_in("lowlight.compile.verify", "verify", tmp_path, cache_dir, monkeypatch)
    assert main(tiny_args(out, cache_dir)) == 130
    assert "left as it was" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_second_compile_to_the_same_out_fails_at_once_naming_the_first(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "b"
    with OutputLock(out):
        with pytest.raises(OutputError, match=f"being written by process {os.getpid()}"):
            compile_tiny(out, cache_dir, precision="fp32")
    assert not out.exists()


def test_leftovers_of_killed_runs_are_removed(tmp_path: Path, cache_dir: Path, fp32_bundle) -> None:
    dead = 2**22 + 12345  # above the default pid_max of 2^22: no such process
    stale = tmp_path / f".b.partial-{dead}-abcd1234"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"\x00" * (1 << 20))
    (tmp_path / ".b.old-1-deadbeef").mkdir()
    alive = tmp_path / f".b.partial-{os.getppid()}-live0000"  # a running process's: kept
    alive.mkdir()
    cache_stale = cache_dir / "export" / f".0123abcd.partial-{dead}-ffff0000"
    cache_stale.mkdir(parents=True)
    compile_tiny(tmp_path / "b", cache_dir, precision="fp32", force=True)
    assert not stale.exists() and not (tmp_path / ".b.old-1-deadbeef").exists() and not cache_stale.exists()
    assert alive.is_dir()


def test_bundle_is_created_with_the_users_umask(tmp_path: Path, cache_dir: Path, fp32_bundle) -> None:
    old = os.umask(0o022)
    try:
        r = compile_tiny(tmp_path / "shared", cache_dir, precision="fp32")
    finally:
        os.umask(old)
    assert r.bundle.stat().st_mode & 0o777 == 0o755
    assert (r.bundle / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert current_umask() == old


@pytest.mark.parametrize("extra, words", [
    (["--profile-runs", "0"], "--profile-runs: 0 is not a count"),
    (["--calib-frames", "-3"], "--calib-frames: -3 is not a count"),
    (["--min-fidelity", "nan"], "--min-fidelity: nan is not a finite number"),
])
def test_bad_counts_and_budgets_exit_2(tmp_path: Path, cache_dir: Path, extra: list[str], words: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(tiny_args(tmp_path / "b", cache_dir, *extra))
    assert e.value.code == 2 and words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_empty_and_huge_shapes_are_refused_before_any_work(tmp_path: Path, cache_dir: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(tiny_args(tmp_path / "b", cache_dir)[:4] + ["--shape", "", "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "is not a shape like" in capsys.readouterr().err
    with pytest.raises(ShapeError, match="--shape is empty"):
        compile_tiny(tmp_path / "b", cache_dir, precision="fp32", shape="")
    args = tiny_args(tmp_path / "b", cache_dir)
    args[args.index("--shape") + 1] = "1x2x3x100000x100000"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "more than the 2^31-1" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_refused_before_any_work(tmp_path: Path, cache_dir: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert main(tiny_args(tmp_path / "file" / "bundle", cache_dir)) == 2
    assert "which is a file, not a folder" in capsys.readouterr().err
    assert main(tiny_args("/proc/lowlight-bundle", cache_dir)) == 2  # read-only even for root
    err = capsys.readouterr().err
    assert "not writable" in err and "Traceback" not in err


def test_profile_of_a_read_only_bundle_says_so_and_no_save_measures(tmp_path: Path, fp32_bundle, monkeypatch, capsys) -> None:
    import shutil

    import lowlight.compile.profile as profile

    b = tmp_path / "ro"
    shutil.copytree(fp32_bundle.bundle, b)
    before = snapshot(b)
    real_access = os.access
    monkeypatch.setattr(profile.os, "access", lambda p, mode: False if Path(p).parent == b and mode == os.W_OK else real_access(p, mode))
    assert main(["profile", str(b), "--runs", "2", "--warmup", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the profile" in err and "--no-save" in err
    assert main(["profile", str(b), "--runs", "2", "--warmup", "1", "--no-save"]) == 0
    assert "p50" in capsys.readouterr().out
    assert snapshot(b) == before


def test_zoo_train_never_replaces_existing_weights(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "amnet_tiny.safetensors").write_bytes(b"mine")
    assert main(["zoo", "train", "amnet", "--config", "tiny", "--steps", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "amnet_tiny.safetensors").read_bytes() == b"mine"


def test_zoo_train_never_replaces_a_json_beside_the_weights(tmp_path: Path, monkeypatch, capsys) -> None:
    """The trainers write NAME.json beside NAME.safetensors: a user's file of that name is refused before training."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "amnet_tiny.json").write_text('{"mine": true}')
    assert main(["zoo", "train", "amnet", "--config", "tiny", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "amnet_tiny.json already exists" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["amnet_tiny.json"]
    assert (tmp_path / "amnet_tiny.json").read_text() == '{"mine": true}'


def test_targets_json_into_a_closed_pipe_has_no_traceback() -> None:
    exe = Path(sys.executable).parent / "lowlight-compile"
    proc = subprocess.run(f"'{exe}' targets --json | head -c 10", shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_empty_checkpoint_exits_2(tmp_path: Path, cache_dir: Path, capsys) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    args = [str(tmp_path / "empty.pt")] + tiny_args(tmp_path / "b", cache_dir)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "empty.pt" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.pt"]


def test_a_users_look_alike_files_beside_out_are_never_touched(tmp_path: Path, cache_dir: Path, fp32_bundle) -> None:
    (tmp_path / ".b.old-backup").mkdir()  # not our .NAME.old-PID-XXXXXXXX
    (tmp_path / ".b.old-backup" / "thesis.tex").write_text("years of work\n")
    (tmp_path / ".b.partial-notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    compile_tiny(tmp_path / "b", cache_dir, precision="fp32")
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("b/")} == before
    (tmp_path / ".c.lock").write_text("a user's notes, not a lock\n")
    with pytest.raises(OutputError, match="is not a lock this tool wrote"):
        compile_tiny(tmp_path / "c", cache_dir, precision="fp32")
    assert (tmp_path / ".c.lock").read_text() == "a user's notes, not a lock\n" and not (tmp_path / "c").exists()


def test_train_gmmoe_module_never_writes_over_its_init_or_an_existing_record(tmp_path: Path, capsys) -> None:
    """`python -m lowlight.models.train_gmmoe` guards --out as `zoo train` does, before any training."""
    from lowlight.models.train_gmmoe import main as train_main

    w = tmp_path / "w.safetensors"
    w.write_bytes(b"mine")
    with pytest.raises(SystemExit) as e:
        train_main(["--config", "tiny", "--init", str(w), "--out", str(w), "--steps", "0", "--top2-steps", "0"])
    assert e.value.code == 2 and "would destroy the input" in capsys.readouterr().err and w.read_bytes() == b"mine"
    (tmp_path / "o.json").write_text("x")
    with pytest.raises(SystemExit) as e:
        train_main(["--config", "tiny", "--out", str(tmp_path / "o.safetensors"), "--steps", "0", "--top2-steps", "0"])
    assert e.value.code == 2 and "o.json already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "w.safetensors"] and (tmp_path / "o.json").read_text() == "x"
