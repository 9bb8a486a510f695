"""DarkDiff ("DarkDiff: Advancing Low-Light Raw Enhancement by Retasking Diffusion Models for Camera ISP").

Low-light Bayer raw -> sRGB with a latent diffusion model used as the camera ISP's
denoiser. Read top to bottom:

  1. config: `DarkDiffConfig`, `CONFIGS` tiny / small / paper;
  2. schedule: continuous-time cosine `alpha_sigma`, `time_grid`, `predict_x0`,
     `ddim_step` (v-prediction, DDIM with eta = 0);
  3. blocks: GroupNorm/ResNet blocks, attention (plain MatMul + Softmax), the
     region window partition, Stable Diffusion's SpatialTransformer;
  4. the residual VAE: encoder skip features added into the decoder through 3x3
     convs (paper Tab. A1);
  5. the denoising U-Net in latent space (region cross-attention to the context
     features in its encoder half and mid block, cross-attention to a constant
     "empty text" embedding in its decoder half) and the context processor (the
     U-Net encoder's architecture, timestep-free, run once per image);
  6. `DarkDiff`: preprocess, condition, velocity (classifier-free guidance),
     sample (DDIM), forward(raw, gain, noise=None);
  7. the graphs a bundle holds: encoder (once), null_context (teacher only, once),
     step (K times), decoder (once); or, with `--unroll yes`, one sampler graph;
  8. `DarkDiffFamily`: what the compiler needs to know.

Facts from the paper this file relies on (the paper is not shipped with the code):
  - input: packed Bayer planes, black-subtracted, multiplied by the amplification
    ratio and the white-balance gains, greens averaged -> linear RGB ("LRGB");
    output sRGB at the packed resolution (half the Bayer width and height);
  - backbone: Stable Diffusion 2.1 (U-Net channels 320/640/1280/1280, 2 layers per
    block, head dim 64, cross-attention dim 1024; VAE 128/256/512/512, latent 4,
    f = 8). Component sizes measured from the SD-2.1 configs: U-Net 865,910,724,
    VAE 83,653,863 (encoder 34,163,664, decoder 49,490,199), context processor
    (conv_in + time embedding + down blocks + mid block) 351,662,080; Tab. A1's four
    residual convs (3x3: 128->256, 256->512, 512->512, 512->512) 6,194,944;
  - encoder-side cross-attention replaced by region-based cross-attention (Eqs. 5-7):
    Q from the U-Net tokens of a region, K/V from the context tokens of the same
    region, projections shared by all regions; decoder-side cross-attention kept,
    fed the empty-prompt text embedding;
  - classifier-free guidance, w = 2.0 (SID, LRD) / 2.5 (ELD); the unconditional
    branch is trained with the condition replaced by pure Gaussian noise;
  - DDIM, 50 steps.

Parameter counts of the `paper` config against those (tests/test_darkdiff.py): VAE
encoder, decoder, Tab. A1 convs and context processor exact; the U-Net 866,004,164, i.e.
+93,440 (+0.011 %, tolerance 0.1 %) because region attention's K/V read the context
width C_l instead of 1024 (down blocks -573,440, mid block +655,360) and its context
tokens get a LayerNorm (+11,520); with `region_attention=False` it is SD's 865,910,724.

Choices where the paper is silent (recorded in the bundle through the config):
  - schedule: v-prediction on the continuous cosine schedule of progressive
    distillation (Salimans & Ho 2022), t in [0, 1]; CFG as v_u + w (v_c - v_u);
  - regions: r x r latent tokens per region at every encoder level (paper config
    r = 8: 64 / 16 / 4 regions at 64^2 / 32^2 / 16^2 latents; small r = 4); the mid
    block cross-attends to the whole context map (one region);
  - K/V of the region attention take the context width C_l (re-initialised, as
    the SD attn2 K/V take 1024); a LayerNorm on the context tokens;
  - the context processor is timestep-free: it sees the constant t = 0, so it runs
    once per image (SD's time-embedding modules are kept so its weights could come
    from the U-Net encoder); its features are the outputs of each encoder layer
    that has attention, and of the mid block (one per region-attention layer);
  - VAE skip taps: the output of each encoder level (after its downsampler),
    added to the decoder where resolution and Tab. A1's channel pair match
    (before each upsampler; the deepest one after the mid block);
  - null condition at inference: the context of a fixed Gaussian latent drawn
    after z_T from the same generator (draw order z_T, then z_null);
  - "empty text": a fixed random [tokens, dim] buffer (CLIP is not available here);
  - sRGB out of the VAE decoder through a sigmoid.

The model never imports its trainer (`trainer` names it as a string).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowlight.core.errors import LowlightError, ShapeError
from lowlight.models.family import Component, Family, KeepFloat, Option, Tensor

PLANES = ("R", "Gr", "Gb", "B")


# -- 1. config ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DarkDiffConfig:
    """Sizes of the three networks and the sampler's defaults."""

    vae_channels: tuple[int, ...]  # per VAE level; f = 2 ** (levels - 1)
    vae_layers: int  # ResNet blocks per VAE encoder level (decoder: one more)
    unet_channels: tuple[int, ...]  # per U-Net level
    unet_layers: int  # ResNet(+transformer) layers per U-Net encoder level (decoder: one more)
    attention: tuple[bool, ...]  # which U-Net levels have transformers (SD: not the deepest)
    head_dim: int = 64
    region: int = 8  # region side r, in latent tokens, of the region cross-attention
    mid_region: int = 0  # region side in the mid block; 0: one region over the whole map
    z_channels: int = 4
    text_tokens: int = 77  # the constant "empty text" embedding: [text_tokens, text_dim]
    text_dim: int = 1024
    context_text: bool = False  # the context processor keeps SD's text cross-attention
    region_attention: bool = True  # False: SD-2.1's own text cross-attention (for the count check)
    vae_mid_attention: bool = True
    norm_groups: int = 32
    ff_mult: int = 4
    steps: int = 50  # teacher DDIM steps (paper)
    guidance: float = 2.0  # CFG weight w (paper: 2.0 SID/LRD, 2.5 ELD)
    seed: int = 0  # noise seed: numpy default_rng(seed), draws z_T then z_null

    @property
    def f(self) -> int:
        """VAE downsampling factor (packed raw pixels per latent pixel, per side)."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def multiple(self) -> int:
        """Packed raw h and w must be multiples of this: VAE factor x U-Net downsampling x regions."""
        n = len(self.unet_channels)
        need = 2 ** (n - 1)
        for level, has in enumerate(self.attention):
            if has and self.region:
                need = math.lcm(need, self.region * 2**level)
        if self.mid_region:
            need = math.lcm(need, self.mid_region * 2 ** (n - 1))
        return self.f * need


CONFIGS: dict[str, DarkDiffConfig] = {
    # For tests: 208,467 parameters (< 0.3 M), trains in seconds. Packed raw sides multiples of 32.
    "tiny": DarkDiffConfig(
        vae_channels=(8, 16, 16), vae_layers=1, unet_channels=(16, 16), unet_layers=1, attention=(True, True),
        head_dim=8, region=4, text_tokens=4, text_dim=16, norm_groups=4, ff_mult=2,
    ),
    # Trained here: 1,596,427 parameters (VAE 265,463 with Tab. A1-style convs 23,136; U-Net
    # 972,116; context 358,848), so the teacher and three students (U-Net + context for
    # K = 4, 2, 1) are 22.4 MB in fp32 (< 25 MB). 128^2 Bayer crops -> packed 4x64^2 ->
    # latent 4x16^2; regions r = 4: 16 / 4 / 1 per level. Packed sides multiples of 64.
    "small": DarkDiffConfig(
        vae_channels=(16, 32, 32), vae_layers=1, unet_channels=(32, 48, 48), unet_layers=1,
        attention=(True, True, True), head_dim=16, region=4, text_tokens=8, text_dim=32, norm_groups=8, ff_mult=2,
    ),
    # Stable Diffusion 2.1's sizes: constructed and counted (on the meta device), never trained.
    # 1,307,515,051 parameters; packed sides multiples of 256 (r = 8 at latent 64/32/16).
    "paper": DarkDiffConfig(
        vae_channels=(128, 256, 512, 512), vae_layers=2, unet_channels=(320, 640, 1280, 1280), unet_layers=2,
        attention=(True, True, True, False), head_dim=64, region=8, text_tokens=77, text_dim=1024,
        context_text=True,
    ),
}


# -- 2. schedule: continuous-time cosine, v-prediction, DDIM (eta = 0) ------------------------------

#: Offset of the cosine schedule (Nichol & Dhariwal 2021): keeps sigma(0) > 0 so logSNR stays finite.
COSINE_S = 0.008


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales at time t in [0, 1]: alpha = cos(pi/2 t'), sigma = sin(pi/2 t'),
    t' = (t + s) / (1 + s) with s = 0.008, so alpha^2 + sigma^2 = 1, alpha(0) ~ 1, alpha(1) = 0."""
    phi = (t + COSINE_S) / (1.0 + COSINE_S) * (math.pi / 2)
    return torch.cos(phi), torch.sin(phi)


def time_grid(n: int) -> list[float]:
    """The n-step sampling grid [t_0 = 1, ..., t_n = 0], t_k = 1 - k/n (halving grids are nested)."""
    if n < 1:
        raise LowlightError(f"a sampler needs at least 1 step, got {n}", "use steps >= 1 (the paper uses 50)")
    return [1.0 - k / n for k in range(n + 1)]


def _per_sample(a: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
    """A time (float, [B] or [1]) as a float32 tensor that broadcasts over z [B,C,H,W]."""
    a = torch.as_tensor(a, dtype=torch.float32, device=z.device)
    return a.reshape(-1, 1, 1, 1) if a.dim() >= 1 else a


def predict_x0(z: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Clean latent from z_t and the predicted velocity v = alpha eps - sigma x0: x0 = alpha z - sigma v."""
    alpha, sigma = alpha_sigma(_per_sample(t, z))
    return alpha * z - sigma * v


def ddim_step(z: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float, t_next: torch.Tensor | float) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from t to t_next with v-prediction.

    x0 = alpha z - sigma v, eps = sigma z + alpha v, z_next = alpha' x0 + sigma' eps.
    At t_next == 0 it returns x0 exactly (alpha' = 1, sigma' = 0: the sampler's last
    step lands on the clean latent, not on the offset schedule's alpha(0) < 1).
    Computed in float32 whatever the model's precision.
    """
    z, v = z.float(), v.float()
    tt, tn = _per_sample(t, z), _per_sample(t_next, z)
    alpha, sigma = alpha_sigma(tt)
    alpha_n, sigma_n = alpha_sigma(tn)
    last = tn <= 0
    alpha_n = torch.where(last, torch.ones_like(alpha_n), alpha_n)
    sigma_n = torch.where(last, torch.zeros_like(sigma_n), sigma_n)
    x0 = alpha * z - sigma * v
    eps = sigma * z + alpha * v
    return alpha_n * x0 + sigma_n * eps


# -- 3. blocks ----------------------------------------------------------------------------------

def group_norm(c: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with as many groups as divide c (SD uses 32; the small configs fewer)."""
    return nn.GroupNorm(math.gcd(groups, c), c, eps=eps, affine=True)


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ResnetBlock(nn.Module):
    """SD's ResnetBlock2D: GN-SiLU-conv, (+ time embedding), GN-SiLU-conv, 1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, groups: int, temb: int | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups, eps), conv3(cin, cout)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2, self.conv2 = group_norm(cout, groups, eps), conv3(cout, cout)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = conv3(c, c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 (ONNX Resize, nearest) then a 3x3 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = conv3(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention as MatMul + Softmax (exports without an ONNX Attention or custom op).

    q [N, Lq, C]; k, v [N or 1, Lk, C] (a batch of 1 broadcasts: the constant text embedding).
    """
    n, lq, c = q.shape
    d = c // heads
    q = q.reshape(n, lq, heads, d).transpose(1, 2) * (d**-0.5)
    k = k.reshape(k.shape[0], k.shape[1], heads, d).transpose(1, 2)
    v = v.reshape(v.shape[0], v.shape[1], heads, d).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    return (w @ v).transpose(1, 2).reshape(n, lq, c)


class Attention(nn.Module):
    """Q from x, K/V from `kv` (x itself for self-attention); output projection with bias."""

    def __init__(self, c: int, kv_dim: int, heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(c, c, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, c, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, c, bias=qkv_bias)
        self.to_out = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if kv is None else kv
        return self.to_out(attention(self.to_q(x), self.to_k(kv), self.to_v(kv), self.heads))

    def attend_constant(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Cross-attention to a constant `kv` [1, L, D] (the text embedding), equal to `forward`.

        K and V are laid out block-diagonally, one block per head: [C, heads*L] and
        [heads*L, C]. Once the exporter folds them they are plain 2-D weights that a
        quantizer treats like a Linear layer's; folded per-head [1, heads, d, L] constants
        got per-channel INT8 parameters onnxruntime's MatMulIntegerToFloat rejects.
        """
        n, lq, c = x.shape
        h = self.heads
        d, length = c // h, kv.shape[1]
        k, v = self.to_k(kv[0]).t(), self.to_v(kv[0]).t()  # [C, L]
        head_of = torch.arange(c, device=x.device) // d
        mask = (head_of[:, None] == torch.arange(h, device=x.device)[None]).to(x.dtype)[:, :, None]  # [C, heads, 1]
        k_bd = (k[:, None, :] * mask).reshape(c, h * length)
        v_bd = (v[:, None, :] * mask).reshape(c, h * length).t()
        w = torch.softmax((self.to_q(x) * (d**-0.5) @ k_bd).reshape(n, lq, h, length), dim=-1)
        return self.to_out(w.reshape(n, lq, h * length) @ v_bd)


def window_partition(x: torch.Tensor, h: int, w: int, rh: int, rw: int) -> torch.Tensor:
    """Tokens [B, h*w, C] -> regions [B * (h/rh) * (w/rw), rh*rw, C] (static Reshape/Transpose)."""
    b, _, c = x.shape
    x = x.reshape(b, h // rh, rh, w // rw, rw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // rh) * (w // rw), rh * rw, c)


def window_merge(x: torch.Tensor, b: int, h: int, w: int, rh: int, rw: int) -> torch.Tensor:
    """Inverse of `window_partition`: regions -> tokens [B, h*w, C]."""
    c = x.shape[-1]
    x = x.reshape(b, h // rh, w // rw, rh, rw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, c)


class FeedForward(nn.Module):
    """GEGLU feed-forward (SD): Linear(C, 2 m C) -> a * gelu(gate) -> Linear(m C, C).

    GELU is written with Erf: the exporter would emit an opset-20 `Gelu`, which the
    TensorRT 10.x ONNX parser does not list.
    """

    def __init__(self, c: int, mult: int) -> None:
        super().__init__()
        self.proj = nn.Linear(c, 2 * mult * c)
        self.out = nn.Linear(mult * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * (0.5 * gate * (1.0 + torch.erf(gate * (2.0**-0.5)))))


class Transformer(nn.Module):
    """SD's SpatialTransformer (linear projections, one BasicTransformerBlock).

    cross: "region" (region cross-attention to a context map of the same size and
    width), "text" (cross-attention to the constant text embedding), "none".
    `region` is the region side in tokens (0: the whole map is one region).
    """

    def __init__(self, c: int, cfg: DarkDiffConfig, cross: str, region: int = 0) -> None:
        super().__init__()
        heads = max(1, c // cfg.head_dim)
        self.cross, self.region = cross, region
        self.norm = group_norm(c, cfg.norm_groups, 1e-6)
        self.proj_in = nn.Linear(c, c)
        self.norm1, self.attn1 = nn.LayerNorm(c), Attention(c, c, heads)
        if cross != "none":
            self.norm2 = nn.LayerNorm(c)
            self.attn2 = Attention(c, c if cross == "region" else cfg.text_dim, heads)
        if cross == "region":
            self.norm_ctx = nn.LayerNorm(c)  # context features are raw residual-stream states
        self.norm3, self.ff = nn.LayerNorm(c), FeedForward(c, cfg.ff_mult)
        self.proj_out = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).reshape(b, c, h * w).transpose(1, 2))
        tokens = tokens + self.attn1(self.norm1(tokens))
        if self.cross == "region":
            assert cond is not None
            tokens = tokens + self.region_attention(self.norm2(tokens), cond, h, w)
        elif self.cross == "text":
            assert cond is not None
            tokens = tokens + self.attn2.attend_constant(self.norm2(tokens), cond)
        tokens = tokens + self.ff(self.norm3(tokens))
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)

    def region_attention(self, q: torch.Tensor, ctx: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Eqs. 5-7: each region's U-Net tokens attend to the same region's context tokens only."""
        b, c = ctx.shape[:2]
        rh, rw = (self.region, self.region) if self.region else (h, w)
        kv = self.norm_ctx(ctx.reshape(b, c, h * w).transpose(1, 2))
        out = self.attn2(window_partition(q, h, w, rh, rw), window_partition(kv, h, w, rh, rw))
        return window_merge(out, b, h, w, rh, rw)


class VAEAttention(nn.Module):
    """The VAE mid-block attention: one head over all positions, q/k/v with bias, residual."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.group_norm = group_norm(c, groups, 1e-6)
        self.attn = Attention(c, c, 1, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        return x + self.attn(t).transpose(1, 2).reshape(b, c, h, w)


class Level(nn.Module):
    """One resolution of an encoder or decoder: ResNet blocks, optional transformers (one per
    block), then an optional downsampler (encoders) or upsampler (decoders)."""

    def __init__(self, resnets: list[nn.Module], attns: list[nn.Module] | None = None,
                 down: nn.Module | None = None, up: nn.Module | None = None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attns = nn.ModuleList(attns) if attns is not None else None
        self.down, self.up = down, up


def levels(mods: nn.ModuleList) -> list[Level]:
    """The `Level`s of a ModuleList, typed (a ModuleList iterates as plain Modules)."""
    return [m for m in mods if isinstance(m, Level)]


def _text_embedding(cfg: DarkDiffConfig) -> torch.Tensor:
    """The stand-in for CLIP's embedding of the empty prompt: fixed, seeded, on the CPU (also under meta)."""
    g = torch.Generator(device="cpu").manual_seed(1234)
    return torch.randn(1, cfg.text_tokens, cfg.text_dim, generator=g, device="cpu")


# -- 4. residual VAE ---------------------------------------------------------------------------

class VAEEncoder(nn.Module):
    """SD's VAE encoder; also returns each level's output as a skip for the decoder."""

    def __init__(self, cfg: DarkDiffConfig) -> None:
        super().__init__()
        ch, g = cfg.vae_channels, cfg.norm_groups
        self.conv_in = conv3(3, ch[0])
        self.levels = nn.ModuleList()
        cin = ch[0]
        for i, cout in enumerate(ch):
            self.levels.append(Level([ResnetBlock(cin if j == 0 else cout, cout, g) for j in range(cfg.vae_layers)],
                                     down=Downsample(cout) if i < len(ch) - 1 else None))
            cin = cout
        self.mid1 = ResnetBlock(ch[-1], ch[-1], g)
        self.mid_attn = VAEAttention(ch[-1], g) if cfg.vae_mid_attention else None
        self.mid2 = ResnetBlock(ch[-1], ch[-1], g)
        self.norm_out = group_norm(ch[-1], g)
        self.conv_out = conv3(ch[-1], 2 * cfg.z_channels)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """lrgb [B,3,h,w] in [-1,1] -> (mean, logvar) [B,z,h/f,w/f] and one skip per level."""
        h = self.conv_in(x)
        skips = []
        for level in levels(self.levels):
            for res in level.resnets:
                h = res(h)
            if level.down is not None:
                h = level.down(h)
            skips.append(h)  # tap: the level's output, after its downsampler
        h = self.mid1(h)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h)
        moments = self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0), tuple(skips)


class VAEDecoder(nn.Module):
    """SD's VAE decoder plus the residual convs of Tab. A1 (skip i: ch[i] -> ch[min(i+1, L-1)])."""

    def __init__(self, cfg: DarkDiffConfig) -> None:
        super().__init__()
        ch, g = cfg.vae_channels, cfg.norm_groups
        n = len(ch)
        rev = list(reversed(ch))
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = conv3(cfg.z_channels, rev[0])
        self.mid1 = ResnetBlock(rev[0], rev[0], g)
        self.mid_attn = VAEAttention(rev[0], g) if cfg.vae_mid_attention else None
        self.mid2 = ResnetBlock(rev[0], rev[0], g)
        self.levels = nn.ModuleList()
        prev = rev[0]
        for j, cout in enumerate(rev):
            self.levels.append(Level([ResnetBlock(prev if k == 0 else cout, cout, g) for k in range(cfg.vae_layers + 1)],
                                     up=Upsample(cout) if j < n - 1 else None))
            prev = cout
        # Tab. A1: the residual connections, 3x3 stride 1 pad 1 (128->256, 256->512, 512->512, 512->512 in SD)
        self.skip_convs = nn.ModuleList(conv3(ch[i], ch[min(i + 1, n - 1)]) for i in range(n))
        self.norm_out = group_norm(ch[0], g)
        self.conv_out = conv3(ch[0], 3)

    def forward(self, z: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> torch.Tensor:
        n = len(self.levels)
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid1(h)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h) + self.skip_convs[n - 1](skips[n - 1])  # the deepest skip, at the latent size
        for j, level in enumerate(levels(self.levels)):
            for res in level.resnets:
                h = res(h)
            if level.up is not None:
                i = n - 2 - j  # encoder level whose output has this resolution and Tab. A1's channel pair
                h = level.up(h + self.skip_convs[i](skips[i]))
        return torch.sigmoid(self.conv_out(F.silu(self.norm_out(h))))


class ResidualVAE(nn.Module):
    """The residual VAE: `encode(lrgb) -> (z, skips)`, `decode(z, skips) -> srgb in [0,1]`.

    `latent_scale` (a buffer, 1.0 until the trainer measures the latents' spread;
    SD uses 0.18215) scales the VAE mean to the diffusion latent.
    """

    latent_scale: torch.Tensor

    def __init__(self, cfg: DarkDiffConfig) -> None:
        super().__init__()
        self.encoder, self.decoder = VAEEncoder(cfg), VAEDecoder(cfg)
        self.register_buffer("latent_scale", torch.ones(()))

    def encode_dist(self, lrgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """(mean, logvar, skips) of the posterior, unscaled: for the KL term and reparameterised training."""
        return self.encoder(lrgb)

    def encode(self, lrgb: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Deterministic latent (the posterior mean, scaled) and the skip features."""
        mean, _, skips = self.encoder(lrgb)
        return mean * self.latent_scale, skips

    def decode(self, z: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.decoder(z / self.latent_scale, skips)


# -- 5. U-Net and context processor --------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """SD's sinusoidal embedding (flip_sin_to_cos, shift 0) of 1000 t: [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / half))
    args = (t.float().reshape(-1, 1) * 1000.0) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, c: int, dim: int) -> None:
        super().__init__()
        self.c = c
        self.linear_1, self.linear_2 = nn.Linear(c, dim), nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(timestep_embedding(t, self.c))))


class UNetEncoder(nn.Module):
    """conv_in, time embedding, down levels and mid block of SD's U-Net.

    cross: "region" (the denoiser: region cross-attention to context features),
    "text" (SD's cross-attention to the text embedding), "none". Returns the mid
    output, the states the decoder concatenates, and the output of every
    attention layer and of the mid block (the context processor's features).
    """

    def __init__(self, cfg: DarkDiffConfig, cross: str) -> None:
        super().__init__()
        ch, g, temb = cfg.unet_channels, cfg.norm_groups, 4 * cfg.unet_channels[0]
        self.cross = cross
        self.conv_in = conv3(cfg.z_channels, ch[0])
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.levels = nn.ModuleList()
        cin = ch[0]
        for i, cout in enumerate(ch):
            self.levels.append(Level(
                [ResnetBlock(cin if j == 0 else cout, cout, g, temb, 1e-5) for j in range(cfg.unet_layers)],
                [Transformer(cout, cfg, cross, cfg.region) for _ in range(cfg.unet_layers)] if cfg.attention[i] else None,
                down=Downsample(cout) if i < len(ch) - 1 else None))
            cin = cout
        self.mid1 = ResnetBlock(ch[-1], ch[-1], g, temb, 1e-5)
        self.mid_attn = Transformer(ch[-1], cfg, cross, cfg.mid_region)
        self.mid2 = ResnetBlock(ch[-1], ch[-1], g, temb, 1e-5)

    def forward(self, z: torch.Tensor, temb: torch.Tensor, conds: list[torch.Tensor | None]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """`conds`: one condition per attention layer, mid block last (context maps, or the text, or None)."""
        h = self.conv_in(z)
        states, feats, k = [h], [], 0
        for level in levels(self.levels):
            for j, res in enumerate(level.resnets):
                h = res(h, temb)
                if level.attns is not None:
                    h = level.attns[j](h, conds[k])
                    k += 1
                    feats.append(h)
                states.append(h)
            if level.down is not None:
                h = level.down(h)
                states.append(h)
        h = self.mid1(h, temb)
        h = self.mid2(self.mid_attn(h, conds[k]), temb)
        feats.append(h)
        return h, states, feats

    def n_attention(self) -> int:
        """Attention layers including the mid block's: the number of context features."""
        return sum(len(level.attns) for level in levels(self.levels) if level.attns is not None) + 1


class UNet(nn.Module):
    """The denoiser: `unet(z, t [B] or [1], ctx tuple) -> v` (v-prediction).

    Encoder half and mid block: region cross-attention to the context features.
    Decoder half: SD's cross-attention to the constant empty-text embedding.
    """

    text: torch.Tensor

    def __init__(self, cfg: DarkDiffConfig) -> None:
        super().__init__()
        ch, g, temb = cfg.unet_channels, cfg.norm_groups, 4 * cfg.unet_channels[0]
        self.encoder = UNetEncoder(cfg, "region" if cfg.region_attention else "text")
        n = len(ch)
        rev = list(reversed(ch))
        self.levels = nn.ModuleList()
        out = rev[0]
        for i in range(n):
            prev, out = out, rev[i]
            skip_in = rev[min(i + 1, n - 1)]
            self.levels.append(Level(
                [ResnetBlock((prev if j == 0 else out) + (skip_in if j == cfg.unet_layers else out), out, g, temb, 1e-5)
                 for j in range(cfg.unet_layers + 1)],
                [Transformer(out, cfg, "text") for _ in range(cfg.unet_layers + 1)] if cfg.attention[n - 1 - i] else None,
                up=Upsample(out) if i < n - 1 else None))
        self.norm_out = group_norm(ch[0], g, 1e-5)
        self.conv_out = conv3(ch[0], cfg.z_channels)
        self.register_buffer("text", _text_embedding(cfg))

    def forward(self, z: torch.Tensor, t: torch.Tensor, ctx: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        temb = self.encoder.time_embedding(t)
        conds = list(ctx) if self.encoder.cross == "region" else [self.text] * self.encoder.n_attention()
        h, states, _ = self.encoder(z, temb, conds)
        for level in levels(self.levels):
            for j, res in enumerate(level.resnets):
                h = res(torch.cat([h, states.pop()], dim=1), temb)
                if level.attns is not None:
                    h = level.attns[j](h, self.text)
            if level.up is not None:
                h = level.up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ContextProcessor(nn.Module):
    """The U-Net encoder's architecture run on the low-light latent z_c: one feature per
    region-attention layer of the denoiser. Timestep-free (it sees the constant t = 0),
    so it runs once per image, not once per step."""

    text: torch.Tensor

    def __init__(self, cfg: DarkDiffConfig) -> None:
        super().__init__()
        self.net = UNetEncoder(cfg, "text" if cfg.context_text else "none")
        self.register_buffer("text", _text_embedding(cfg) if cfg.context_text else torch.zeros(0), persistent=cfg.context_text)

    def forward(self, zc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = torch.zeros(1, dtype=zc.dtype, device=zc.device)
        cond = self.text if self.net.cross == "text" else None
        _, _, feats = self.net(zc, self.net.time_embedding(t), [cond] * self.net.n_attention())
        return tuple(feats)


# -- 6. DarkDiff ---------------------------------------------------------------------------------

class DarkDiff(nn.Module):
    """DarkDiff: `forward(raw [B,4,h,w], gain [B,4], noise=None) -> srgb [B,3,h,w]`.

    raw: planes R, Gr, Gb, B, black level subtracted, divided by (white - black), in
    [0, 1] (dark); gain: per plane, amplification ratio x white-balance gain, > 0;
    h, w multiples of `cfg.multiple`. noise: the starting latent z_T
    [B, z, h/f, w/f]; None draws it with numpy default_rng(seed) (then z_null).

    `steps` (default 50) DDIM steps; `guidance` the CFG weight w; `student_steps`
    None for the teacher (two U-Net passes per step, CFG), K for a step-distilled
    student (guidance folded in: one pass on the context).
    """

    def __init__(self, cfg: DarkDiffConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = ResidualVAE(cfg)
        self.context = ContextProcessor(cfg)
        self.unet = UNet(cfg)
        self.steps: int = cfg.steps
        self.guidance: float = cfg.guidance
        self.student_steps: int | None = None
        self.seed: int = cfg.seed

    # -- shapes and noise ---------------------------------------------------------------------
    def check_inputs(self, raw: torch.Tensor, gain: torch.Tensor) -> None:
        """ShapeError / LowlightError (what and how to fix) for inputs the model cannot take."""
        check_raw_shape(tuple(raw.shape), self.cfg)
        b = raw.shape[0]
        if tuple(gain.shape) != (b, 4):
            raise ShapeError(f"gain has shape {tuple(gain.shape)}, DarkDiff takes [B,4] = [{b},4] (one gain per plane R, Gr, Gb, B)",
                             "pass gain = ratio x white-balance gain per plane, e.g. ratio * rgb_gain * (red, 1, 1, blue)")
        if not bool(torch.isfinite(gain).all()) or not bool((gain > 0).all()):
            raise LowlightError(f"gain must be finite and positive, got {gain.detach().cpu().numpy().tolist()}",
                                "pass the amplification ratio times the white-balance gains (e.g. 100-300 x WB), all > 0")

    def latent_shape(self, raw_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """[B, z, h/f, w/f] for raw [B, 4, h, w]."""
        b, _, h, w = raw_shape
        f = self.cfg.f
        return (b, self.cfg.z_channels, h // f, w // f)

    def draw_noise(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(z_T, z_null): numpy default_rng(seed).standard_normal(shape, float32), in that order
        (what the bundle's program draws, so PyTorch, onnxruntime and TensorRT see the same numbers)."""
        rng = np.random.default_rng(self.seed)
        z_t = rng.standard_normal(shape, dtype=np.float32)
        return z_t, rng.standard_normal(shape, dtype=np.float32)

    # -- the pieces -----------------------------------------------------------------------------
    def preprocess(self, raw: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """LRGB in [-1, 1]: clamp(raw x gain, 0, 1) (clamp after ratio x WB), greens averaged."""
        x = (raw * gain[:, :, None, None]).clamp(0.0, 1.0)
        lrgb = torch.cat([x[:, 0:1], (x[:, 1:2] + x[:, 2:3]) * 0.5, x[:, 3:4]], dim=1)
        return lrgb * 2.0 - 1.0

    def encode(self, raw: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """(z_c, VAE skips, context features) of one image: what the encoder graph computes."""
        zc, skips = self.vae.encode(self.preprocess(raw, gain))
        return zc, skips, self.context(zc)

    def condition(self, raw: torch.Tensor, gain: torch.Tensor, null: torch.Tensor | None = None) -> dict[str, Any]:
        """Once per image: z_c and skips (VAE), the context features, and (teacher) the
        context of the null condition `null` (None: the fixed z_null of `draw_noise`)."""
        zc, skips, ctx = self.encode(raw, gain)
        ctx_null = None
        if self.student_steps is None:
            if null is None:
                null = torch.from_numpy(self.draw_noise(tuple(zc.shape))[1]).to(zc.device)
            ctx_null = self.context(null)
        return {"zc": zc, "skips": skips, "ctx": ctx, "ctx_null": ctx_null}

    def velocity(self, z: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """v at (z, t). Teacher: classifier-free guidance v_u + w (v_c - v_u), two passes;
        student: one pass on the context (guidance distilled into it)."""
        v_c = self.unet(z, t, cond["ctx"])
        if self.student_steps is not None:
            return v_c
        if cond.get("ctx_null") is None:
            raise LowlightError("the teacher's guided velocity needs the null condition's context (ctx_null)",
                                "build the condition with DarkDiff.condition(raw, gain), which computes it")
        v_u = self.unet(z, t, cond["ctx_null"])
        return v_u + self.guidance * (v_c - v_u)

    def sample(self, raw: torch.Tensor, gain: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """DDIM over `time_grid(steps)` from z_T = noise, then the VAE decoder."""
        cond = self.condition(raw, gain)
        grid = time_grid(steps)
        z = noise.float()
        for k in range(steps):
            t = torch.tensor([grid[k]], dtype=torch.float32, device=z.device)
            t_next = torch.tensor([grid[k + 1]], dtype=torch.float32, device=z.device)
            z = ddim_step(z, self.velocity(z, t, cond), t, t_next)
        return self.vae.decode(z, cond["skips"])

    def forward(self, raw: torch.Tensor, gain: torch.Tensor, noise: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        self.check_inputs(raw, gain)
        shape = self.latent_shape(tuple(raw.shape))
        if noise is None:
            noise = torch.from_numpy(self.draw_noise(shape)[0]).to(raw.device)
        noise = torch.as_tensor(noise, device=raw.device)
        if tuple(noise.shape) != shape:
            raise ShapeError(f"noise has shape {tuple(noise.shape)}, the latent for raw {tuple(raw.shape)} is {list(shape)}",
                             "pass noise of the latent's shape, or leave it out to draw it from the model's seed")
        return self.sample(raw, gain, noise, int(self.steps))


def check_raw_shape(shape: tuple[int, ...], cfg: DarkDiffConfig) -> None:
    """ShapeError naming the dimension a raw batch [B,4,h,w] gets wrong."""
    if len(shape) != 4:
        raise ShapeError(f"raw has shape {list(shape)}; DarkDiff takes packed Bayer raw [B,4,h,w]",
                         "pack the Bayer mosaic into planes R, Gr, Gb, B: [B,4,H/2,W/2]")
    b, c, h, w = shape
    if c != 4:
        raise ShapeError(f"raw has {c} planes (dimension 1); DarkDiff takes 4 (R, Gr, Gb, B)",
                         "pack the Bayer mosaic as R=[0::2,0::2], Gr=[0::2,1::2], Gb=[1::2,0::2], B=[1::2,1::2]")
    m = cfg.multiple
    bad = [f"dimension {axis} ({name}) is {v}" for axis, name, v in ((2, "height", h), (3, "width", w)) if v < m or v % m]
    if b < 1 or bad:
        raise ShapeError(
            f"raw {list(shape)}: " + ("; ".join(bad) or "batch is 0") + f"; packed h and w must be multiples of {m} "
            f"(VAE x{cfg.f}, U-Net downsampling and {cfg.region}x{cfg.region}-token regions)",
            f"pad the packed raw on the host to the next multiple of {m} (reflect) and crop the output back, "
            f"e.g. {max(m, -(-h // m) * m)}x{max(m, -(-w // m) * m)}")


# -- 7. the bundle's graphs ----------------------------------------------------------------------

class EncoderGraph(nn.Module):
    """Once per image: (raw, gain) -> skips..., ctx... (preprocess, VAE encoder, context processor)."""

    def __init__(self, model: DarkDiff) -> None:
        super().__init__()
        self.model = model

    def forward(self, raw: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, skips, ctx = self.model.encode(raw, gain)
        return tuple(skips) + tuple(ctx)


class NullContextGraph(nn.Module):
    """Teacher only, once: z_null -> ctx_null... (the context processor on the null condition's noise)."""

    def __init__(self, model: DarkDiff) -> None:
        super().__init__()
        self.model = model

    def forward(self, z_null: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.context(z_null))


class DDIMUpdate(nn.Module):
    """`ddim_step` as a module, so the exported update nodes carry the module path `update`."""

    def forward(self, z: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return ddim_step(z, v, t, t_next)


class StepGraph(nn.Module):
    """K times: (z, t, t_next, ctx...[, ctx_null...]) -> z_next (U-Net, CFG for a teacher, DDIM update)."""

    def __init__(self, model: DarkDiff) -> None:
        super().__init__()
        self.model = model
        self.update = DDIMUpdate()

    def forward(self, z: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, *ctx: torch.Tensor) -> torch.Tensor:
        m = self.model
        cond: dict[str, Any]
        if m.student_steps is None:
            half = len(ctx) // 2
            cond = {"ctx": ctx[:half], "ctx_null": ctx[half:]}
        else:
            cond = {"ctx": ctx, "ctx_null": None}
        return self.update(z, m.velocity(z, t, cond), t, t_next)


class DecoderGraph(nn.Module):
    """Once per image: (z, skips...) -> srgb [B,3,h,w] in [0,1]."""

    def __init__(self, model: DarkDiff) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, *skips: torch.Tensor) -> torch.Tensor:
        return self.model.vae.decode(z, skips)


class UnrolledGraph(nn.Module):
    """The whole sampler as one graph (`--unroll yes`): (raw, gain, noise[, z_null]) -> srgb.

    The K steps are unrolled with their times as constants (the timestep embeddings
    and schedule coefficients fold); the weights appear once, shared by the K steps.
    """

    def __init__(self, model: DarkDiff, steps: int) -> None:
        super().__init__()
        self.model, self.steps = model, steps
        self.update = DDIMUpdate()

    def forward(self, raw: torch.Tensor, gain: torch.Tensor, noise: torch.Tensor, *null: torch.Tensor) -> torch.Tensor:
        m = self.model
        cond = m.condition(raw, gain, null[0] if null else None)
        grid = time_grid(self.steps)
        z = noise
        for k in range(self.steps):
            t = torch.full((1,), grid[k], dtype=torch.float32, device=z.device)
            t_next = torch.full((1,), grid[k + 1], dtype=torch.float32, device=z.device)
            z = self.update(z, m.velocity(z, t, cond), t, t_next)
        return m.vae.decode(z, cond["skips"])


def feature_shapes(cfg: DarkDiffConfig, b: int, h: int, w: int) -> dict[str, list[tuple[int, ...]]]:
    """Shapes of the skips, the context features and the latent for packed raw [b,4,h,w]."""
    n = len(cfg.vae_channels)
    skips: list[tuple[int, ...]] = [(b, c, h // 2 ** min(i + 1, n - 1), w // 2 ** min(i + 1, n - 1))
                                    for i, c in enumerate(cfg.vae_channels)]
    lh, lw = h // cfg.f, w // cfg.f
    ctx: list[tuple[int, ...]] = []
    for level, (c, has) in enumerate(zip(cfg.unet_channels, cfg.attention)):
        if has:
            ctx += [(b, c, lh // 2**level, lw // 2**level)] * cfg.unet_layers
    deep = len(cfg.unet_channels) - 1
    ctx.append((b, cfg.unet_channels[-1], lh // 2**deep, lw // 2**deep))
    return {"skips": skips, "ctx": ctx, "latent": [(b, cfg.z_channels, lh, lw)]}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_counts(model: DarkDiff) -> dict[str, int]:
    """Parameters per component: vae_encoder, vae_decoder (SD's, without Tab. A1), residual_convs
    (Tab. A1), unet, context, total."""
    skip = count_parameters(model.vae.decoder.skip_convs)
    counts = {
        "vae_encoder": count_parameters(model.vae.encoder),
        "vae_decoder": count_parameters(model.vae.decoder) - skip,
        "residual_convs": skip,
        "unet": count_parameters(model.unet),
        "context": count_parameters(model.context),
    }
    counts["total"] = sum(counts.values())
    return counts


def build(config: str | DarkDiffConfig, steps: int | str | None = None) -> DarkDiff:
    """A fresh teacher at `config` (untrained); `steps` sets its DDIM steps (default 50)."""
    cfg = CONFIGS[config] if isinstance(config, str) else config
    model = DarkDiff(cfg)
    if steps is not None:
        model.steps = int(steps)
    return model


# -- 8. family -----------------------------------------------------------------------------------

STEP_CHOICES = ("50", "8", "4", "2", "1")
#: Declared range of the `gain` input (the runtime refuses values outside it): positive, up to 1e4.
GAIN_RANGE = (0.0, 1.0e4)


def parse_shape(shape: str, config: str) -> tuple[int, int, int, int]:
    """(B, 4, h, w) from a `Bx4xhxw` --shape; ShapeError names the wrong dimension."""
    try:
        dims = tuple(int(d) for d in str(shape).lower().split("x"))
    except ValueError:
        raise ShapeError(f"--shape {shape!r} is not a list of integers like 1x4x128x128",
                         "write it as Bx4xhxw: packed raw planes R, Gr, Gb, B at half the Bayer size") from None
    check_raw_shape(dims, CONFIGS[config])
    return dims  # type: ignore[return-value]


class DarkDiffFamily(Family):
    """DarkDiff as the compiler sees it: encoder, step (looped K times), decoder, over a program."""

    name = "darkdiff"
    summary = "DarkDiff: low-light raw -> sRGB, latent diffusion retasked as the camera ISP (step-distilled)"
    configs = dict(CONFIGS)
    default_config = "small"
    options = (
        Option("steps", STEP_CHOICES, "4",
               "sampling steps K of the compiled program: 50 runs the teacher's guided DDIM, "
               "8/4/2/1 the step-distilled student for K (the teacher's DDIM at K when it has none)"),
        Option("unroll", ("no", "yes"), "no",
               "yes: the K steps, encoder and decoder as one graph (times folded to constants; what TensorRT "
               "build plans take); no: encoder, step and decoder components looped by the program"),
    )
    weights = {"small": "darkdiff_small.safetensors"}
    trainer = "lowlight.models.train_darkdiff:train"
    # --steps K: the K-step student beside the teacher (`student_path`), else the distill stage makes it
    distill_option = "steps"
    teacher_steps = 50
    # The raw x gain product and the preprocessing are elementwise (never quantized). Float by
    # module path, not "first conv after each input": the step's t and context inputs reach every
    # ResNet block, so that rule kept 32 of its 45 convs float. Kept: the VAE's first conv (it sees
    # the gained raw) and last conv (error lands in the image), the U-Net's conv_in/conv_out (error
    # there feeds z back every step), the timestep embedding (sin/cos of up to 1000 rad: FP16
    # spacing is 0.5 there) and the DDIM update (`update`, the schedule's cos/sin).
    keep_float = KeepFloat(op_types=("Sin", "Cos"), module_patterns=(
        r"^model\.vae\.encoder\.conv_in$", r"^model\.vae\.decoder\.conv_out$",
        r"^model\.unet\.(encoder\.)?conv_in$", r"^model\.unet\.conv_out$", r"time_embedding", r"^update$"))
    output_names = ("srgb",)
    #: Precision of the step graph: None follows the bundle (INT8 never touches the update's
    #: elementwise ops; FP16 converts them); "fp32" pins the whole step (U-Net included) float.
    step_precision: str | None = None

    def build(self, config: str, steps: str | int | None = None, **_: Any) -> DarkDiff:
        return build(config, steps)

    def finish_load(self, model: nn.Module, checkpoint: Path, config: str, steps: str | int | None = None,
                    student: str | Path | bool | None = None, **options: Any) -> list[str]:
        """Load the distilled student for `steps=K` (`student`: a path, False for the teacher's own DDIM at K).

        Without a path, the student is looked for beside the teacher (`student_path`); a
        K without one runs the teacher's guided DDIM at K steps (the baseline distillation
        must beat), and the note says so. A student distilled from another teacher is refused.
        """
        from lowlight.models.family import declines_student, load_student_into

        assert isinstance(model, DarkDiff)
        k = int(steps) if steps is not None else model.steps
        if declines_student(student) or k == self.teacher_steps:
            return [] if k == self.teacher_steps else [f"student=False: the teacher's guided DDIM at {k} steps"]
        path = load_student_into(self, model, checkpoint, config, k, ("unet", "context"), student)
        if path is None:
            return [f"no {k}-step student beside {checkpoint.name} ({self.student_path(checkpoint, k).name}): "
                    f"the teacher's guided DDIM at {k} steps"]
        model.steps = k
        return [f"{k}-step student {path.name} (distilled from this teacher)"]

    def default_shape(self, config: str, **options: str) -> str:
        m = CONFIGS[config].multiple
        side = max(m, 128)  # a 256x256 Bayer frame for small and tiny
        return f"1x4x{side}x{side}"

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        b, _, h, w = parse_shape(shape, config)
        # gain: ratio x WB is ~100-1200 in training; the declared range is the runtime's sanity bound
        return [Tensor("raw", (b, 4, h, w), "RGGB", (0.0, 1.0)), Tensor("gain", (b, 4), "BC", GAIN_RANGE)]

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, np.ndarray]]:
        """Synthetic low-light raw from clean photos (`calibration.raw`): each frame fitted to
        the Bayer size (2h x 2w), unprocessed to raw, darkened with shot + read noise at a
        random ratio 100-300; gain = ratio x white balance. Whole batches only (the feeds of
        `ground_truth_inputs`)."""
        return self.ground_truth_inputs(frames, shape, config, seed, **options)[0]

    def ground_truth_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0,
                            **options: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
        """Raw feeds from clean photos and their ISP targets (`calibration.raw.raw_pair`): whole batches."""
        from lowlight.calibration.frames import fit_frame
        from lowlight.calibration.raw import raw_pair

        b, _, h, w = parse_shape(shape, config)
        rng = np.random.default_rng(seed)
        made = [raw_pair(fit_frame(f, 2 * h, 2 * w), rng) for f in frames]
        feeds, targets = [], []
        for i in range(0, len(made) - b + 1, b):
            part = made[i : i + b]
            feeds.append({"raw": np.stack([m[0] for m in part]).astype(np.float32), "gain": np.stack([m[1] for m in part]).astype(np.float32)})
            targets.append(np.stack([m[2] for m in part]).astype(np.float32))
        return feeds, targets

    def components(self, model: nn.Module, inputs: list[Tensor], config: str, **options: str) -> list[Component]:
        assert isinstance(model, DarkDiff)
        b, _, h, w = inputs[0].shape
        shapes = feature_shapes(model.cfg, b, h, w)
        latent = shapes["latent"][0]
        teacher = model.student_steps is None
        skips = [Tensor(f"skip_{i}", s, "other", None) for i, s in enumerate(shapes["skips"])]
        ctx = [Tensor(f"ctx_{i}", s, "other", None) for i, s in enumerate(shapes["ctx"])]
        ctx_null = [Tensor(f"ctx_null_{i}", s, "other", None) for i, s in enumerate(shapes["ctx"])] if teacher else []
        z = Tensor("z", latent, "latent", None)
        if options.get("unroll") == "yes":
            k = int(options.get("steps") or CONFIGS[config].steps)
            noise = [Tensor("noise", latent, "latent", None)] + ([Tensor("z_null", latent, "latent", None)] if teacher else [])
            return [Component("sampler", UnrolledGraph(model, k), list(inputs) + noise, ["srgb"], {"srgb": "BCHW"})]
        enc_out = [t.name for t in skips + ctx]
        t_in = [Tensor("t", (1,), "other", (0.0, 1.0)), Tensor("t_next", (1,), "other", (0.0, 1.0))]
        comps = [Component("encoder", EncoderGraph(model), list(inputs), enc_out, {n: "other" for n in enc_out})]
        if teacher:  # the null condition's context: image-independent, computed once from z_null
            comps.append(Component("null_context", NullContextGraph(model), [Tensor("z_null", latent, "latent", None)],
                                   [t.name for t in ctx_null], {t.name: "other" for t in ctx_null}))
        return comps + [
            Component("step", StepGraph(model), [z, *t_in, *ctx, *ctx_null], ["z_next"], {"z_next": "latent"},
                      precision=self.step_precision),
            Component("decoder", DecoderGraph(model), [z, *skips], ["srgb"], {"srgb": "BCHW"}),
        ]

    def program(self, components: list[Component], inputs: list[Tensor], config: str, **options: str) -> dict[str, Any]:
        by = {c.name: c for c in components}
        if "sampler" in by:  # unrolled: draw z_T (and z_null), one call
            sampler = by["sampler"]
            noise = [{"op": "noise", "shape": list(t.shape), "out": t.name} for t in sampler.inputs if t.layout == "latent"]
            noise[0]["input"] = "noise"  # z_T: a caller may pass it as `noise`
            return {"unrolled": True, "seed": CONFIGS[config].seed, "steps": noise + [
                {"op": "call", "component": "sampler", "in": {t.name: t.name for t in sampler.inputs}, "out": {"srgb": "srgb"}}]}
        enc, step, dec = by["encoder"], by["step"], by["decoder"]
        k = int(options.get("steps") or CONFIGS[config].steps)
        latent = list(step.inputs[0].shape)
        # draw order z_T, then z_null: the same numbers DarkDiff.draw_noise gives
        steps: list[dict[str, Any]] = [{"op": "noise", "shape": latent, "out": "z", "input": "noise"}]  # z_T, or the caller's `noise`
        if "null_context" in by:
            steps.append({"op": "noise", "shape": latent, "out": "z_null"})
        steps.append({"op": "call", "component": "encoder", "in": {t.name: t.name for t in enc.inputs},
                      "out": {n: n for n in enc.outputs}})
        if "null_context" in by:
            steps.append({"op": "call", "component": "null_context", "in": {"z_null": "z_null"},
                          "out": {n: n for n in by["null_context"].outputs}})
        feeds = {t.name: t.name for t in step.inputs}
        steps.append({"op": "loop", "count": k, "var": "k", "body": [
            {"op": "const", "name": "t", "index": "k", "out": "t"},
            {"op": "const", "name": "t_next", "index": "k", "out": "t_next"},
            {"op": "call", "component": "step", "in": feeds, "out": {"z_next": "z"}},
        ]})
        steps.append({"op": "call", "component": "decoder", "in": {t.name: t.name for t in dec.inputs}, "out": {"srgb": "srgb"}})
        return {"unrolled": False, "seed": CONFIGS[config].seed, "steps": steps}

    def constants(self, config: str, **options: str) -> dict[str, np.ndarray]:
        """The time grid of K steps (t, t_next per step, [K,1] float32) and its alpha/sigma table."""
        k = int(options.get("steps") or CONFIGS[config].steps)
        grid = np.asarray(time_grid(k), dtype=np.float32)
        a, s = alpha_sigma(torch.from_numpy(grid))
        alpha, sigma = a.numpy().astype(np.float32), s.numpy().astype(np.float32)
        alpha[-1], sigma[-1] = 1.0, 0.0  # the last step lands on x0 (see ddim_step)
        return {"t": grid[:-1].reshape(k, 1), "t_next": grid[1:].reshape(k, 1), "alpha": alpha, "sigma": sigma}
