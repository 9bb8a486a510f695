"""GM-MoE ("Low-Light Enhancement with Gated-Mechanism Mixture-of-Experts"): a gated mixture of three experts.

Read top to bottom:

1. `LayerNorm2d`, `SimpleGate`         small building blocks (plain ops, exportable)
2. `ColorExpert`, `DetailExpert`,
   `FeatureExpert`                     the paper's Expert1/2/3
3. `Gate`                              global pool -> Linear -> ReLU -> Linear -> softmax(s/3)
4. `ExpertBlock`                       gate + experts; dense mixing or top-2 dispatch
5. `ShallowFeatureBlock`               the SFEB after the intro conv
6. `GMMoE`                             the NAFNet-style U-Net around the blocks
7. configs: the named ones, and a name for every layout (`layout_name`)
8. checkpoints of the official code: key renaming, layout inference, options YAML
   (then shapes, inputs and the `Family` registration)

Facts from the paper and its public code (Sameenok/gm-moe-lowlight-enhancement):
width 24, four encoder stages of one block each, one middle block, four
decoder stages: 19.99M parameters. The code is ours.

Checkpoints trained with the official code (class `OURNet24`, BasicSR format
`{'params': ..., 'params_ema': ...}`) load as they are: `official_to_ours` renames
their keys (`OFFICIAL_BLOCK_NAMES`), `infer_layout` reads the layout from keys and
shapes (`--config auto`), `config_from_options` from their options YAML. Any
layout has a config name (`layout_name`, e.g. "w48-e2.2.4.8-m12-d2.2.2.2"). The
released layout (`RELEASED`: width 48, encoder blocks 2,2,4,8, 12 middle blocks,
decoder blocks 2,2,2,2) has 690,851,505 parameters (counted: `tests/test_gmmoe_official.py`).
In dense mode our network computes the official one, except that we clamp the
output to [0,1] in eval mode and the official forward does not; see docs/gmmoe_official.md.

Top-2 dispatch is our addition (the paper mixes all three experts): each block
keeps the two experts with the largest gate weights per image, weighted by their
margin over the dropped one (`top2`: continuous where the choice flips, so INT8
cannot switch an expert on at full weight). Top-2 of three is "drop the argmin"; for batch 1 each expert call
sits in a `torch.cond` that the ONNX exporter turns into an `If` node, so the
dropped expert's ops are never executed. Batches are grouped by expert pair.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lowlight.core.errors import LowlightError, ShapeError
from lowlight.models.family import Family, KeepFloat, Option, Tensor

EXPERT_MODES = ("dense", "top2")
NUM_EXPERTS = 3
#: The gate's softmax temperature (s / t in the paper's code).
GATE_TEMPERATURE = 3.0
#: Expert1 at the deepest level: a 3x3 stride-2 conv, then a 7x7 max-pool, needs >= 15 px.
EXPERT1_MIN_SIDE = 15

# ----------------------------------------------------------------------------
# 1. building blocks


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor, written with plain ops so it exports as such."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps)
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """NAFNet's SimpleGate: split channels in half and multiply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


def conv(cin: int, cout: int, k: int, **kw: Any) -> nn.Conv2d:
    """Same-padding conv (odd kernel)."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, **kw)


# ----------------------------------------------------------------------------
# 2. the three experts


class ColorExpert(nn.Module):
    """Expert1 (colour restoration): a low-resolution spatial mask x * sigmoid(...).

    1x1 squeeze to c/4, 3x3 stride-2 conv (no padding), 7x7/3 max-pool, three 3x3
    convs, bilinear upsample back, plus a 1x1 skip, 1x1 expand, sigmoid.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        f = max(c // 4, 1)
        self.squeeze = nn.Conv2d(c, f, 1)
        self.skip = nn.Conv2d(f, f, 1)
        self.down = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv_max = conv(f, f, 3)
        self.conv_a = conv(f, f, 3)
        self.conv_b = conv(f, f, 3)
        self.expand = nn.Conv2d(f, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        low = F.max_pool2d(self.down(s), kernel_size=7, stride=3)
        low = F.relu(self.conv_max(low))
        low = self.conv_b(F.relu(self.conv_a(low)))
        low = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.expand(low + self.skip(s)))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(conv(relu(conv(avgpool(x)))))."""

    def __init__(self, c: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(c // reduction, 1)
        self.fc1 = nn.Conv2d(c, mid, 1)
        self.fc2 = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([mean_c(x), max_c(x)]))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class DetailExpert(nn.Module):
    """Expert2 (detail enhancement): multi-branch convs, channel + spatial attention, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.c1 = conv(c, c, 1)
        self.c2 = conv(c, h, 3)
        self.c3 = conv(c, h, 3)
        self.c4 = conv(2 * c, c, 3)
        self.c5 = conv(h, h, 3)
        self.c6 = conv(2 * c, c, 1)
        self.ca = ChannelAttention(2 * c)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = F.relu(self.c1(x))
        y2 = F.relu(self.c2(y1))
        y3 = F.relu(self.c3(y1))
        y4 = F.relu(self.c4(torch.cat([y1, y2, y3], 1)))
        y5 = self.c5(y3)
        cat = torch.cat([y2, y5, y4], 1)
        return x + self.c6(self.ca(cat) + self.sa(cat))


class FeatureExpert(nn.Module):
    """Expert3 (high-level features): a NAFNet block with a 1x1+3x3+5x5 front end.

    The original also holds an unused 1x1 conv to 50 channels (`conv6`); we keep
    it (`unused`) so the paper config has the published 19.99M parameters.
    """

    def __init__(self, c: int, keep_unused: bool = True) -> None:
        super().__init__()
        dw = 2 * c
        self.norm1 = LayerNorm2d(c)
        self.conv11 = conv(c, c, 1)
        self.conv33 = conv(c, c, 3)
        self.conv55 = conv(c, c, 5)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = conv(dw, dw, 3, groups=dw)
        self.sg = SimpleGate()
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1)  # simplified channel attention
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        # Zero-initialised residual scales: the block starts as the identity.
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.unused = nn.Conv2d(c, 50, 1) if keep_unused else None

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.norm1(inp)
        x = self.conv11(x) + self.conv33(x) + self.conv55(x)
        x = self.sg(self.conv2(self.conv1(x)))
        x = x * self.sca(x.mean((2, 3), keepdim=True))
        y = inp + self.conv3(x) * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


# ----------------------------------------------------------------------------
# 3. the gate


class Gate(nn.Module):
    """Per-image expert weights: avgpool -> Linear(c, c/4) -> ReLU -> Linear(c/4, 3) -> softmax(s/3)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, max(c // 4, 1), bias=False)
        self.fc2 = nn.Linear(max(c // 4, 1), NUM_EXPERTS, bias=False)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x.mean((2, 3))) / GATE_TEMPERATURE, dim=1)


#: Added to each kept expert's margin: a three-way tie then mixes the kept pair evenly instead of dividing 0 by 0.
TOP2_TIE_EPS = 1e-6
#: How top-2 weights are formed; recorded in a checkpoint's trained options (`train_gmmoe`), so a
#: checkpoint fine-tuned under another rule is verified against its dense network instead.
TOP2_WEIGHTS = "margin"


def top2(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-2 of three experts: (dropped expert index [B], weights [B,3], 0 where dropped).

    A kept expert weighs its gate weight minus the dropped expert's, renormalised over the
    two: w_i - w_min. Where the two smallest gate weights tie, the expert about to be
    swapped carries (almost) zero weight on either side, so the block's output is
    continuous in the gate. Plain renormalisation, w_i / (w_i + w_j), jumps there by the
    whole second expert: on the shipped small weights (128x160, 65 real low-light photos)
    2/255 input noise moved the worst photo's output to 15.6 dB from its clean output
    with renormalisation and 27.5 dB with margins, and INT8 activations flipped 2 of 21
    choices on 2 photos (24.0 and 29.0 dB to FP32). Where one gate weight is 0 both rules
    give the dense mix. Held-out sRGB pairs, same weights, no retraining: 18.38 dB
    renormalised, 20.11 dB with margins (dense 20.33).
    """
    drop = weights.argmin(dim=1)
    dropped = F.one_hot(drop, NUM_EXPERTS).bool()
    margin = weights - weights.min(dim=1, keepdim=True).values + TOP2_TIE_EPS
    kept = margin.masked_fill(dropped, 0.0)
    return drop, kept / kept.sum(dim=1, keepdim=True)


def _pass_through(acc: torch.Tensor, x: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
    return acc.clone()  # cond branches may not alias their inputs; ONNX Identity


# The expert pair that runs when expert `d` is dropped.
PAIRS = ((1, 2), (0, 2), (0, 1))


# ----------------------------------------------------------------------------
# 4. the expert block


class ExpertBlock(nn.Module):
    """Three experts mixed by a gate. `experts="dense"` (the paper) or `"top2"` (ours)."""

    def __init__(self, c: int, experts: str = "dense", keep_unused: bool = True) -> None:
        super().__init__()
        self.gate = Gate(c)
        self.experts = nn.ModuleList([ColorExpert(c), DetailExpert(c), FeatureExpert(c, keep_unused)])
        self.mode = experts
        #: gate weights of the last training forward (for the load-balancing loss)
        self.last_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate(x)
        if self.training:
            self.last_gate = w
        if self.mode == "dense":
            return sum(w[:, k].view(-1, 1, 1, 1) * e(x) for k, e in enumerate(self.experts))
        drop, kw = top2(w)
        if x.shape[0] == 1:
            return self._top2_single(x, drop[0], kw[0])
        return self._top2_grouped(x, drop, kw)

    def _pair(self, d: int, x: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
        i, j = PAIRS[d]
        ei, ej = self.experts[i], self.experts[j]
        return kw[..., i].reshape(-1, 1, 1, 1) * ei(x) + kw[..., j].reshape(-1, 1, 1, 1) * ej(x)

    def _top2_single(self, x: torch.Tensor, drop: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
        """One image: run only the chosen pair.

        Eager: a Python branch. Under export: one `torch.cond` per expert (ONNX `If`),
        whose else-branch passes the running sum through, so the dropped expert's
        ops are never executed. (One flat cond per expert traces each expert once;
        nesting the three-way choice traced them twice and exported 2x slower.)
        """
        if not torch.compiler.is_compiling():
            return self._pair(int(drop), x, kw)
        first = self.experts[0]
        # kw[0] is exactly 0 when expert 0 is dropped, so the else-branch yields zeros
        # (a zeros_like would be folded into a constant the size of the activation).
        out = torch.cond(drop != 0, lambda x, kw: kw[0] * first(x), lambda x, kw: kw[0] * x, (x, kw))
        for k in (1, 2):
            out = torch.cond(drop != k, self._add_expert(k), _pass_through, (out, x, kw))
        return out

    def _add_expert(self, k: int) -> Any:
        expert = self.experts[k]
        return lambda acc, x, kw: acc + kw[k] * expert(x)

    def _top2_grouped(self, x: torch.Tensor, drop: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
        """A batch: group images by expert pair; each group runs its two experts once."""
        if torch.compiler.is_compiling():
            raise ShapeError(
                "gmmoe top-2 dispatch exports for batch 1 only (the groups of a batch have data-dependent sizes)",
                "compile with batch 1 (--shape 1x3xHxW) and run frames one by one, or use --experts dense",
            )
        out = torch.zeros_like(x)
        for d in range(NUM_EXPERTS):
            idx = (drop == d).nonzero().squeeze(1)
            if idx.numel():
                out = out.index_copy(0, idx, self._pair(d, x[idx], kw[idx]))
        return out


# ----------------------------------------------------------------------------
# 5. shallow feature extraction block (SFEB)


class ShallowFeatureBlock(nn.Module):
    """SFEB: depthwise 5x5 (F1) and dilated depthwise 7x7 (F2), mean/max attention, Y = X * F_w."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw5 = conv(c, c, 5, groups=c)
        self.dw7_dilated = nn.Conv2d(c, c, 7, padding=9, dilation=3, groups=c)
        self.proj1 = nn.Conv2d(c, c // 2, 1)
        self.proj2 = nn.Conv2d(c, c // 2, 1)
        self.squeeze = conv(2, 2, 7)
        self.expand = nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.dw5(x)
        f2 = self.dw7_dilated(f1)
        f1, f2 = self.proj1(f1), self.proj2(f2)
        both = torch.cat([f1, f2], dim=1)
        att = torch.sigmoid(self.squeeze(torch.cat([both.mean(1, keepdim=True), both.amax(1, keepdim=True)], 1)))
        return x * self.expand(f1 * att[:, 0:1] + f2 * att[:, 1:2])


# ----------------------------------------------------------------------------
# 6. the U-Net


@dataclass(frozen=True)
class GMMoEConfig:
    width: int = 24
    enc_blocks: tuple[int, ...] = (1, 1, 1, 1)
    middle_blocks: int = 1
    dec_blocks: tuple[int, ...] = (1, 1, 1, 1)
    #: keep the original's unused 1x1 conv in Expert3 (only for the published parameter count)
    keep_unused: bool = True

    @property
    def factor(self) -> int:
        """Downsampling factor: inputs are padded to a multiple of it."""
        return 2 ** len(self.enc_blocks)

    @property
    def min_side(self) -> int:
        """Smallest input side: after padding, Expert1 at the deepest level needs >= 15 px."""
        return self.factor * (EXPERT1_MIN_SIDE - 1) + 1


def check_size(cfg: GMMoEConfig, h: int, w: int) -> None:
    """Raise ShapeError (saying the minimum) for inputs too small for Expert1 at the deepest level."""
    for name, side in (("height", h), ("width", w)):
        if side < cfg.min_side:
            raise ShapeError(
                f"rgb {name} {side} is too small for gmmoe: the minimum is {cfg.min_side} px per side "
                f"(Expert1's stride-2 conv and 7x7 max-pool need {EXPERT1_MIN_SIDE} px at the deepest "
                f"level, 1/{cfg.factor} scale; inputs are padded to a multiple of {cfg.factor})",
                f"resize or pad the input to at least {cfg.min_side}x{cfg.min_side}",
            )


class GMMoE(nn.Module):
    """rgb [B,3,H,W] in [0,1] -> enhanced [B,3,H,W] in [0,1] (global residual; clamped in eval mode).

    The official OURNet24 returns the same tensor unclamped; in training mode (no
    clamp) this module computes exactly that, which is how the official-weights tests compare.
    """

    def __init__(self, cfg: GMMoEConfig, experts: str = "top2") -> None:
        super().__init__()
        if experts not in EXPERT_MODES:
            raise LowlightError(f"unknown expert mode {experts!r}", f"use --experts {' or '.join(EXPERT_MODES)}")
        self.cfg = cfg
        w = cfg.width

        def stage(c: int, n: int) -> nn.Sequential:
            return nn.Sequential(*[ExpertBlock(c, experts, cfg.keep_unused) for _ in range(n)])

        self.intro = conv(3, w, 3)
        self.sfeb = ShallowFeatureBlock(w)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        c = w
        for n in cfg.enc_blocks:
            self.encoders.append(stage(c, n))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = stage(c, cfg.middle_blocks)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in cfg.dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(stage(c, n))
        self.ending = conv(w, 3, 3)

    @property
    def experts_mode(self) -> str:
        return self.blocks()[0].mode

    def set_experts(self, mode: str) -> "GMMoE":
        """Switch every block between dense mixing and top-2 dispatch (weights are the same)."""
        if mode not in EXPERT_MODES:
            raise LowlightError(f"unknown expert mode {mode!r}", f"use one of {EXPERT_MODES}")
        for b in self.blocks():
            b.mode = mode
        return self

    def blocks(self) -> list[ExpertBlock]:
        return [m for m in self.modules() if isinstance(m, ExpertBlock)]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        _, _, h, w = rgb.shape
        check_size(self.cfg, h, w)
        f = self.cfg.factor
        # Pad to a multiple of the downsampling factor, crop back at the end (static at export).
        x = F.pad(rgb, (0, (f - w % f) % f, 0, (f - h % f) % f))
        inp = x
        x = self.sfeb(self.intro(x))
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(up(x) + skip)
        x = (self.ending(x) + inp)[:, :, :h, :w]
        # The output is an image in [0,1]: clamp at inference (training keeps the paper's unclamped loss).
        return x if self.training else x.clamp(0.0, 1.0)


def balance_loss(model: GMMoE) -> torch.Tensor:
    """Load-balancing term over the last training forward (Switch-Transformer style, for top-2 of 3).

    Per block: K/2 * sum_k f_k * P_k, with f_k the fraction of images that keep
    expert k and P_k its mean gate weight. It is 1 when routing is uniform and
    grows as the blocks collapse onto the same pair.
    """
    terms = []
    for b in model.blocks():
        if b.last_gate is None:
            continue
        w = b.last_gate
        drop, _ = top2(w.detach())
        kept = 1.0 - F.one_hot(drop, NUM_EXPERTS).float()
        terms.append(NUM_EXPERTS / 2 * (kept.mean(0) * w.mean(0)).sum())
    return torch.stack(terms).mean() if terms else torch.zeros(())


# ----------------------------------------------------------------------------
# 7. configs and the family

CONFIGS: dict[str, GMMoEConfig] = {
    # tests: one stage, three blocks (each top-2 block costs ~10 s of torch.cond tracing at export); min side 29 px
    "tiny": GMMoEConfig(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), keep_unused=False),
    # shipped reference (1.25M params, 5 MB, min side 113 px): the paper's blocks at width 12 and three
    # stages, so 128 px crops train it (four stages need >= 240 px crops, ~3.5x the cost per step) and
    # ~630 steps fit the 30-minute single-core budget; metrics in models/weights/gmmoe_small.json
    "small": GMMoEConfig(width=12, enc_blocks=(1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1), keep_unused=False),
    # the paper: width 24, four stages, one block each, one middle block (19.99M parameters)
    "paper": GMMoEConfig(width=24, enc_blocks=(1, 1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
}
DEFAULT_CONFIG = "small"

#: The layout of the released official checkpoints (690.85M parameters; reached by
#: `--config auto` on such a checkpoint, or by its layout name "w48-e2.2.4.8-m12-d2.2.2.2").
RELEASED = GMMoEConfig(width=48, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2))

_LAYOUT = re.compile(r"w(\d+)-e(\d+(?:\.\d+)*)-m(\d+)-d(\d+(?:\.\d+)*)(-lean)?")


def layout_name(cfg: GMMoEConfig) -> str:
    """A config name for any layout: "w48-e2.2.4.8-m12-d2.2.2.2" (+ "-lean": without Expert3's unused conv)."""

    def dots(ns: tuple[int, ...]) -> str:
        return ".".join(map(str, ns))

    return f"w{cfg.width}-e{dots(cfg.enc_blocks)}-m{cfg.middle_blocks}-d{dots(cfg.dec_blocks)}" + ("" if cfg.keep_unused else "-lean")


def parse_layout(name: str) -> GMMoEConfig | None:
    """The config a layout name stands for; None if `name` is not one (or not a buildable one)."""
    m = _LAYOUT.fullmatch(name)
    if not m:
        return None
    enc = tuple(int(n) for n in m.group(2).split("."))
    dec = tuple(int(n) for n in m.group(4).split("."))
    width = int(m.group(1))
    # even width: Expert2 and the SFEB halve the channels; one decoder stage per encoder stage
    if width < 2 or width % 2 or len(enc) != len(dec):
        return None
    return GMMoEConfig(width=width, enc_blocks=enc, middle_blocks=int(m.group(3)), dec_blocks=dec, keep_unused=not m.group(5))


def config_name(cfg: GMMoEConfig) -> str:
    """The named config equal to `cfg` ("paper"...), else its layout name."""
    return next((n for n, c in dict.items(CONFIGS) if c == cfg), layout_name(cfg))


class LayoutConfigs(dict):
    """The named configs, plus every layout name (`layout_name`) on lookup.

    Iterating lists the named ones; `in` and `[]` also take layout names, so a
    checkpoint of any layout flows through the compiler as a plain config string.
    """

    def __missing__(self, key: str) -> GMMoEConfig:
        cfg = parse_layout(key) if isinstance(key, str) else None
        if cfg is None:
            raise KeyError(key)
        return cfg

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (isinstance(key, str) and parse_layout(key) is not None)


CONFIGS = LayoutConfigs(CONFIGS)


# ----------------------------------------------------------------------------
# 8. checkpoints of the official code (OURNet24_arch.py in Sameenok/gm-moe-lowlight-enhancement)

#: Official ExpertBlock submodule -> ours (under each block). Their block holds Expert1,
#: Expert2 and the gate as children and Expert3's layers directly (conv6 is the unused one).
OFFICIAL_BLOCK_NAMES = {
    "Expert1.conv1": "experts.0.squeeze",
    "Expert1.conv_f": "experts.0.skip",
    "Expert1.conv2": "experts.0.down",
    "Expert1.conv_max": "experts.0.conv_max",
    "Expert1.conv3": "experts.0.conv_a",
    "Expert1.conv3_": "experts.0.conv_b",
    "Expert1.conv4": "experts.0.expand",
    **{f"Expert2.c{i}": f"experts.1.c{i}" for i in range(1, 7)},
    "Expert2.se.conv_du.0": "experts.1.ca.fc1",
    "Expert2.se.conv_du.2": "experts.1.ca.fc2",
    "Expert2.sa.conv1": "experts.1.sa.conv",
    **{n: f"experts.2.{n}" for n in ("norm1", "norm2", "conv11", "conv33", "conv55", "conv1", "conv2", "conv3", "conv4", "conv5", "beta", "gamma")},
    "sca.1": "experts.2.sca",
    "conv6": "experts.2.unused",
    "GateNetwork.0": "gate.fc1",
    "GateNetwork.2": "gate.fc2",
}
#: Official top-level modules -> ours (intro, ending, encoders, decoders, downs, ups keep their names).
OFFICIAL_TOP_NAMES = {
    "MSFEblock.conv0": "sfeb.dw5",
    "MSFEblock.conv_spatial": "sfeb.dw7_dilated",
    "MSFEblock.conv1": "sfeb.proj1",
    "MSFEblock.conv2": "sfeb.proj2",
    "MSFEblock.conv_squeeze": "sfeb.squeeze",
    "MSFEblock.conv": "sfeb.expand",
}
_OFFICIAL_ROOTS = ("intro", "ending", "MSFEblock", "encoders", "decoders", "middle_blks", "downs", "ups")
#: Official network_g types: OURNet24, and its test-time variant (WaterNetLocal: same weights).
OFFICIAL_TYPES = ("OURNet24", "WaterNetLocal")


def _official_key(key: str) -> str:
    """One official state_dict key in our naming (a leading prefix such as 'module.' is kept)."""
    parts = key.split(".")
    i = next((i for i, p in enumerate(parts) if p in _OFFICIAL_ROOTS), None)
    if i is None:
        return key
    head, rel = parts[:i], parts[i:]
    if rel[0] == "middle_blks":
        rel = ["middle"] + rel[1:]
    if rel[0] in ("encoders", "decoders", "middle"):
        n = 3 if rel[0] != "middle" else 2  # encoders.<stage>.<block> / middle.<block>
        block, inner = rel[:n], rel[n:]
        module, leaf = (".".join(inner[:-1]), inner[-1]) if len(inner) > 1 else (inner[0] if inner else "", "")
        mapped = OFFICIAL_BLOCK_NAMES.get(module)
        if mapped is None:
            return ".".join(head + rel)
        rel = block + mapped.split(".") + ([leaf] if leaf else [])
    elif rel[0] == "MSFEblock" and len(rel) == 3:
        mapped = OFFICIAL_TOP_NAMES.get(".".join(rel[:2]))
        if mapped is not None:
            rel = mapped.split(".") + rel[2:]
    return ".".join(head + rel)


def official_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str] | None:
    """`state` renamed from the official code's naming to ours, and a note; None if it is not in that naming."""
    if not any(p in ("MSFEblock", "middle_blks", "GateNetwork", "Expert1") for k in state for p in k.split(".")):
        return None
    out = {_official_key(k): v for k, v in state.items()}
    return out, f"renamed {len(out)} keys from the official GM-MoE code's naming (OURNet24)"


def infer_layout(state: dict[str, torch.Tensor]) -> GMMoEConfig | None:
    """The layout of a state_dict in our naming (root-relative): width and blocks per stage; None if not GM-MoE's."""
    intro = state.get("intro.weight")
    if intro is None or intro.dim() != 4 or intro.shape[1] != 3:
        return None

    def count(pattern: str) -> list[tuple[int, ...]]:
        """The distinct integer groups of the keys matching `pattern` (stage, block indices)."""
        return sorted({tuple(int(g) for g in m.groups()) for k in state if (m := re.match(pattern, k))})

    stages = len(count(r"downs\.(\d+)\.weight$"))
    if stages == 0 or stages != len(count(r"ups\.(\d+)\.0\.weight$")):
        return None

    def blocks(name: str) -> tuple[int, ...]:
        found = count(rf"{name}\.(\d+)\.(\d+)\.")
        return tuple(1 + max((j for s, j in found if s == i), default=-1) for i in range(stages))

    middle = 1 + max((j for (j,) in count(r"middle\.(\d+)\.")), default=-1)
    keep_unused = any(k.endswith("experts.2.unused.weight") for k in state)
    return GMMoEConfig(width=int(intro.shape[0]), enc_blocks=blocks("encoders"), middle_blocks=middle,
                       dec_blocks=blocks("decoders"), keep_unused=keep_unused)


def describe(cfg: GMMoEConfig) -> str:
    """"width 48, encoder blocks 2,2,4,8, 12 middle blocks, decoder blocks 2,2,2,2"."""
    return (f"width {cfg.width}, encoder blocks {','.join(map(str, cfg.enc_blocks))}, {cfg.middle_blocks} middle "
            f"block(s), decoder blocks {','.join(map(str, cfg.dec_blocks))}" + ("" if cfg.keep_unused else ", no unused conv"))


def config_from_options(path: str | Path) -> tuple[str, list[str]]:
    """(config name, notes) from the official code's options YAML (its `network_g` section).

    Reads `type`, `width`, `enc_blk_nums`, `middle_blk_num`, `dec_blk_nums` (and
    `img_channel`), with PyYAML when installed, else with a small parser for these keys.
    """
    from lowlight.core.errors import CheckpointError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LowlightError(f"options file {path} cannot be read ({exc})", "pass the .yml the model was trained with") from exc
    net = _network_g(text, path)
    kind = str(net.get("type", "OURNet24"))
    if kind not in OFFICIAL_TYPES:
        raise CheckpointError(
            f"options file {path}: network_g type {kind!r} is not GM-MoE's ({' or '.join(OFFICIAL_TYPES)})",
            "pass the options file of a GM-MoE training run, or --config auto with its checkpoint",
        )
    if int(net.get("img_channel", 3)) != 3:
        raise CheckpointError(f"options file {path}: img_channel {net['img_channel']} (gmmoe takes RGB, 3 channels)", "use an RGB model's options")
    try:
        # the defaults are OURNet24's constructor defaults
        cfg = GMMoEConfig(
            width=int(net.get("width", 16)),
            enc_blocks=tuple(int(n) for n in net.get("enc_blk_nums", [])),
            middle_blocks=int(net.get("middle_blk_num", 1)),
            dec_blocks=tuple(int(n) for n in net.get("dec_blk_nums", [])),
        )
    except (TypeError, ValueError) as exc:
        raise LowlightError(f"options file {path}: network_g has a non-integer layout value ({exc})", "fix the file") from exc
    if not cfg.enc_blocks or parse_layout(layout_name(cfg)) != cfg:
        raise LowlightError(
            f"options file {path}: network_g does not describe a buildable GM-MoE ({describe(cfg)})",
            "give enc_blk_nums and dec_blk_nums of the same length (>= 1 stage) and an even width",
        )
    notes = [f"config from {path.name}: network_g {kind}, {describe(cfg)}"]
    if kind == "WaterNetLocal":
        notes.append("its test-time local average pooling (BasicSR Local_Base) is not compiled: the gates and "
                     "channel attentions pool globally, as OURNet24 does in training")
    return config_name(cfg), notes


def _network_g(text: str, path: Path) -> dict[str, Any]:
    """The `network_g` mapping of a BasicSR options file."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LowlightError(f"options file {path} is not valid YAML ({exc})", "pass the .yml the model was trained with") from exc
        net = doc.get("network_g") if isinstance(doc, dict) else None
    else:
        net = _tiny_yaml_section(text, "network_g")
    if not isinstance(net, dict):
        raise LowlightError(f"options file {path} has no network_g section", "pass the BasicSR options .yml the model was trained with")
    return net


def _tiny_yaml_section(text: str, section: str) -> dict[str, Any] | None:
    """`section`'s `key: value` lines (ints, strings, flow lists [1, 2]); enough for network_g without PyYAML."""
    out: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indented = line[0] in " \t"
        if not indented:
            if out is not None:
                break  # the next top-level key ends the section
            if line.split(":", 1)[0].strip() == section:
                out = {}
            continue
        if out is None or ":" not in line:
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip().strip("'\"")
        if value.startswith("[") and value.endswith("]"):
            out[key.strip()] = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        else:
            out[key.strip()] = value
    return out


def _experts(options: dict[str, Any]) -> str:
    mode = options.get("experts") or "top2"
    if mode not in EXPERT_MODES:
        raise LowlightError(f"unknown --experts {mode!r}", f"use --experts {' or '.join(EXPERT_MODES)}")
    return mode


def build_model(config: str = DEFAULT_CONFIG, **options: Any) -> GMMoE:
    """Fresh GM-MoE at `config`; option `experts="dense"|"top2"` (default top2)."""
    return GMMoE(CONFIGS[config], experts=_experts(options))


def _config_of(options: dict[str, Any]) -> GMMoEConfig:
    return CONFIGS[options.get("config") or DEFAULT_CONFIG]


def default_shape(config: str = DEFAULT_CONFIG, **options: Any) -> str:
    """Camera-ish 480x640, batch 1 (top-2 dispatch exports for batch 1)."""
    return "1x3x480x640"


def parse_shape(shape: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
        raise ShapeError(f"gmmoe shape {shape!r} is not BxCxHxW with C=3", "use e.g. --shape 1x3x480x640")
    return dims  # type: ignore[return-value]


def input_shapes(shape: str, **options: Any) -> dict[str, tuple[int, ...]]:
    """{"rgb": (B,3,H,W)}; raises ShapeError for sizes the config cannot take."""
    b, c, h, w = parse_shape(shape)
    cfg = _config_of(options)
    check_size(cfg, h, w)
    if b != 1 and _experts(options) == "top2":
        raise ShapeError(
            f"gmmoe --experts top2 compiles for batch 1 (got batch {b}): per-image expert choice is an ONNX If",
            "use --shape 1x3xHxW (run frames one by one), or --experts dense for batched graphs",
        )
    return {"rgb": (b, c, h, w)}


def make_inputs(frames: list, shape: str, **options: Any) -> list[dict[str, Any]]:
    """Feeds {"rgb": [B,3,H,W] float32} from HxWx3 float32 frames in [0,1]: resize-to-cover, centre crop."""
    import numpy as np

    from lowlight.runtime.io import fit_frame

    b, _, h, w = input_shapes(shape, **options)["rgb"]
    imgs = [np.clip(fit_frame(np.asarray(f, np.float32), h, w), 0.0, 1.0) for f in frames]
    feeds = []
    for i in range(0, len(imgs) - b + 1, b):
        batch = np.stack([im.transpose(2, 0, 1) for im in imgs[i : i + b]])
        feeds.append({"rgb": np.ascontiguousarray(batch, dtype=np.float32)})
    return feeds


class GMMoEFamily(Family):
    """GM-MoE for the compiler: one image graph; top-2 routes through ONNX If, so INT8 reaches into branches."""

    name = "gmmoe"
    summary = "GM-MoE: gated mixture of three experts per block (NAFNet-style U-Net)"
    configs = CONFIGS
    default_config = DEFAULT_CONFIG
    options = (Option("experts", EXPERT_MODES, "top2", "expert dispatch: dense mixes all three, top2 runs the two largest gate weights (ONNX If)"),)
    weights = {"small": "gmmoe_small.safetensors"}
    trainer = "lowlight.models.train_gmmoe:train"
    evaluator = "lowlight.models.train_gmmoe:enhance"
    # The gates (pool -> MLP -> softmax) decide which expert runs: an INT8 flip of
    # the top-2 choice changes the whole block's output, so they stay float.
    keep_float = KeepFloat(gates=True)
    quantize_branches = True

    def build(self, config: str, **options: str) -> GMMoE:
        return build_model(config, **options)

    def default_shape(self, config: str, **options: str) -> str:
        return default_shape(config, **options)

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        return [Tensor("rgb", input_shapes(shape, config=config, **options)["rgb"], "BCHW")]

    def make_inputs(self, frames: list, shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, Any]]:
        return make_inputs(frames, shape, config=config, **options)

    def reference_options(self, options: dict[str, str], trained: dict[str, str]) -> dict[str, str]:
        """Top-2 of a dense-trained network is an approximation (measured: about 31 dB
        PSNR between the top-2 and dense outputs of a dense-trained checkpoint), so the
        dense model is the reference then and the deviation counts against the budget.
        A checkpoint that does not say how it was trained is taken as dense, the
        paper's and the official code's network; so is one fine-tuned for top-2
        under another weighting rule than `TOP2_WEIGHTS` (its top-2 is not this one)."""
        if options.get("experts") == "top2" and (trained.get("experts", "dense") == "dense"
                                                 or trained.get("top2_weights") != TOP2_WEIGHTS):
            return {**options, "experts": "dense"}
        return dict(options)

    def infer_config(self, state: dict[str, Any]) -> str | None:
        """The config name of a checkpoint's layout, ours or the official code's naming, any key prefix."""
        from lowlight.models.checkpoint import strip_prefix

        renamed = official_to_ours(state)
        state = renamed[0] if renamed else state
        anchor = next((k for k in state if k == "intro.weight" or k.endswith(".intro.weight")), None)
        if anchor is None:
            return None
        cfg = infer_layout(strip_prefix(state, anchor[: -len("intro.weight")])[0])
        return config_name(cfg) if cfg is not None else None

    def describe_config(self, config: str) -> str:
        """What a config name stands for, for notes ("width 48, encoder blocks 2,2,4,8, ...")."""
        return describe(CONFIGS[config])

    def checkpoint_rename(self, state: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """Rename the official code's checkpoint keys to ours (None: not in its naming)."""
        return official_to_ours(state)

    def config_from_file(self, path: str) -> tuple[str, list[str]]:
        """(config name, notes) from the official training options YAML."""
        return config_from_options(path)
