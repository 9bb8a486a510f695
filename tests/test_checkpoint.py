"""Checkpoint loading: safetensors / weights-only state_dicts; every bad checkpoint gets a clear error."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lowlight.models import build, load, load_checkpoint, resolve_config
from lowlight.models.checkpoint import LoadedState, read_state_dict
from lowlight.core.errors import CheckpointError, LowlightError


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
    assert f"loading it calls {os.system.__module__}.system" in e.value.what  # posix.system: found by disassembly
    assert "weights_only" not in str(e.value) and e.value.__cause__ is None  # torch's unsafe advice is gone
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


# --- refusals that say what the file is ----------------------------------------------------


class _NamedEvil:
    """An arbitrary class in a pickle: loading it would import this module and run its code."""


class _ExecEvil:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w')",))


@pytest.mark.parametrize("payload,name", [(_NamedEvil(), "_NamedEvil"), (_ExecEvil(), "builtins.exec")])
def test_refusal_names_the_global_and_gives_a_safe_fix(tmp_path: Path, tiny_state, payload, name):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_state, "extra": payload}, path)  # protocol 2: torch itself names the global
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(path))
    assert "contains pickled Python objects (loading it calls " in e.value.what and name in e.value.what
    assert "weights_only" not in str(e.value) and "add_safe_globals" not in str(e.value)
    assert e.value.fix.startswith("get the weights alone, which load without running code")


def test_protocol_4_state_dict_is_not_called_code(tmp_path: Path, tiny_state):
    """torch's weights-only reader stops at protocol 4's FRAME opcode; the file holds only tensors."""
    path = tmp_path / "p4.pt"
    torch.save(tiny_state, path, pickle_protocol=4)
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(path))
    assert "was pickled with protocol 4" in e.value.what and "pickled Python objects" not in e.value.what
    assert "no pickle_protocol argument" in e.value.fix


def test_directory_given_as_checkpoint(tmp_path: Path, tiny_state):
    d = tmp_path / "run"
    d.mkdir()
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(d))
    assert e.value.what == f"checkpoint {d} is a directory, not a file" and "this folder holds none" in e.value.fix
    torch.save(tiny_state, d / "net_g_latest.pth")
    (d / "train.log").write_text("x")
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(d))
    assert e.value.fix == f"pass the checkpoint file inside it: {d / 'net_g_latest.pth'}"
    save_file(tiny_state, str(d / "ema.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(d))
    assert e.value.fix == "pass one of the checkpoint files inside it: ema.safetensors, net_g_latest.pth"


def test_empty_file(tmp_path: Path):
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is an empty file \(0 bytes\)") as e:
        load("amnet", "tiny", checkpoint=str(tmp_path / "w.pth"))
    assert "did not finish" in e.value.fix


def test_onnx_model_given_as_checkpoint(tmp_path: Path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, producer_name="pytorch")
    for name in ("model.onnx", "model.pt"):  # by suffix, and by content under a checkpoint's suffix
        onnx.save(model, str(tmp_path / name))
        with pytest.raises(CheckpointError) as e:
            load("amnet", "tiny", checkpoint=str(tmp_path / name))
        assert e.value.what == f"{tmp_path / name} is an ONNX model, not a PyTorch checkpoint"
        assert e.value.fix == f"compile it directly, passing it as the first argument: lowlight-compile {tmp_path / name} --target ..."


# --- checkpoints as people have them --------------------------------------------------------


def _shift(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by if v.is_floating_point() else v for k, v in state.items()}


def test_wrappers_and_prefixes_are_unwrapped_and_reported(tmp_path: Path, tiny_state):
    ema = _shift(tiny_state, 1.0)
    lightning = {f"model.{k}": v for k, v in tiny_state.items()}
    lightning["loss_fn.vgg.0.weight"] = torch.zeros(2)  # Lightning modules hold their loss nets too
    cases = {
        "basicsr.pth": ({"params": tiny_state}, tiny_state, ["unwrapped 'params'"]),
        "basicsr_ema.pth": ({"params": tiny_state, "params_ema": ema}, ema,
                            ["unwrapped 'params_ema' (BasicSR's EMA weights, preferred over its 'params')"]),
        "lightning.ckpt": ({"state_dict": lightning, "epoch": 7, "global_step": 700}, tiny_state,
                           ["unwrapped 'state_dict'", "stripped prefix 'model.' (ignored 1 key(s) outside it: loss_fn)"]),
        "ddp.pt": ({f"module.{k}": v for k, v in tiny_state.items()}, tiny_state, ["stripped prefix 'module.'"]),
        "model.pt": ({"model": tiny_state, "optimizer": {"lr": 1e-3}}, tiny_state, ["unwrapped 'model'"]),
        "msd.pt": ({"model_state_dict": {f"module.{k}": v for k, v in tiny_state.items()}, "epoch": 3}, tiny_state,
                   ["unwrapped 'model_state_dict'", "stripped prefix 'module.'"]),
        "plain.pt": (tiny_state, tiny_state, []),
    }
    for name, (obj, want, notes) in cases.items():
        torch.save(obj, tmp_path / name)
        loaded = load_checkpoint("amnet", "tiny", checkpoint=str(tmp_path / name))
        assert loaded.notes == notes, name
        assert loaded.config == "tiny"
        for k, v in loaded.model.state_dict().items():
            assert torch.equal(v, want[k]), (name, k)


def test_prefix_is_stripped_only_where_it_makes_keys_match(tmp_path: Path, tiny_state):
    # keys that already match keep their names even though one has a prefix-like first component
    loaded = read_state_dict(_save(tmp_path, tiny_state), expected=tiny_state)
    assert isinstance(loaded, LoadedState) and loaded.exact and loaded.notes == [] and loaded.tensors.keys() == tiny_state.keys()
    # without a model to match, nothing is stripped
    prefixed = {f"module.{k}": v for k, v in tiny_state.items()}
    assert set(read_state_dict(_save(tmp_path, prefixed)).tensors) == set(prefixed)


def _save(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / "s.safetensors"
    save_file(state, str(path))
    return str(path)


def test_lightning_prefix_with_a_missing_key_lists_only_that_key(tmp_path: Path, tiny_state):
    """Before: 70 missing + 70 unexpected and no hint. Now: the prefix is stripped, one key is missing."""
    state = {f"model.{k}": v for k, v in tiny_state.items() if k != "head.bias"}
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(tmp_path / "last.ckpt"))
    assert e.value.what == (
        "checkpoint does not match amnet config 'tiny': 1 missing key(s): head.bias; "
        "(unwrapped 'state_dict'); (stripped prefix 'model.' (the closest match))"
    )


def test_checkpoint_of_a_submodule_names_the_prefix(tmp_path: Path, tiny_state):
    part = {k[len("aux_encoders.event."):]: v for k, v in tiny_state.items() if k.startswith("aux_encoders.event.")}
    save_file(part, str(tmp_path / "event.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load("amnet", "tiny", checkpoint=str(tmp_path / "event.safetensors"))
    # the event and IR encoders have the same structure: both prefixes fit
    assert (f"{len(part)} of the checkpoint's {len(part)} keys match the model's keys under prefix "
            "'aux_encoders.event.' or 'aux_encoders.ir.': it may hold only that part of the model") in e.value.what


def test_config_auto_finds_the_named_config(tmp_path: Path, tiny_state):
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_state.items()}}, tmp_path / "w.ckpt")
    assert resolve_config("amnet", "auto", str(tmp_path / "w.ckpt")) == ("tiny", ["config auto: the checkpoint matches amnet config 'tiny'"])
    loaded = load_checkpoint("amnet", "auto", checkpoint=str(tmp_path / "w.ckpt"))
    assert loaded.config == "tiny" and loaded.notes[0] == "config auto: the checkpoint matches amnet config 'tiny'"
    assert resolve_config("amnet", None) == ("base", []) and resolve_config("amnet", "tiny") == ("tiny", [])
    with pytest.raises(LowlightError, match="has no config 'huge'"):
        resolve_config("amnet", "huge")
    with pytest.raises(LowlightError, match="cannot read a config from an options file"):
        resolve_config("amnet", "train.yml")
