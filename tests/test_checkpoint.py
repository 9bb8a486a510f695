"""Checkpoint loading: safetensors / weights-only state_dicts; every bad checkpoint gets a clear error."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lowlight.models import build, load
from lowlight.core.errors import CheckpointError


@pytest.fixture()
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in build("amnet", "tiny").state_dict().items()}


def test_safetensors_and_state_dict_round_trip(tmp_path: Path, tiny_state):
    save_file(tiny_state, str(tmp_path / "w.safetensors"))
    torch.save(tiny_state, tmp_path / "w.pt")
    torch.save({"state_dict": tiny_state}, tmp_path / "wrapped.pt")
    for name in ("w.safetensors", "w.pt", "wrapped.pt"):
        m = load("amnet", "tiny", checkpoint=str(tmp_path / name))
        assert not m.training
        for k, v in m.state_dict().items():
            assert torch.equal(v, tiny_state[k])


def test_shipped_reference_weights_load():
    m = load("amnet", "tiny")
    assert not m.training


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_checkpoint(tmp_path: Path, tiny_state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(tiny_state, str(path))
    else:
        torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt|cannot be read"):
        load("amnet", "tiny", checkpoint=str(path))


def test_garbage_file(tmp_path: Path):
    path = tmp_path / "w.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        load("amnet", "tiny", checkpoint=str(path))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.sentinel}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path: Path, tiny_state):
    sentinel = tmp_path / "pwned"
    _Evil.sentinel = str(sentinel)  # type: ignore[attr-defined]
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_state, "payload": _Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match="refuse to unpickle") as e:
        load("amnet", "tiny", checkpoint=str(path))
    assert "state_dict()" in str(e.value)
    assert not sentinel.exists()


def test_checkpoint_for_another_config_lists_mis_shaped_keys(tmp_path: Path, tiny_state):
    save_file(tiny_state, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load("amnet", "base", checkpoint=str(tmp_path / "tiny.safetensors"))
    msg = str(e.value)
    assert "mis-shaped" in msg and "4 missing key(s): temporal.1.conv.bias" in msg
    assert "aux_encoders.event.down2.weight: checkpoint (16, 5, 3, 3) vs model (32, 5, 3, 3)" in msg
    assert "this checkpoint is amnet config 'tiny': pass --config tiny" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, tiny_state):
    state = dict(tiny_state)
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(tmp_path / "w.safetensors"))
    assert "missing key(s): head.bias" in str(e.value) and "unexpected key(s): extra.weight" in str(e.value)


def test_checkpoint_of_another_model_family(tmp_path: Path):
    save_file({"conv.weight": torch.zeros(3, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="does not match amnet"):
        load("amnet", "tiny", checkpoint=str(tmp_path / "other.safetensors"))


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        load("amnet", "tiny", checkpoint="/nonexistent/w.safetensors")
