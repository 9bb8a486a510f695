"""The command lines: errors exit 2 with what + fix, listings work."""
from __future__ import annotations

import pytest

from lowlight.compile.cli import main


@pytest.mark.parametrize("argv, words", [
    (["--config", "tiny", "--shape", "1x4x3x64x66"], "dimension 4 (width) is 66"),
    (["--target", "jetson-xavier"], "unknown target 'jetson-xavier'"),
    (["--model", "resnet"], "unknown model family 'resnet'"),
    (["--config", "huge"], "has no config 'huge'"),
    (["--target", "cpu", "--trt-version", "10.3"], "does not use TensorRT"),
    (["/nonexistent.safetensors", "--config", "tiny", "--shape", "1x4x3x64x64"], "does not exist"),
])
def test_compile_errors_exit_2_with_a_fix(argv, words, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and words in err and "fix:" in err
    assert not (tmp_path / "b").exists()


def test_zoo_list_and_targets(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "amnet" in out and "amnet_base.safetensors" in out
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "jetson-orin" in out and "10.3" in out
