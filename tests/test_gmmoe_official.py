"""GM-MoE checkpoints of the official code (Sameenok/gm-moe-lowlight-enhancement, `OURNet24`).

Their weights cannot be downloaded here, so `OfficialNet` below is a transcription
of OURNet24's forward (basicsr/models/archs/OURNet24_arch.py) with the official
module names, written for this test: its state_dict has the official keys, and our
model loaded from it (key renaming + layout inference) must compute the same
function. The official forward does not clamp; ours clamps in eval mode, so the
comparison runs our model in training mode (no clamp; no dropout or batch norm,
so nothing else changes) and checks the eval output is the clamp of theirs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import lowlight.models as models
from lowlight.core.errors import CheckpointError, LowlightError
from lowlight.models.gmmoe import (
    CONFIGS,
    RELEASED,
    GMMoE,
    GMMoEConfig,
    _tiny_yaml_section,
    config_from_options,
    config_name,
    infer_layout,
    layout_name,
    official_to_ours,
    parse_layout,
)

# --- a transcription of the official network (their names, their forward) ---------------------


class _LN(nn.Module):
    """NAFNet's LayerNorm2d (basicsr arch_util): over channels, eps 1e-6, params `weight`/`bias`."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return self.weight.view(1, -1, 1, 1) * ((x - mu) / (var + 1e-6).sqrt()) + self.bias.view(1, -1, 1, 1)


class _Expert1(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        f = n // 4
        self.conv1, self.conv_f = nn.Conv2d(n, f, 1), nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3, self.conv3_ = nn.Conv2d(f, f, 3, padding=1), nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        v = F.relu(self.conv_max(F.max_pool2d(self.conv2(c1_), kernel_size=7, stride=3)))
        c3 = self.conv3_(F.relu(self.conv3(v)))
        c3 = F.interpolate(c3, (x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))


class _CALayer(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(c, c // 16, 1), nn.ReLU(), nn.Conv2d(c // 16, c, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(F.adaptive_avg_pool2d(x, 1))


class _SA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1))) * x


class _Expert2(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(n, n, 1)
        self.c2, self.c3 = nn.Conv2d(n, n // 2, 3, padding=1), nn.Conv2d(n, n // 2, 3, padding=1)
        self.c4 = nn.Conv2d(2 * n, n, 3, padding=1)
        self.c5 = nn.Conv2d(n // 2, n // 2, 3, padding=1)
        self.c6 = nn.Conv2d(2 * n, n, 1)
        self.se, self.sa = _CALayer(2 * n), _SA()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = F.relu(self.c1(x))
        y2, y3 = F.relu(self.c2(y1)), F.relu(self.c3(y1))
        y4 = F.relu(self.c4(torch.cat([y1, y2, y3], 1)))
        cat2 = torch.cat([y2, self.c5(y3), y4], 1)
        return x + self.c6(self.se(cat2) + self.sa(cat2))


class _Block(nn.Module):
    """The official ExpertBlock: Expert3's layers live directly in the block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        dw = 2 * c
        self.conv1, self.conv2 = nn.Conv2d(c, dw, 1), nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv4, self.conv5 = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.norm1, self.norm2 = _LN(c), _LN(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.conv6 = nn.Conv2d(c, 50, 1)  # unused in their forward
        self.conv11, self.conv33, self.conv55 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 5, padding=2)
        self.Expert1, self.Expert2 = _Expert1(c), _Expert2(c)
        self.GateNetwork = nn.Sequential(nn.Linear(c, c // 4, bias=False), nn.ReLU(), nn.Linear(c // 4, 3, bias=False))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        e1, e2 = self.Expert1(inp), self.Expert2(inp)
        x = self.norm1(inp)
        x = self.conv1(self.conv11(x) + self.conv33(x) + self.conv55(x))
        a, b = self.conv2(x).chunk(2, dim=1)
        x = a * b
        y = inp + self.conv3(x * self.sca(x)) * self.beta
        a, b = self.conv4(self.norm2(y)).chunk(2, dim=1)
        e3 = y + self.conv5(a * b) * self.gamma
        w = F.softmax(self.GateNetwork(inp.mean((2, 3))) / 3, dim=1)
        return e1 * w[:, 0].view(-1, 1, 1, 1) + e2 * w[:, 1].view(-1, 1, 1, 1) + e3 * w[:, 2].view(-1, 1, 1, 1)


class _MSFE(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(d, d, 5, padding=2, groups=d)
        self.conv_spatial = nn.Conv2d(d, d, 7, padding=9, groups=d, dilation=3)
        self.conv1, self.conv2 = nn.Conv2d(d, d // 2, 1), nn.Conv2d(d, d // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(d // 2, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = self.conv0(x)
        a2 = self.conv_spatial(a1)
        a1, a2 = self.conv1(a1), self.conv2(a2)
        attn = torch.cat([a1, a2], 1)
        sig = self.conv_squeeze(torch.cat([attn.mean(1, keepdim=True), attn.max(1, keepdim=True)[0]], 1)).sigmoid()
        return x * self.conv(a1 * sig[:, 0:1] + a2 * sig[:, 1:2])


class OfficialNet(nn.Module):
    """OURNet24(img_channel=3, width, middle_blk_num, enc_blk_nums, dec_blk_nums), official names."""

    def __init__(self, width: int, middle_blk_num: int, enc_blk_nums: list[int], dec_blk_nums: list[int]) -> None:
        super().__init__()
        self.intro, self.ending = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, 3, 3, padding=1)
        self.encoders, self.decoders, self.ups, self.downs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = width
        for n in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[_Block(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, 2))
            c *= 2
        self.middle_blks = nn.Sequential(*[_Block(c) for _ in range(middle_blk_num)])
        for n in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[_Block(c) for _ in range(n)]))
        self.pad = 2 ** len(self.encoders)
        self.MSFEblock = _MSFE(width)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        _, _, h, w = inp.shape
        inp = F.pad(inp, (0, (self.pad - w % self.pad) % self.pad, 0, (self.pad - h % self.pad) % self.pad))
        x = self.MSFEblock(self.intro(inp))
        encs = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            encs.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for dec, up, skip in zip(self.decoders, self.ups, encs[::-1]):
            x = dec(up(x) + skip)
        return (self.ending(x) + inp)[:, :, :h, :w]  # no clamp


# width 8: the smallest the official code builds (c // 4 and 2c // 16 channels); two stages with
# unequal block counts, so layout inference has something to get wrong
LAYOUT: dict[str, Any] = dict(width=8, middle_blk_num=2, enc_blk_nums=[1, 2], dec_blk_nums=[2, 1])
OURS = GMMoEConfig(width=8, enc_blocks=(1, 2), middle_blocks=2, dec_blocks=(2, 1))
SHAPE = (2, 3, 61, 67)  # not a multiple of 4 (pad + crop); min side for two stages is 57


def official(seed: int) -> OfficialNet:
    torch.manual_seed(seed)
    net = OfficialNet(**LAYOUT).eval()
    with torch.no_grad():  # fresh blocks are partly the identity (zero beta/gamma): randomise everything
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")) or ".norm" in name:
                p.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def basicsr_ckpt(tmp_path_factory) -> tuple[Path, OfficialNet, OfficialNet]:
    """A BasicSR checkpoint {'params', 'params_ema'} of two different official nets."""
    raw, ema = official(0), official(1)
    path = tmp_path_factory.mktemp("official") / "net_g_latest.pth"
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, path)
    return path, raw, ema


def test_official_checkpoint_loads_with_config_auto_and_matches_their_forward(basicsr_ckpt):
    path, _raw, ema = basicsr_ckpt
    loaded = models.load_checkpoint("gmmoe", config="auto", checkpoint=str(path), experts="dense")
    assert loaded.config == layout_name(OURS) == "w8-e1.2-m2-d2.1"
    assert loaded.notes == [
        "config auto: w8-e1.2-m2-d2.1 (width 8, encoder blocks 1,2, 2 middle block(s), decoder blocks 2,1), "
        "read from the checkpoint's keys and shapes",
        "unwrapped 'params_ema' (BasicSR's EMA weights, preferred over its 'params')",
        f"renamed {len(ema.state_dict())} keys from the official GM-MoE code's naming (OURNet24)",
    ]
    model = loaded.model
    assert isinstance(model, GMMoE) and model.cfg == OURS and not model.training
    torch.manual_seed(2)
    x = torch.rand(*SHAPE)
    with torch.no_grad():
        ref = ema(x)
        clamped = model(x)
        unclamped = model.train()(x)
    assert (ref.min() < 0 or ref.max() > 1), "the test should exercise the clamp"
    torch.testing.assert_close(unclamped, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clamped, ref.clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_prefixed_flat_official_state_and_top2_mode(tmp_path: Path):
    net = official(3)
    # a DDP run saved without BasicSR's prefix stripping, as safetensors
    save_file({f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = models.load_checkpoint("gmmoe", config="auto", checkpoint=str(tmp_path / "w.safetensors"), experts="top2")
    assert loaded.notes[1:] == [f"renamed {len(net.state_dict())} keys from the official GM-MoE code's naming (OURNet24)",
                                "stripped prefix 'module.'"]
    dense = models.load("gmmoe", config=loaded.config, checkpoint=str(tmp_path / "w.safetensors"), experts="dense")
    for k, v in dense.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_official_checkpoint_under_a_named_config_says_auto(basicsr_ckpt):
    path = basicsr_ckpt[0]
    with pytest.raises(CheckpointError) as e:
        models.load("gmmoe", config="tiny", checkpoint=str(path), experts="dense")
    assert e.value.fix == "this checkpoint is gmmoe config 'w8-e1.2-m2-d2.1': pass --config auto (its layout: w8-e1.2-m2-d2.1)"
    # the official keys were renamed before comparing: what is listed is a layout difference, not naming
    assert "renamed" in e.value.what and "GateNetwork" not in e.value.what


def test_key_mapping_covers_every_official_key():
    net = OfficialNet(**LAYOUT)
    renamed, note = official_to_ours(net.state_dict())
    ours = GMMoE(OURS).state_dict()
    assert set(renamed) == set(ours) and all(renamed[k].shape == ours[k].shape for k in ours)
    assert official_to_ours(ours) is None  # our own naming is left alone
    assert renamed["encoders.1.1.experts.0.conv_b.weight"] is net.state_dict()["encoders.1.1.Expert1.conv3_.weight"] or torch.equal(
        renamed["encoders.1.1.experts.0.conv_b.weight"], net.state_dict()["encoders.1.1.Expert1.conv3_.weight"])


def test_released_layout_parameter_count_on_meta_device():
    """The released layout: 690,851,505 parameters (the issue's 690.85M), theirs and ours, no memory used."""
    with torch.device("meta"):
        ours = GMMoE(RELEASED, experts="dense")
        theirs = OfficialNet(width=48, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2])
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters()) == 690_851_505
    assert len(ours.blocks()) == 2 + 2 + 4 + 8 + 12 + 8 == 36
    state = theirs.state_dict()
    assert len(state) == 2152
    assert models.get_family("gmmoe").infer_config({f"module.{k}": v for k, v in state.items()}) == "w48-e2.2.4.8-m12-d2.2.2.2"
    renamed, _ = official_to_ours(state)
    assert infer_layout(renamed) == RELEASED


def test_layout_names_are_configs():
    assert list(CONFIGS) == ["tiny", "small", "paper"]  # the listing is unchanged
    assert "w48-e2.2.4.8-m12-d2.2.2.2" in CONFIGS and CONFIGS["w48-e2.2.4.8-m12-d2.2.2.2"] == RELEASED
    assert parse_layout(layout_name(CONFIGS["small"])) == CONFIGS["small"] and layout_name(CONFIGS["small"]).endswith("-lean")
    assert config_name(parse_layout("w24-e1.1.1.1-m1-d1.1.1.1")) == "paper"
    for bad in ("w7-e1-m1-d1", "w8-e1.1-m1-d1", "big", "w8-e-m1-d1"):
        assert bad not in CONFIGS
    assert models.get_family("gmmoe").inputs("1x3x240x320", "w48-e2.2.4.8-m12-d2.2.2.2", experts="dense")[0].shape == (1, 3, 240, 320)


OPTIONS_YML = """\
# general settings
name: GMMoE-LOLv1
model_type: ImageRestorationModel
num_gpu: 4

network_g:
  type: OURNet24
  width: 48   # channels at full resolution
  enc_blk_nums: [2, 2, 4, 8]
  middle_blk_num: 12
  dec_blk_nums: [2, 2, 2, 2]

path:
  pretrain_network_g: ~
"""


def test_options_yaml(tmp_path: Path):
    yml = tmp_path / "train_LOLv1.yml"
    yml.write_text(OPTIONS_YML)
    assert _tiny_yaml_section(OPTIONS_YML, "network_g") == {
        "type": "OURNet24", "width": "48", "enc_blk_nums": ["2", "2", "4", "8"], "middle_blk_num": "12", "dec_blk_nums": ["2", "2", "2", "2"],
    }
    name, notes = config_from_options(yml)
    assert name == "w48-e2.2.4.8-m12-d2.2.2.2"
    assert notes == ["config from train_LOLv1.yml: network_g OURNet24, width 48, encoder blocks 2,2,4,8, 12 middle block(s), decoder blocks 2,2,2,2"]
    assert models.resolve_config("gmmoe", str(yml)) == (name, notes)
    yml.write_text(OPTIONS_YML.replace("OURNet24", "NAFNet"))
    with pytest.raises(CheckpointError, match="network_g type 'NAFNet' is not GM-MoE's"):
        models.resolve_config("gmmoe", str(yml))
    yml.write_text("name: x\n")
    with pytest.raises(LowlightError, match="has no network_g section"):
        models.resolve_config("gmmoe", str(yml))
    with pytest.raises(LowlightError, match="does not exist"):
        models.resolve_config("gmmoe", str(tmp_path / "missing.yml"))
    # a fresh model from the options alone (no checkpoint): built at that layout
    yml.write_text(OPTIONS_YML.replace("[2, 2, 4, 8]", "[1]").replace("[2, 2, 2, 2]", "[1]").replace("48", "8").replace("12", "1"))
    assert models.build("gmmoe", str(yml), experts="dense").cfg == GMMoEConfig(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,))


def test_auto_needs_a_checkpoint_and_a_gmmoe_one(tmp_path: Path):
    with pytest.raises(LowlightError, match="--config auto reads the config from a checkpoint"):
        models.load("gmmoe", config="auto", experts="dense")
    save_file({"conv.weight": torch.zeros(3, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="cannot tell which gmmoe config") as e:
        models.load("gmmoe", config="auto", checkpoint=str(tmp_path / "other.safetensors"))
    assert "first keys: conv.weight" in e.value.what and "--config train.yml" in (e.value.fix or "")


def test_external_data_export_of_official_weights(tmp_path: Path, basicsr_ckpt, monkeypatch):
    """Past the threshold (lowered here from 1.8 GB) the export writes model.onnx + model.onnx.data; both run."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from lowlight.compile.export import EXTERNAL_DATA_ENV, export_onnx, external_data_threshold, onnx_files, onnx_sha256, save_onnx

    path, _raw, ema = basicsr_ckpt
    model = models.load("gmmoe", config="auto", checkpoint=str(path), experts="dense")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "10000")
    files = export_onnx(model, {"rgb": x.numpy()}, "enhanced", tmp_path / "model.onnx")
    assert files == [tmp_path / "model.onnx", tmp_path / "model.onnx.data"] == onnx_files(tmp_path / "model.onnx")
    data = (tmp_path / "model.onnx.data").stat().st_size
    # the weights are in the side file: 95% of the float32 bytes of the parameters the graph uses
    # (Expert3's unused conv is dropped; tensors under 1 KB, the biases, stay inline)
    used = sum(p.numel() for n, p in model.named_parameters() if ".unused." not in n)
    assert 0.9 * 4 * used < data <= 4 * used
    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    inline = [t for t in proto.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert inline and max(t.ByteSize() for t in inline) < 1100  # only what is under the 1 KB size_threshold
    # re-saving in place (as a later stage would) must not append to the old data file (onnx appends)
    assert save_onnx(onnx.load(str(tmp_path / "model.onnx")), tmp_path / "model.onnx") == files
    assert (tmp_path / "model.onnx.data").stat().st_size == data
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    out = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"rgb": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, ema(x).clamp(0, 1).numpy(), rtol=1e-4, atol=1e-4)
    # the hash covers the weights, which the .onnx alone does not hold
    before = onnx_sha256(tmp_path / "model.onnx")
    with open(tmp_path / "model.onnx.data", "r+b") as f:
        f.seek(data // 2)
        f.write(b"\x00\x01\x02\x03")
    assert onnx_sha256(tmp_path / "model.onnx") != before
    # below the threshold (1.8 GB by default): one file, and the stale data file is removed
    monkeypatch.delenv(EXTERNAL_DATA_ENV)
    assert external_data_threshold() == 1.8e9
    assert save_onnx(onnx.load(str(tmp_path / "model.onnx")), tmp_path / "model.onnx") == [tmp_path / "model.onnx"]
    assert not (tmp_path / "model.onnx.data").exists()


def test_compiled_dense_bundle_reproduces_the_official_network(basicsr_ckpt, tmp_path: Path, capsys):
    """Official BasicSR checkpoint in, --experts dense, default --config (auto): the bundle's output is
    the official forward's (clamped to [0,1], which the official code does not do)."""
    import json

    import numpy as np

    import lowlight.runtime as rt
    from lowlight.calibration.data import SAMPLES_DIR
    from lowlight.compile.cli import main

    path, _raw, ema = basicsr_ckpt
    out = tmp_path / "official"
    assert main([str(path), "--model", "gmmoe", "--experts", "dense", "--shape", "1x3x64x64", "--precision", "fp32",
                 "--calib", str(SAMPLES_DIR), "--verify-frames", "2", "--profile-runs", "2", "--quiet",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"] == "w8-e1.2-m2-d2.1" and m["family_options"] == {"experts": "dense"}
    assert any("params_ema" in n for n in m["load_notes"]) and any("OURNet24" in n for n in m["load_notes"])
    x = np.load(out / "reference.npz")["input:rgb"][:1].reshape(1, 3, 64, 64)
    y = rt.load(out, verbose=False)(rgb=x)
    with torch.no_grad():
        want = ema(torch.from_numpy(x)).clamp(0, 1).numpy()
    assert np.abs(y - want).max() < 1e-4
