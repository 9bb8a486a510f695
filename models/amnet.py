"""AMNet ("AnyMod-LLVE: Low-Light Video Enhancement with Modality-Agnostic Inference"): low-light video enhancement with optional event/IR inputs.

Read top to bottom:
  1. a per-frame RGB encoder gives multi-scale features z1 (1/1), z2 (1/2), z3 (1/4);
  2. per auxiliary modality (event, IR), an S2DG translator turns z3 into an
     *implicit* auxiliary feature: IADS (spatial illumination gate) then FBS
     (spectral gate on the rfft2 of the gated high-frequency part);
  3. real auxiliary inputs, when given, go through their own encoders instead;
  4. fusion of RGB + (real or implicit) event + (real or implicit) IR features, then a
     per-frame exposure context (our addition: FiLM from the features' global statistics);
  5. a temporal module mixes each frame with its neighbours across the clip;
  6. a decoder with skips predicts a residual added to the input frame.

The per-frame encoder never looks at other frames, so a streaming runtime can
cache its features. The two gates call `lowlight.kernels` custom ops, so the
exported graph holds one node per gate (decomposed or turned into a TensorRT
plugin by the target's lowering).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowlight.kernels import illumination_gate, spectral_gate
from lowlight.models.family import Component, Family, KeepFloat, Option, Tensor

MODALITY_SETS = ("rgb", "rgb+event", "rgb+ir", "rgb+event+ir")
AUX = ("event", "ir")


@dataclass(frozen=True)
class AMNetConfig:
    widths: tuple[int, int, int]  # channels at 1/1, 1/2, 1/4 resolution
    event_bins: int = 5  # B of the event voxel grid
    pool_k: int = 5  # IADS average-pool window (odd)
    temporal_blocks: int = 2  # each widens the temporal receptive field by 2 frames


CONFIGS = {
    # < 200k parameters: for tests and the quick demo path.
    "tiny": AMNetConfig(widths=(8, 16, 32), temporal_blocks=1),
    # The Orin-at-720p size: 0.55M parameters, ~78 GFLOP per megapixel (72 GFLOP
    # per 1280x720 frame): ~1.7 ms compute-bound in FP16 on an AGX Orin (42.5
    # TFLOPS), so 30 fps at 720p leaves most of the GPU to the detectors behind
    # it. Widening the 1/4-resolution stage to 96 channels doubled training cost
    # on this 2-core CPU (1.8 s vs 0.85 s a step) for a model that must train in
    # about an hour.
    "base": AMNetConfig(widths=(16, 32, 64), temporal_blocks=2),
}


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv3(c, c), conv3(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class RGBEncoder(nn.Module):
    """Per-frame encoder: [N,3,H,W] -> (z1, z2, z3) at 1/1, 1/2, 1/4 resolution."""

    def __init__(self, widths: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.inc, self.block1 = conv3(3, c1), ResBlock(c1)
        self.down2, self.block2 = conv3(c1, c2, 2), ResBlock(c2)
        self.down3, self.block3 = conv3(c2, c3, 2), ResBlock(c3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z1 = self.block1(F.relu(self.inc(x)))
        z2 = self.block2(F.relu(self.down2(z1)))
        z3 = self.block3(F.relu(self.down3(z2)))
        return z1, z2, z3


class AuxEncoder(nn.Module):
    """Encoder for a real auxiliary input (event voxels or IR): [N,cin,H,W] -> [N,c3,H/4,W/4]."""

    def __init__(self, cin: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        _, c2, c3 = widths
        self.down2, self.down3, self.out = conv3(cin, c2, 2), conv3(c2, c3, 2), conv3(c3, c3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.down3(F.relu(self.down2(x)))))


#: The FBS gate sees spectra as at this feature side (the 1/4-resolution side of the 128 px training crops).
FBS_REF_SIDE = 32


class S2DG(nn.Module):
    """Spatial-Spectral Dual-Gated translator: RGB features -> implicit auxiliary features.

    IADS: low = AvgPool(z), high = z - low, high *= sigmoid(conv1x1(low)).
    FBS:  F = rfft2(high); F *= sigmoid(conv(F)) * (1 + tanh(conv(F))) on the stacked
          real/imag channels; back with irfft2; add `low` back (global context).

    One change from the paper: the gate's convolutions see F scaled by FBS_REF_SIDE / sqrt(h w),
    while the gate multiplies F itself. With the orthonormal FFT a scene's structure grows as
    sqrt(h w) in F, so at 640x480 (features 160x120) the gate, trained on 32x32 features, met
    coefficients 4x larger than ever in training and boosted a few of them up to 2x: the
    axis-aligned lattice of ~30 px seen in night skies (lattice ratio 3.0 on real photos with the
    first reference weights, 0.7 with the gate held at identity). At the training size the
    scale is 1, so the gate is exactly the paper's there.
    """

    def __init__(self, c: int, pool_k: int) -> None:
        super().__init__()
        self.pool_k = pool_k
        # Gate weights are [out, in] matrices (1x1 convs), the layout the kernels take.
        self.iads_w = nn.Parameter(torch.randn(c, c) * (0.1 / c**0.5))
        self.iads_b = nn.Parameter(torch.zeros(c))
        self.fbs_wg = nn.Parameter(torch.randn(2 * c, 2 * c) * (0.1 / c**0.5))
        self.fbs_bg = nn.Parameter(torch.full((2 * c,), 2.0))  # start nearly open
        self.fbs_ws = nn.Parameter(torch.randn(2 * c, 2 * c) * (0.1 / c**0.5))
        self.fbs_bs = nn.Parameter(torch.zeros(2 * c))
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        high, low = illumination_gate(z, self.iads_w, self.iads_b, self.pool_k)
        spec = torch.fft.rfft2(high, norm="ortho")
        # conv(s F) = (s W) F + b: scale the weights, not the spectrum (static shapes: a constant at export)
        s = FBS_REF_SIDE / float(z.shape[-2] * z.shape[-1]) ** 0.5
        re, im = spectral_gate(spec.real, spec.imag, self.fbs_wg * s, self.fbs_bg, self.fbs_ws * s, self.fbs_bs)
        high = torch.fft.irfft2(torch.complex(re, im), s=(z.shape[-2], z.shape[-1]), norm="ortho")
        return self.proj(high + low)


class ExposureContext(nn.Module):
    """Per-frame global context: FiLM of the fused 1/4 features from their spatial mean and std.

    Our addition to the paper's network. Without it an output pixel's convolutions see ~60 px of
    its frame (the FBS gate spans the frame but acts per frequency), so how much to brighten is
    guessed from local content: the reference weights without it brightened a normally exposed
    held-out photo from mean 0.28 to 0.44 (13.9 dB from itself) and left an sRGB-darkened one of
    mean 0.20 nearly as it was (target 0.46). With it, fine-tuned (README, Reference models):
    normal exposures 21.6 -> 27.5 dB from themselves, halo mean 0.12 -> 0.03. `fc2` starts at
    zero, so the block starts as the identity, and a checkpoint without it loads as exactly the
    network it was trained as (`AMNetFamily.checkpoint_rename`). It reads one frame: streaming
    caches it with the encoder.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2 * c, c), nn.Linear(c, 2 * c)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean((2, 3))
        sd = (x - mu[..., None, None]).pow(2).mean((2, 3)).add(1e-6).sqrt()
        scale, shift = self.fc2(F.relu(self.fc1(torch.cat([mu, sd], dim=1)))).chunk(2, dim=1)
        return x * (1.0 + scale[..., None, None]) + shift[..., None, None]


class TemporalBlock(nn.Module):
    """Mix each frame's features with its previous and next frame (edges repeat)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mix, self.conv = nn.Conv2d(3 * c, c, 1), conv3(c, c)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        v = x.reshape(n // frames, frames, c, h, w)
        if frames > 1:
            prev = torch.cat([v[:, :1], v[:, :-1]], dim=1)
            nxt = torch.cat([v[:, 1:], v[:, -1:]], dim=1)
        else:
            prev = nxt = v
        y = torch.cat([prev, v, nxt], dim=2).reshape(n, 3 * c, h, w)
        return x + self.conv(F.relu(self.mix(y)))


class Up(nn.Module):
    """x2 upsampling by pixel shuffle, additive skip, then a residual block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.expand, self.shuffle, self.block = nn.Conv2d(cin, cout * 4, 1), nn.PixelShuffle(2), ResBlock(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(self.shuffle(self.expand(x)) + skip)


class AMNet(nn.Module):
    """AMNet: `forward(rgb [B,T,3,H,W], event=None [B,T,bins,H,W], ir=None [B,T,1,H,W])`."""

    def __init__(self, config: AMNetConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        self.encoder = RGBEncoder(config.widths)
        self.translators = nn.ModuleDict({m: S2DG(c3, config.pool_k) for m in AUX})
        self.aux_encoders = nn.ModuleDict(
            {"event": AuxEncoder(config.event_bins, config.widths), "ir": AuxEncoder(1, config.widths)}
        )
        self.fuse = nn.Conv2d(3 * c3, c3, 1)
        self.fuse_block = ResBlock(c3)
        self.context = ExposureContext(c3)
        self.temporal = nn.ModuleList(TemporalBlock(c3) for _ in range(config.temporal_blocks))
        self.up2, self.up1 = Up(c3, c2), Up(c2, c1)
        self.head = conv3(c1, 3)

    # -- the pieces, separately callable for training losses --------------------------
    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame multi-scale RGB features of a [B,T,3,H,W] clip (frames flattened into N)."""
        return self.encoder(rgb.flatten(0, 1))

    def implicit(self, z3: torch.Tensor) -> dict[str, torch.Tensor]:
        """Implicit event/IR features translated from the RGB features."""
        return {m: self.translators[m](z3) for m in AUX}

    def real(self, event: torch.Tensor | None, ir: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Features of the auxiliary inputs that are present."""
        given = {"event": event, "ir": ir}
        return {m: self.aux_encoders[m](x.flatten(0, 1)) for m, x in given.items() if x is not None}

    def decode(
        self,
        rgb: torch.Tensor,
        feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        aux: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Fuse RGB + auxiliary features, mix over time, decode a residual onto the input."""
        b, t = rgb.shape[:2]
        z1, z2, z3 = feats
        x = F.relu(self.fuse(torch.cat([z3, aux["event"], aux["ir"]], dim=1)))
        x = self.context(self.fuse_block(x))
        for block in self.temporal:
            x = block(x, t)
        x = self.up1(self.up2(x, z2), z1)
        out = rgb.flatten(0, 1) + self.head(x)
        return out.clamp(0.0, 1.0).reshape(rgb.shape)

    def forward(
        self, rgb: torch.Tensor, event: torch.Tensor | None = None, ir: torch.Tensor | None = None
    ) -> torch.Tensor:
        feats = self.encode(rgb)
        real = self.real(event, ir)
        aux = {m: real[m] if m in real else self.translators[m](feats[2]) for m in AUX}
        return self.decode(rgb, feats, aux)


# -- family registration: what the compiler needs to know ------------------------------

def parse_modalities(modalities: str = "rgb") -> tuple[str, ...]:
    """'rgb+event' -> ('rgb', 'event'); the order of names in the result is the input order."""
    from lowlight.core.errors import LowlightError

    if modalities not in MODALITY_SETS:
        raise LowlightError(
            f"unknown modality set {modalities!r}", f"use --modalities with one of: {', '.join(MODALITY_SETS)}"
        )
    return tuple(modalities.split("+"))


class AMNetExport(nn.Module):
    """AMNet with a fixed modality set and positional inputs, for export."""

    def __init__(self, model: AMNet, modalities: str = "rgb") -> None:
        super().__init__()
        self.model, self.names = model, parse_modalities(modalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs)))


def build(config: str, modalities: str = "rgb") -> AMNet:
    """Fresh AMNet at `config`; `modalities` is checked here, used at export."""
    parse_modalities(modalities)
    return AMNet(CONFIGS[config])


def parse_shape(shape: str) -> tuple[int, ...]:
    from lowlight.core.errors import ShapeError

    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        raise ShapeError(f"--shape {shape!r} is not a list of integers like 1x8x3x256x256", "write it as BxTxCxHxW")
    return dims


def input_shapes(shape: str, config: str = "base", modalities: str = "rgb") -> dict[str, tuple[int, ...]]:
    """Named input shapes for a `BxTx3xHxW` shape string; raises ShapeError saying which dimension is wrong."""
    from lowlight.core.errors import ShapeError

    dims = parse_shape(shape)
    if len(dims) != 5:
        raise ShapeError(
            f"--shape {shape} has {len(dims)} dimensions; AMNet takes a clip [B,T,3,H,W]",
            "give five dimensions, e.g. 1x8x3x256x256",
        )
    b, t, c, h, w = dims
    fixes = []
    if c != 3:
        fixes.append(f"dimension 2 (channels) is {c}: the rgb input has 3 channels")
    if b < 1 or t < 1:
        fixes.append("batch and frame count (dimensions 0 and 1) must be at least 1")
    for axis, name, v in ((3, "height", h), (4, "width", w)):
        if v < 16 or v % 4:
            fixes.append(
                f"dimension {axis} ({name}) is {v}: AMNet downsamples twice by 2, so it must be a multiple of 4 "
                "and at least 16"
            )
    if fixes:
        raise ShapeError(f"AMNet cannot take shape {shape}: " + "; ".join(fixes), "e.g. --shape 1x8x3x256x256")
    bins = CONFIGS.get(config, CONFIGS["base"]).event_bins
    per_input = {"rgb": (b, t, 3, h, w), "event": (b, t, bins, h, w), "ir": (b, t, 1, h, w)}
    return {m: per_input[m] for m in parse_modalities(modalities)}


def default_shape(config: str = "base", modalities: str = "rgb") -> str:
    return "1x8x3x256x256"


def make_inputs(
    frames: list[np.ndarray], shape: str, config: str = "base", modalities: str = "rgb", seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Feeds for calibration/verification: each photo becomes a clip with small camera motion.

    Event voxels and IR (when part of the modality set) are synthesised from the
    same clip, the way the training data was.
    """
    from lowlight.calibration.degrade import event_voxels, motion_clip, pseudo_ir
    from lowlight.calibration.frames import fit_frame

    shapes = input_shapes(shape, config, modalities)
    b, t, _, h, w = shapes["rgb"]
    bins = CONFIGS[config].event_bins
    rng = np.random.default_rng(seed)
    margin = 4 * t
    clips = []
    for frame in frames:
        big = fit_frame(frame, h + margin, w + margin)
        clips.append(motion_clip(big, t, (h, w), rng, max_step=2))
    feeds = []
    for i in range(0, len(clips) - b + 1, b):
        group = clips[i : i + b]
        feed = {"rgb": np.stack([c.transpose(0, 3, 1, 2) for c in group]).astype(np.float32)}
        if "event" in shapes:
            feed["event"] = np.stack([event_voxels(c, bins) for c in group])
        if "ir" in shapes:
            # brighten before faking IR: an IR camera does not see the darkness
            feed["ir"] = np.stack([pseudo_ir(np.clip(c / max(c.mean(), 1e-3) * 0.4, 0, 1)) for c in group])
        feeds.append({k: v for k, v in feed.items() if k in shapes})
    return feeds


# -- streaming: the per-frame encoder and the temporal/decoder part as separate components --

def stream_window(config: str) -> int:
    """Frames the last output of a clip depends on: each temporal block reaches one frame back,
    so with `temporal_blocks` blocks the newest frame's output reads exactly that many previous
    frames (tiny: 2, base: 3). A causal window this long gives the same newest frame as any
    longer clip ending at it (edges repeat the first frame, as the clip model does)."""
    return CONFIGS[config].temporal_blocks + 1


class StreamEncoder(nn.Module):
    """Per-frame part of AMNet (RGB only): frame [B,3,H,W] -> z1, z2 and the fused, exposure-modulated 1/4 feature x3.

    Everything here looks at one frame (encoder, S2DG translators, fusion, exposure context), so a streaming
    runtime computes it once per frame and keeps x3 for the next frames' temporal module.
    """

    def __init__(self, model: AMNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        z1, z2, z3 = m.encoder(rgb)
        aux = m.implicit(z3)
        x = F.relu(m.fuse(torch.cat([z3, aux["event"], aux["ir"]], dim=1)))
        return z1, z2, m.context(m.fuse_block(x))


class StreamDecoder(nn.Module):
    """Temporal module over the window's cached x3 features, then the decoder for the newest frame.

    Inputs (positional): rgb [B,3,H,W] (newest frame), its z1 and z2, then x3 of the window,
    oldest first. Equals the clip model's output for the window's last frame.
    """

    def __init__(self, model: AMNet, window: int) -> None:
        super().__init__()
        self.model, self.window = model, window

    def forward(self, rgb: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *x3: torch.Tensor) -> torch.Tensor:
        m, k = self.model, self.window
        x = torch.stack(list(x3), dim=1).flatten(0, 1)  # [B*K, c, h, w], batch-major as TemporalBlock reads it
        for block in m.temporal:
            x = block(x, k)
        x = x.reshape(rgb.shape[0], k, *x.shape[1:])[:, -1]
        x = m.up1(m.up2(x, z2), z1)
        return (rgb + m.head(x)).clamp(0.0, 1.0)


def stream_input_shape(shape: str) -> tuple[int, int, int]:
    """(B, H, W) of a streaming bundle from `Bx3xHxW` or a clip shape `BxTx3xHxW` (T unused:
    the window is fixed by the config, `stream_window`)."""
    from lowlight.core.errors import ShapeError

    dims = parse_shape(shape)
    if len(dims) == 4:
        if dims[1] != 3:
            raise ShapeError(f"--shape {shape}: dimension 1 (channels) is {dims[1]}, the rgb input has 3", "e.g. --shape 1x3x256x256")
        dims = (dims[0], 1, 3, dims[2], dims[3])
    input_shapes("x".join(map(str, dims)))  # the same dimension checks as the clip model
    return dims[0], dims[3], dims[4]


class AMNetFamily(Family):
    """AMNet as the compiler sees it: one clip graph, spectral path and boundary convs float."""

    name = "amnet"
    summary = "AnyMod-LLVE: low-light video enhancement, optional event/IR inputs"
    configs = dict(CONFIGS)
    default_config = "base"
    default_family = True  # the reference model of `make demo`
    options = (
        Option("modalities", MODALITY_SETS, "rgb", "AMNet inputs, fixed per bundle"),
        Option("stream", ("no", "yes"), "no",
               "yes: compile the per-frame encoder and the temporal/decoder part as two components, so "
               "lowlight.runtime's stream() caches each frame's features (one encoder pass per frame); RGB only"),
    )
    weights = {"tiny": "amnet_tiny.safetensors", "base": "amnet_base.safetensors"}
    trainer = "lowlight.models.train_amnet:train"
    evaluator = "lowlight.models.train_amnet:enhance"
    # Frequency coefficients span a far wider range than activations (41.5 dB INT8
    # fidelity with the spectral path float vs 18-35 dB with it quantized, on DICM).
    # FP16 keeps the spectral path and boundary convs float; under INT8 the measured
    # sensitivity decides (compile.sensitivity): the hand rule left float islands
    # and their Q/DQ boundaries in every FBS block whether or not they cost fidelity
    keep_float = KeepFloat(spectral_path=True, boundary_convs=True, int8_floor=False)

    def build(self, config: str, modalities: str = "rgb", **_: str) -> AMNet:
        return build(config, modalities)

    def checkpoint_rename(self, state: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """A checkpoint from before `ExposureContext` gets it at identity (zeros): the network it was trained as."""
        fuse = [k for k in state if k == "fuse.weight" or k.endswith(".fuse.weight")]
        if len(fuse) != 1 or any(k.endswith("context.fc2.weight") for k in state):
            return None
        prefix, c3 = fuse[0][: -len("fuse.weight")], int(state[fuse[0]].shape[0])
        shapes = {"fc1.weight": (c3, 2 * c3), "fc1.bias": (c3,), "fc2.weight": (2 * c3, c3), "fc2.bias": (2 * c3,)}
        added = {f"{prefix}context.{k}": torch.zeros(s) for k, s in shapes.items()}
        # fc2 = 0 makes it the identity; fc1 drawn as nn.Linear would (fixed seed), so fine-tuning
        # from such a checkpoint has gradients (both zero would never move)
        bound = 1.0 / (2 * c3) ** 0.5
        added[f"{prefix}context.fc1.weight"].uniform_(-bound, bound, generator=torch.Generator().manual_seed(0))
        dtype = state[fuse[0]].dtype
        added = {k: v.to(dtype) for k, v in added.items()}
        return {**state, **added}, "no exposure context in the checkpoint (trained before it): added at identity"

    def default_shape(self, config: str, **options: str) -> str:
        return "1x3x256x256" if options.get("stream") == "yes" else default_shape(config)

    def inputs(self, shape: str, config: str, modalities: str = "rgb", stream: str = "no", **_: str) -> list[Tensor]:
        if stream == "yes":
            self._check_stream(modalities)
            b, h, w = stream_input_shape(shape)
            # The causal window, oldest first: rgb_0 ... rgb_{K-1} (the newest is enhanced).
            return [Tensor(f"rgb_{i}", (b, 3, h, w), "BCHW") for i in range(stream_window(config))]
        return [Tensor(n, s, "BTCHW", (0.0, 1.0) if n != "event" else (-1.0, 1.0)) for n, s in input_shapes(shape, config, modalities).items()]

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, modalities: str = "rgb",
                    stream: str = "no", **_: str) -> list[dict[str, np.ndarray]]:
        if stream == "yes":
            b, h, w = stream_input_shape(shape)
            k = stream_window(config)
            clips = make_inputs(frames, f"{b}x{k}x3x{h}x{w}", config, "rgb", seed)
            return [{f"rgb_{i}": np.ascontiguousarray(f["rgb"][:, i]) for i in range(k)} for f in clips]
        return make_inputs(frames, shape, config, modalities, seed)

    @staticmethod
    def _check_stream(modalities: str) -> None:
        from lowlight.core.errors import LowlightError

        if modalities != "rgb":
            raise LowlightError(f"--stream yes takes RGB only, got --modalities {modalities}",
                                "compile the streaming bundle with --modalities rgb (event/IR clips use the clip bundle)")

    def components(self, model: nn.Module, inputs: list[Tensor], config: str, **options: str) -> list[Component]:
        if options.get("stream") != "yes":
            return super().components(model, inputs, config, **options)
        assert isinstance(model, AMNet)
        b, _, h, w = inputs[0].shape
        c1, c2, c3 = model.config.widths
        k = len(inputs)
        feat = {"z1": (b, c1, h, w), "z2": (b, c2, h // 2, w // 2), "x3": (b, c3, h // 4, w // 4)}
        enc_in = Tensor("rgb", inputs[0].shape, "BCHW")
        dec_in = [enc_in, Tensor("z1", feat["z1"], "other", None), Tensor("z2", feat["z2"], "other", None)]
        dec_in += [Tensor(f"x3_{i}", feat["x3"], "other", None) for i in range(k)]
        return [
            Component("encoder", StreamEncoder(model), [enc_in], ["z1", "z2", "x3"], {"z1": "other", "z2": "other", "x3": "other"}),
            Component("decoder", StreamDecoder(model, k), dec_in, ["enhanced"], {"enhanced": "BCHW"}),
        ]

    def program(self, components: list[Component], inputs: list[Tensor], config: str, **options: str) -> dict[str, Any]:
        if options.get("stream") != "yes":
            return super().program(components, inputs, config, **options)
        k = len(inputs)
        steps: list[dict[str, Any]] = [
            {"op": "call", "component": "encoder", "in": {"rgb": f"rgb_{i}"},
             "out": {"z1": f"z1_{i}", "z2": f"z2_{i}", "x3": f"x3_{i}"}} for i in range(k)
        ]
        dec_in = {"rgb": f"rgb_{k - 1}", "z1": f"z1_{k - 1}", "z2": f"z2_{k - 1}", **{f"x3_{i}": f"x3_{i}" for i in range(k)}}
        steps.append({"op": "call", "component": "decoder", "in": dec_in, "out": {"enhanced": "enhanced"}})
        # `stream` tells lowlight.runtime's stream() how to slide the window: the inputs oldest
        # first, and the components whose outputs depend on one frame only (computed once per frame).
        return {"unrolled": False, "steps": steps,
                "stream": {"window": [t.name for t in inputs], "cached": ["encoder"]}}

    def export_module(self, model: nn.Module, modalities: str = "rgb", **_: str) -> nn.Module:
        return AMNetExport(model, modalities)  # type: ignore[arg-type]
