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


def test_bare_command_prints_help_and_version(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "subcommands:" in out and "build-engine" in out and "zoo" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lowlight-compile ")


@pytest.mark.parametrize("sub", ["profile", "zoo", "targets", "build-engine"])
def test_subcommand_usage_names_the_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lowlight-compile {sub} ")


def test_family_options_become_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "gmmoe", "--help"])
    out = capsys.readouterr().out
    assert "options of --model gmmoe" in out and "--experts {dense,top2}" in out and "(default: top2)" in out
    assert "--modalities" not in out  # another family's option is not offered
    with pytest.raises(SystemExit) as e:
        main(["--model", "amnet", "--experts", "top2"])
    assert e.value.code == 2 and "unrecognized arguments: --experts" in capsys.readouterr().err


def test_every_compile_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "amnet", "--help"])
    out = capsys.readouterr().out
    import re

    flags = re.findall(r"^  (--[a-z0-9-]+)", out, re.M)
    assert len(flags) >= 20
    for block in re.split(r"\n  (?=--)", out.split("options:", 1)[1])[1:]:
        assert len(block.split()) > 2, block  # a flag followed by words of help
