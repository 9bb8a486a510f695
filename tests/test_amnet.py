"""AMNet: configs, shapes, modality sets, per-frame independence, shape errors."""
from __future__ import annotations

import pytest
import torch

from lowlight.models import build, get_family
from lowlight.models.amnet import AMNet, CONFIGS, input_shapes
from lowlight.core.errors import LowlightError, ShapeError


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_tiny_is_under_200k_and_base_larger():
    assert n_params(build("amnet", "tiny")) < 200_000
    assert n_params(build("amnet", "base")) > 3 * n_params(build("amnet", "tiny"))


@pytest.mark.parametrize("modalities", ["rgb", "rgb+event", "rgb+ir", "rgb+event+ir"])
def test_every_modality_set_runs_and_keeps_shape(modalities):
    torch.manual_seed(0)
    m = build("amnet", "tiny").eval()
    shapes = input_shapes("2x3x3x32x48", "tiny", modalities)
    inputs = {k: torch.rand(s) for k, s in shapes.items()}
    y = m(**inputs)
    assert y.shape == (2, 3, 3, 32, 48)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_real_modality_changes_output_and_missing_uses_translator():
    torch.manual_seed(0)
    m = build("amnet", "tiny").eval()
    rgb = torch.rand(1, 2, 3, 32, 32)
    with torch.no_grad():
        a = m(rgb)
        b = m(rgb, event=torch.rand(1, 2, CONFIGS["tiny"].event_bins, 32, 32))
    assert not torch.allclose(a, b)


def _model_and_clips_differing_in_frame_1() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    m = build("amnet", "tiny").eval()
    clip = torch.rand(1, 3, 3, 32, 32)
    other = clip.clone()
    other[:, 1] = torch.rand(3, 32, 32)
    return m, clip, other


def test_encoder_is_per_frame():
    """Changing frame 1 must not change frame 0's encoder features (streaming caches them)."""
    m, clip, other = _model_and_clips_differing_in_frame_1()
    with torch.no_grad():
        za, zb = m.encode(clip), m.encode(other)
    for a, b in zip(za, zb):
        assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_temporal_module_mixes_frames():
    m, clip, other = _model_and_clips_differing_in_frame_1()
    with torch.no_grad():
        assert not torch.allclose(m(clip)[0, 0], m(other)[0, 0])


@pytest.mark.parametrize(
    "shape, words",
    [
        ("1x8x3x250x256", ["dimension 3 (height) is 250", "multiple of 4"]),
        ("1x8x1x256x256", ["dimension 2 (channels) is 1"]),
        ("1x8x3x256", ["4 dimensions", "[B,T,3,H,W]"]),
        ("1x8x3x8x256", ["at least 16"]),
        ("1xeightx3x256x256", ["not a list of integers"]),
    ],
)
def test_bad_shapes_say_which_dimension(shape, words):
    with pytest.raises(ShapeError) as e:
        input_shapes(shape, "base", "rgb")
    for w in words:
        assert w in str(e.value)


def test_unknown_modalities_and_config():
    with pytest.raises(LowlightError, match="rgb\\+event\\+ir"):
        build("amnet", "tiny", modalities="rgb+lidar")
    with pytest.raises(LowlightError, match="no config 'huge'"):
        build("amnet", "huge")


def test_family_input_shapes_follow_modalities():
    fam = get_family("amnet")
    shapes = {t.name: t.shape for t in fam.inputs("1x8x3x64x64", "base", modalities="rgb+event+ir")}
    assert list(shapes) == ["rgb", "event", "ir"]
    assert shapes["event"] == (1, 8, CONFIGS["base"].event_bins, 64, 64) and shapes["ir"] == (1, 8, 1, 64, 64)


def test_model_class_is_exported_module():
    assert isinstance(build("amnet", "tiny"), AMNet)


def test_checkpoint_without_exposure_context_loads_as_the_network_it_was_trained_as(tmp_path):
    """A checkpoint saved before `ExposureContext` existed: the context comes in at identity (fc2 = 0),
    so the output is exactly the old network's; fc1 is not zero, so fine-tuning from it can learn."""
    from safetensors.torch import save_file

    from lowlight.models import load_checkpoint

    torch.manual_seed(0)
    m = build("amnet", "tiny").eval()
    old = {k: v for k, v in m.state_dict().items() if not k.startswith("context.")}
    save_file(old, str(tmp_path / "old.safetensors"))
    got = load_checkpoint("amnet", "tiny", str(tmp_path / "old.safetensors"))
    assert any("exposure context" in n for n in got.notes)
    assert float(got.model.context.fc2.weight.abs().sum()) == 0.0 and float(got.model.context.fc1.weight.abs().sum()) > 0.0
    clip = torch.rand(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(got.model(clip), m(clip))


def test_exposure_context_reads_the_whole_frame():
    """With a trained (non-zero) context, a change far outside a pixel's ~60 px receptive field moves it:
    how much to brighten is decided from the frame's statistics, not local content alone."""
    torch.manual_seed(0)
    m = build("amnet", "tiny").eval()
    torch.nn.init.normal_(m.context.fc2.weight, std=0.5)
    clip = torch.rand(1, 1, 3, 32, 256) * 0.2
    other = clip.clone()
    other[..., 160:] = 0.9  # a bright region > 100 px from column 0
    with torch.no_grad():
        a, b = m(clip)[..., :8], m(other)[..., :8]
        torch.nn.init.zeros_(m.context.fc2.weight)
        c, d = m(clip)[..., :8], m(other)[..., :8]
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(c, d, atol=1e-6)  # without the context the far change does not reach column 0
