"""MMAIF ("MMAIF: Multi-task and Multi-degradation All-in-One for Image Fusion with Language Guidance").

Two degraded frames of one scene -> one clean frame, fused in the latent space of a
VAE by a DiT guided by a language prompt. Read top to bottom:

  1. config: `MMAIFConfig`, `CONFIGS` tiny / small / paper; tasks and prompts;
  2. the VAE tokenizer (KL-VAE, f = 4 or 8);
  3. the DiT's parts: 2D RoPE, per-block absolute position embedding, a NAFNet
     block, joint attention with prompt tokens and value residual, the MoE-GLU
     feed-forward (routed experts through `lowlight.kernels.moe_top2`), the
     image-based LoRA adaLN;
  4. `DiT`: flow (velocity of t) or regression (no timestep embedder);
  5. the sampler: the paper's midpoint with velocity reuse (Alg. 1), Euler for students;
  6. `MMAIF`: encode, condition, velocity, sample, forward(**task inputs);
  7. the graphs a bundle holds: encoder (once), step (K times), decoder (once),
     or one unrolled graph;
  8. `MMAIFFamily`: what the compiler needs to know.

Facts from the paper this file relies on (the paper is not shipped with the code):
  - tokenizer f = 8, z = 16 (Cosmos VAE in the paper; a KL-VAE slot here);
  - DiT over the latent patchified with p = 2; paper config 16 layers, hidden 576,
    12 heads, LoRA dimension 128, RoPE base 2000: "282M parameters, with
    approximately 185M being activated during inference";
  - MoE-GLU replaces the FFN: 4 routed experts, top-2 ("limited greedy"), plus a
    shared expert, with a load-balancing loss;
  - 2D RoPE in every attention layer; a per-block absolute PE
    pe = MLP(0..h-1) (+) MLP(0..w-1), shared by all layers, added before each block;
  - value residual V^l = (1 - eta) W_V X + eta V^(l-1), eta initialised to 0, learnable;
  - image-based LoRA adaLN: the six modulations per token from MLP2(MLP1(c)), c the
    patchified concatenation of the two degraded latents, MLP1's width d' < d;
  - a NAFNet block before each attention block; the prompt (Flan-T5 in the paper)
    joins the self-attention;
  - flow matching Z_t = (1 - t) noise + t data, v = data - noise (the consistent
    reading of the paper's Sec. 2.3 / Alg. 1); sampler: midpoint, 5 steps, reusing the
    velocity of the first half-step for the second, kappa = g sin^2(pi t_mid);
  - regression variant: the same DiT without the timestep embedder, one pass.

Choices where the paper is silent (`paper` config counted in tests/test_mmaif.py):
  - expert GLU hidden 1664 and NAF expansion 1 at paper size: 279.0M total / 187.3M
    active (both within 5 % of the paper's 282M / 185M; 1536 with expansion 2 gives
    196M active, +6 %); the router: softmax over 4, top-2, weights renormalised;
    load-balancing loss of Switch Transformer (E sum f_e P_e), coefficient 0.01;
  - the NAF block runs on the image tokens reshaped to the latent grid, in every block;
  - t enters the adaLN condition (c + t embedding, before MLP1); the prompt joins the
    attention as extra keys and values (image tokens query, prompt tokens do not);
  - prompts: a learned table of named prompt embeddings (prompt_len x prompt_dim),
    one per (task, degradation), shipped in the weights: no text encoder on the
    device. Paper config prompt dim 1024 (Flan-T5-large, assumed), 16 tokens;
  - the regression model's image stream is the mean of the two degraded latents;
  - value residual from the previous layer, one eta per layer;
  - the PE MLPs read positions in units of 16 tokens (arange(h) / 16);
  - g = 0 (the ODE: velocity-reuse midpoint is then Euler with 5 steps), uniform
    grid of 5 intervals; the SDE form (g > 0) is kept for measurement in PyTorch;
  - an infrared frame (one channel) is repeated to three before the VAE.

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

# -- 1. config, tasks, prompts --------------------------------------------------------------------


@dataclass(frozen=True)
class MMAIFConfig:
    """Sizes of one MMAIF config (VAE, DiT, prompts) and its sampler."""

    name: str
    vae_ch: tuple[int, ...]  # per level; f = 2 ** (levels - 1)
    vae_blocks: int
    z: int  # latent channels
    hidden: int
    layers: int
    heads: int
    lora: int  # d' of the LoRA adaLN
    expert_hidden: int
    experts: int = 4
    patch: int = 2
    naf_expand: int = 1
    prompt_len: int = 8
    prompt_dim: int = 64
    pe_hidden: int = 0  # 0: hidden
    rope_base: float = 2000.0
    t_dim: int = 256
    steps: int = 5  # teacher sampler steps
    g: float = 0.0  # SDE scale of the teacher sampler (0: ODE)
    seed: int = 0
    balance: float = 0.01  # load-balancing loss coefficient

    @property
    def f(self) -> int:
        return 2 ** (len(self.vae_ch) - 1)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x patch)."""
        return self.f * self.patch


CONFIGS: dict[str, MMAIFConfig] = {
    "tiny": MMAIFConfig("tiny", vae_ch=(8, 16), vae_blocks=1, z=4, hidden=32, layers=2, heads=2, lora=8,
                        expert_hidden=32, prompt_len=4, prompt_dim=16),
    "small": MMAIFConfig("small", vae_ch=(32, 64, 64), vae_blocks=1, z=8, hidden=128, layers=4, heads=4, lora=32,
                         expert_hidden=256, prompt_len=8, prompt_dim=64),
    "paper": MMAIFConfig("paper", vae_ch=(128, 256, 512, 512), vae_blocks=2, z=16, hidden=576, layers=16, heads=12,
                         lora=128, expert_hidden=1664, prompt_len=16, prompt_dim=1024),
}

#: Paper's reported DiT size (Sec. 4.2): total and activated parameters.
PAPER_PARAMS = (282e6, 185e6)

#: Input names per task: (first, second); the second may have fewer channels.
TASKS: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {
    "mef": (("under", 3), ("over", 3)),
    "vif": (("visible", 3), ("infrared", 1)),
}

#: The shipped prompts: name -> (task, what it asks for). Their embeddings are a learned
#: table in the weights (Flan-T5 is not on the device); training pairs each degradation
#: with its prompt.
PROMPTS: dict[str, tuple[str, str]] = {
    "mef-exposure": ("mef", "fuse a noisy under-exposed frame and an over-exposed frame into one clean, well-exposed frame"),
    "mef-blur": ("mef", "fuse the exposures; the long exposure is blurred by camera shake: keep the short one's detail"),
    "vif-lowlight": ("vif", "fuse a noisy low-light visible frame with an infrared frame; brighten and denoise the colours"),
    "vif-dark": ("vif", "fuse an infrared frame with a visible frame taken in near darkness; recover what colour there is"),
}
PROMPT_NAMES = tuple(PROMPTS)


def task_prompts(task: str) -> list[str]:
    """The shipped prompt names of `task`, the default first."""
    return [n for n, (t, _) in PROMPTS.items() if t == task]


# -- 2. the VAE tokenizer ---------------------------------------------------------------------------


def _groups(c: int) -> int:
    return min(32, max(1, c // 4))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip (1x1 where the width changes)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class VAE(nn.Module):
    """KL-VAE: encoder to (mean, logvar) of z channels at 1/f, decoder back to RGB through a sigmoid.

    `scale` (a buffer set after training) maps the posterior mean to unit variance,
    the N(0, I) prior of flow matching.
    """

    def __init__(self, cfg: MMAIFConfig) -> None:
        super().__init__()
        ch = cfg.vae_ch
        self.enc_in = nn.Conv2d(3, ch[0], 3, padding=1)
        enc: list[nn.Module] = []
        for i, c in enumerate(ch):
            cin = ch[max(0, i - 1)]
            enc += [ResBlock(cin if j == 0 else c, c) for j in range(cfg.vae_blocks)]
            if i < len(ch) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.enc = nn.Sequential(*enc, ResBlock(ch[-1], ch[-1]), nn.GroupNorm(_groups(ch[-1]), ch[-1], eps=1e-6), nn.SiLU())
        self.enc_out = nn.Conv2d(ch[-1], 2 * cfg.z, 3, padding=1)
        self.dec_in = nn.Conv2d(cfg.z, ch[-1], 3, padding=1)
        dec: list[nn.Module] = [ResBlock(ch[-1], ch[-1])]
        for i in reversed(range(len(ch))):
            c = ch[i]
            cin = ch[min(len(ch) - 1, i + 1)]
            dec += [ResBlock(cin if j == 0 else c, c) for j in range(cfg.vae_blocks)]
            if i > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        self.dec = nn.Sequential(*dec, nn.GroupNorm(_groups(ch[0]), ch[0], eps=1e-6), nn.SiLU())
        self.dec_out = nn.Conv2d(ch[0], 3, 3, padding=1)
        self.register_buffer("scale", torch.ones(()))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the unscaled latent of an image in [0, 1]."""
        mean, logvar = self.enc_out(self.enc(self.enc_in(x * 2 - 1))).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled posterior mean (deterministic: what inference uses)."""
        return self.posterior(x)[0] * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """An image in [0, 1] from a scaled latent."""
        return torch.sigmoid(self.dec_out(self.dec(self.dec_in(z / self.scale))))


# -- 3. DiT parts ------------------------------------------------------------------------------------


def grid_positions(h: int, w: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of each of the h*w tokens (row-major), float32.

    `arange(h)[:, None].expand(h, w)`, not `arange(h).repeat_interleave(w)`: the latter
    mis-exports with a symbolic w (onnxruntime then fails with an invalid expand shape).
    """
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w).reshape(-1)
    return rows, cols


def rope_tables(h: int, w: int, head_dim: int, base: float, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE cos/sin [h*w, head_dim]: the first half of each head rotates by the row, the second by the column."""
    a = head_dim // 2
    freqs = base ** (-torch.arange(0, a, 2, device=device, dtype=torch.float32) / a)  # [a/2]
    rows, cols = grid_positions(h, w, device)
    ang_h, ang_w = rows[:, None] * freqs, cols[:, None] * freqs  # [N, a/2]
    ang = torch.cat([ang_h, ang_h, ang_w, ang_w], dim=-1)  # [N, head_dim]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, N, head_dim] by the tables (rotate-half within each axis's half)."""
    a = x.shape[-1] // 2
    q = a // 2
    xh, xw = x[..., :a], x[..., a:]
    rot = torch.cat([-xh[..., q:], xh[..., :q], -xw[..., q:], xw[..., :q]], dim=-1)
    return x * cos + rot * sin


class PositionMLP(nn.Module):
    """pe = MLP(rows) + MLP(cols): the per-block absolute position embedding, shared by all blocks."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.mlp_h = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, d))
        self.mlp_w = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        rows, cols = grid_positions(h, w, device)
        return self.mlp_h(rows[:, None] / 16.0) + self.mlp_w(cols[:, None] / 16.0)  # [N, d]


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of [B, C, H, W] (NAFNet's), written as mean/var so it exports plainly."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class NAFBlock(nn.Module):
    """NAFNet's block (Chen et al. 2022): LayerNorm2d, 1x1, depthwise 3x3, SimpleGate, simplified
    channel attention, 1x1; then a SimpleGate FFN. Both halves are residual with zero-initialised scales."""

    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        dw = c * expand  # expand 1: the gate halves the width to c/2 (NAFNet's default is 2)
        self.norm1, self.norm2 = LayerNorm2d(c), LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.conv4 = nn.Conv2d(c, c * expand, 1)
        self.conv5 = nn.Conv2d(c * expand // 2, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    @staticmethod
    def gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate(self.conv2(self.conv1(self.norm1(x))))
        h = h * self.sca(h.mean(dim=(2, 3), keepdim=True))
        y = x + self.conv3(h) * self.beta
        return y + self.conv5(self.gate(self.conv4(self.norm2(y)))) * self.gamma


class JointAttention(nn.Module):
    """Self-attention of the image tokens with the prompt tokens as extra keys/values; RoPE on image
    queries and keys; value residual from the previous block."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)  # the prompt tokens' keys and values come from the same projection
        self.proj = nn.Linear(d, d)
        self.eta = nn.Parameter(torch.zeros(()))  # value residual mix, learnable from 0

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                v_prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
        kp, vp = (self._split(t) for t in self.qkv(prompt).chunk(3, dim=-1)[1:])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = torch.cat([k, kp], dim=2), torch.cat([v, vp], dim=2)
        if v_prev is not None:
            v = (1 - self.eta) * v + self.eta * v_prev
        att = torch.softmax(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(x.shape)
        return self.proj(out), v


class MoEGLU(nn.Module):
    """The MoE-GLU feed-forward: E routed GLU experts, top-2 per token (`lowlight::moe_top2`), plus a shared expert.

    With `collect` set (the trainer sets it), each call stores its load-balancing
    term for `DiT.balance_loss`; off by default, so nothing accumulates in a
    distillation or an evaluation.
    """

    def __init__(self, d: int, hidden: int, experts: int) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, d, hidden) * d ** -0.5)
        self.w3 = nn.Parameter(torch.randn(experts, d, hidden) * d ** -0.5)
        self.w2 = nn.Parameter(torch.randn(experts, hidden, d) * hidden ** -0.5)
        self.shared_in = nn.Linear(d, 2 * hidden, bias=False)
        self.shared_out = nn.Linear(hidden, d, bias=False)
        self.aux: list[torch.Tensor] = []
        self.collect = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lowlight.kernels import moe_top2

        flat = x.reshape(-1, x.shape[-1])
        w_router = self.router.weight.t()
        if self.collect:
            probs = torch.softmax(flat @ w_router, dim=-1)
            chosen = F.one_hot(probs.topk(2, dim=-1).indices, probs.shape[-1]).sum(1).float()
            # Switch Transformer's loss E * sum_e f_e P_e (f: share of routed slots, P: mean probability)
            self.aux.append(probs.shape[-1] * (chosen.mean(0) / 2 * probs.mean(0)).sum())
        routed = moe_top2(flat, w_router, self.w1, self.w3, self.w2)
        a, b = self.shared_in(flat).chunk(2, dim=-1)
        return (routed + self.shared_out(F.silu(a) * b)).reshape(x.shape)


class Block(nn.Module):
    """NAF block on the token grid, then adaLN-modulated joint attention and MoE-GLU (gates zero at init)."""

    def __init__(self, cfg: MMAIFConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.naf = NAFBlock(d, cfg.naf_expand)
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = JointAttention(d, cfg.heads)
        self.moe = MoEGLU(d, cfg.expert_hidden, cfg.experts)
        # image-based LoRA adaLN: MLP2(MLP1(c)) with MLP1 of width d' < d; MLP2 zero-initialised
        self.ada_down = nn.Linear(d, cfg.lora)
        self.ada_up = nn.Linear(cfg.lora, 6 * d)
        nn.init.zeros_(self.ada_up.weight)
        nn.init.zeros_(self.ada_up.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, prompt: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                v_prev: torch.Tensor | None, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        grid = x.transpose(1, 2).reshape(b, d, gh, gw)
        x = self.naf(grid).reshape(b, d, n).transpose(1, 2)
        s1, b1, g1, s2, b2, g2 = self.ada_up(F.silu(self.ada_down(c))).chunk(6, dim=-1)
        a, v = self.attn(self.norm1(x) * (1 + s1) + b1, prompt, cos, sin, v_prev)
        x = x + g1 * a
        x = x + g2 * self.moe(self.norm2(x) * (1 + s2) + b2)
        return x, v


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as DiT's), [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t.reshape(-1, 1).float() * 1000.0 * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/p)(w/p), C p p] tokens, row-major."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, c: int, gh: int, gw: int, p: int) -> torch.Tensor:
    b = x.shape[0]
    return x.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * p, gw * p)


# -- 4. the DiT ----------------------------------------------------------------------------------------


class DiT(nn.Module):
    """The fusion DiT. `timed=True` (flow): the velocity at time t; False (regression): the clean latent."""

    def __init__(self, cfg: MMAIFConfig, timed: bool) -> None:
        super().__init__()
        d, zc = cfg.hidden, cfg.z * cfg.patch ** 2
        self.cfg, self.timed = cfg, timed
        self.x_embed = nn.Linear(zc, d)
        self.c_embed = nn.Linear(2 * zc, d)
        self.t_embed = nn.Sequential(nn.Linear(cfg.t_dim, d), nn.SiLU(), nn.Linear(d, d)) if timed else None
        self.prompt_proj = nn.Linear(cfg.prompt_dim, d)
        self.pos = PositionMLP(d, cfg.pe_hidden or d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, zc)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor | None, cond: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """z [B, z, h, w] (noisy latent, or the regression's image stream), t [B] or [1] (flow only),
        cond [B, 2z, h, w] (the two degraded latents), prompt [B, L, prompt_dim]."""
        cfg, p = self.cfg, self.cfg.patch
        gh, gw = z.shape[2] // p, z.shape[3] // p
        x = self.x_embed(patchify(z, p))
        c = self.c_embed(patchify(cond, p))
        if self.t_embed is not None:
            if t is None:
                raise ValueError("the flow DiT needs t")
            c = c + self.t_embed(timestep_embedding(t, cfg.t_dim))[:, None, :]
        pe = self.pos(gh, gw, z.device)
        cos, sin = rope_tables(gh, gw, cfg.hidden // cfg.heads, cfg.rope_base, z.device)
        pr = self.prompt_proj(prompt)
        v_prev = None
        for blk in self.blocks:
            x, v_prev = blk(x + pe, c, pr, cos, sin, v_prev, gh, gw)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=-1)
        x = self.out(self.norm_out(x) * (1 + scale) + shift)
        return unpatchify(x, cfg.z, gh, gw, p)

    def collect_balance(self, on: bool = True) -> None:
        """Store (or stop storing) each MoE call's load-balancing term for `balance_loss`."""
        for blk in self.blocks:
            blk.moe.collect, blk.moe.aux = on, []

    def balance_loss(self) -> torch.Tensor:
        """Mean load-balancing loss over the MoE calls since the last call (and forget them)."""
        terms = [a for blk in self.blocks for a in blk.moe.aux]
        for blk in self.blocks:
            blk.moe.aux = []
        return torch.stack(terms).mean() if terms else torch.zeros(())


# -- 5. the sampler -------------------------------------------------------------------------------------


def time_grid(k: int) -> list[float]:
    """t_0 = 0 (noise) ... t_k = 1 (data), uniform."""
    return [i / k for i in range(k + 1)]


def midpoint_step(z: torch.Tensor, v: torch.Tensor, t: float, t_next: float, g: float,
                  eps: torch.Tensor | None = None) -> torch.Tensor:
    """One step of the paper's Alg. 1 with velocity reuse: half-step with v to the midpoint, then the
    second half with the same v plus the score correction kappa (t_m v - z_m)/(1 - t_m) and noise
    sqrt(2 kappa dt) eps, kappa = g sin^2(pi t_m). With g = 0 this is Euler over the whole step."""
    dt = (t_next - t) / 2
    tm = t + dt
    zm = z + v * dt
    kappa = g * math.sin(math.pi * tm) ** 2
    if kappa == 0.0:
        return zm + v * dt
    z_next = zm + (v + kappa * (tm * v - zm) / (1 - tm)) * dt
    if eps is not None:
        z_next = z_next + math.sqrt(2 * kappa * dt) * eps
    return z_next


# -- 6. the model ------------------------------------------------------------------------------------------


class MMAIF(nn.Module):
    """VAE + prompt table + the flow DiT and the regression DiT (one weights file holds both).

    `variant` ("flow" | "regression"), `task` ("mef" | "vif"), `prompt` (a name of
    `PROMPTS` for the task), `steps` (sampler steps K; the teacher has `cfg.steps`),
    `student_steps` (None: the teacher; K: a distilled flow student, sampled with Euler).
    """

    def __init__(self, cfg: MMAIFConfig, variant: str = "flow", task: str = "mef", prompt: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = VAE(cfg)
        self.prompts = nn.Parameter(torch.randn(len(PROMPTS), cfg.prompt_len, cfg.prompt_dim) * 0.5)
        self.flow = DiT(cfg, timed=True)
        self.regression = DiT(cfg, timed=False)
        self.variant, self.steps, self.g = variant, cfg.steps, cfg.g
        self.student_steps: int | None = None
        self.set_task(task, prompt)

    def set_task(self, task: str, prompt: str | None = None) -> None:
        """Choose the task and its prompt (default: the task's first)."""
        if task not in TASKS:
            raise LowlightError(f"mmaif has no task {task!r}", f"use --task with one of: {', '.join(TASKS)}")
        prompt = prompt or task_prompts(task)[0]
        if prompt not in PROMPTS:
            raise LowlightError(f"mmaif has no prompt {prompt!r}",
                                f"use --prompt with one of {task}'s prompts: {', '.join(task_prompts(task))} "
                                "(`lowlight-compile zoo list` lists them)")
        if PROMPTS[prompt][0] != task:
            raise LowlightError(f"prompt {prompt!r} is for task {PROMPTS[prompt][0]}, not {task}",
                                f"use --prompt with one of: {', '.join(task_prompts(task))}")
        self.task, self.prompt = task, prompt

    @property
    def input_names(self) -> tuple[str, str]:
        (a, _), (b, _) = TASKS[self.task]
        return a, b

    def prompt_embedding(self, b: int, name: str | None = None) -> torch.Tensor:
        """[b, L, prompt_dim]: the named prompt's learned embedding."""
        return self.prompts[PROMPT_NAMES.index(name or self.prompt)].unsqueeze(0).expand(b, -1, -1)

    def dit(self) -> DiT:
        return self.flow if self.variant == "flow" else self.regression

    # -- inputs
    def check_inputs(self, feeds: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's two inputs as [B, 3, H, W] (infrared repeated), or LowlightError with the fix."""
        names = self.input_names
        given = {k for k, v in feeds.items() if v is not None}
        other = [n for t, ins in TASKS.items() if t != self.task for n, _ in ins if n in given]
        if other:
            raise LowlightError(f"mmaif task {self.task} takes {names[0]}= and {names[1]}=, not {', '.join(other)}=",
                                f"pass {names[0]}= and {names[1]}=, or load the model with task="
                                f"{next(t for t, ins in TASKS.items() if other[0] in dict(ins))!r}")
        missing = [n for n in names if n not in given]
        if missing:
            raise LowlightError(f"mmaif task {self.task} is missing input {', '.join(missing)}",
                                f"pass both {names[0]}= and {names[1]}= ([B, C, H, W] in [0, 1])")
        (n0, c0), (n1, c1) = TASKS[self.task]
        x0, x1 = feeds[n0], feeds[n1]
        assert x0 is not None and x1 is not None
        for n, x, c in ((n0, x0, c0), (n1, x1, c1)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ShapeError(f"{n} has shape {tuple(x.shape)}, not [B, {c}, H, W]", f"pass {n} as a [B, {c}, H, W] tensor")
        if x0.shape[0] != x1.shape[0] or x0.shape[2:] != x1.shape[2:]:
            raise ShapeError(f"{n0} {tuple(x0.shape)} and {n1} {tuple(x1.shape)} differ in batch or size",
                             "pass two frames of the same scene at the same size")
        return x0, x1.expand(-1, 3, -1, -1) if c1 == 1 else x1

    def latent_shape(self, b: int, h: int, w: int) -> tuple[int, int, int, int]:
        return (b, self.cfg.z, h // self.cfg.f, w // self.cfg.f)

    def draw_noise(self, shape: tuple[int, ...]) -> np.ndarray:
        """z_0 of the sampler: NumPy PCG64 from the config's seed (the host's draw in a bundle)."""
        return np.random.default_rng(self.cfg.seed).standard_normal(shape, dtype=np.float32)

    # -- the pieces the graphs and the distill stage share
    def condition(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """[B, 2z, h, w]: the two degraded latents."""
        return torch.cat([self.vae.encode(x0), self.vae.encode(x1)], dim=1)

    def velocity(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.flow(z, t.reshape(-1).expand(z.shape[0]), cond, prompt)

    def regress(self, cond: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        z = self.cfg.z
        return self.regression((cond[:, :z] + cond[:, z:]) / 2, None, cond, prompt)

    def sample(self, z: torch.Tensor, cond: torch.Tensor, prompt: torch.Tensor, steps: int | None = None,
               g: float | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """Integrate from noise z (t = 0) to the data latent (t = 1): the teacher's midpoint with velocity
        reuse (g > 0 draws eps from `gen`), a student's Euler steps."""
        k = int(steps or self.student_steps or self.steps)
        g = self.g if g is None or self.student_steps is not None else g
        grid = time_grid(k)
        for i in range(k):
            t = torch.full((z.shape[0],), grid[i], dtype=z.dtype, device=z.device)
            v = self.velocity(z, t, cond, prompt)
            eps = torch.randn(z.shape, generator=gen, dtype=z.dtype) if g > 0 else None
            z = midpoint_step(z, v, grid[i], grid[i + 1], g, eps)
        return z

    def fuse(self, x0: torch.Tensor, x1: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Fused image [B, 3, H, W] from the two task inputs ([B, 3, H, W], sizes multiples of `cfg.multiple`)."""
        cond = self.condition(x0, x1)
        prompt = self.prompt_embedding(x0.shape[0])
        if self.variant == "regression":
            return self.vae.decode(self.regress(cond, prompt))
        if noise is None:
            noise = torch.from_numpy(self.draw_noise(tuple(cond.shape[:1]) + (self.cfg.z,) + tuple(cond.shape[2:])))
        return self.vae.decode(self.sample(noise.to(cond.device, cond.dtype), cond, prompt))

    def forward(self, under: torch.Tensor | None = None, over: torch.Tensor | None = None,
                visible: torch.Tensor | None = None, infrared: torch.Tensor | None = None,
                noise: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """`fused` [B, 3, H, W] in [0, 1] from the task's inputs; sizes that are not multiples of
        `cfg.multiple` are padded (reflect) and cropped back."""
        x0, x1 = self.check_inputs({"under": under, "over": over, "visible": visible, "infrared": infrared})
        h, w = x0.shape[2:]
        m = self.cfg.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x0, x1 = (F.pad(x, (0, pw, 0, ph), mode=mode) for x in (x0, x1))
        nz = torch.as_tensor(noise) if noise is not None else None
        return self.fuse(x0, x1, nz)[:, :, :h, :w]


# -- 7. the graphs of a bundle -------------------------------------------------------------------------------


class EncoderGraph(nn.Module):
    """(x0, x1) -> cond [B, 2z, h, w]; infrared is repeated to three channels inside the graph."""

    def __init__(self, model: MMAIF) -> None:
        super().__init__()
        self.model = model

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.model.condition(x0, x1.expand(-1, 3, -1, -1))


class StepGraph(nn.Module):
    """(z, t, t_next, cond) -> z_next: one DiT pass and the ODE update (the prompt is a constant)."""

    def __init__(self, model: MMAIF) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        v = self.model.velocity(z, t, cond, self.model.prompt_embedding(z.shape[0]))
        return z + (t_next - t).reshape(1, 1, 1, 1) * v


class DecoderGraph(nn.Module):
    def __init__(self, model: MMAIF) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.vae.decode(z)


class UnrolledGraph(nn.Module):
    """(x0, x1[, noise]) -> fused: encoder, K steps with constant times (or the regression pass), decoder."""

    def __init__(self, model: MMAIF, steps: int) -> None:
        super().__init__()
        self.model, self.k = model, steps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        m = self.model
        cond = m.condition(x0, x1.expand(-1, 3, -1, -1))
        prompt = m.prompt_embedding(x0.shape[0])
        if m.variant == "regression":
            return m.vae.decode(m.regress(cond, prompt))
        assert noise is not None
        z, grid = noise, time_grid(self.k)
        for i in range(self.k):
            t = torch.full((z.shape[0],), grid[i], dtype=z.dtype, device=z.device)
            z = z + (grid[i + 1] - grid[i]) * m.velocity(z, t, cond, prompt)
        return m.vae.decode(z)


# -- counting ---------------------------------------------------------------------------------------------------


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dit_parameters(dit: DiT) -> dict[str, int]:
    """Total and activated parameters of a DiT (activated: 2 of the E routed experts per token)."""
    total = count(dit)
    routed = sum(count(b.moe) - count(b.moe.router) - count(b.moe.shared_in) - count(b.moe.shared_out) for b in dit.blocks)
    e = dit.cfg.experts
    return {"total": total, "active": total - routed * (e - 2) // e, "routed_experts": routed}


def build(config: str | MMAIFConfig, variant: str = "flow", task: str = "mef", prompt: str | None = None,
          steps: int | str | None = None) -> MMAIF:
    """A fresh MMAIF at `config` (untrained)."""
    cfg = CONFIGS[config] if isinstance(config, str) else config
    model = MMAIF(cfg, variant, task, prompt)
    if steps is not None:
        model.steps = int(steps)
    return model


# -- 8. family ---------------------------------------------------------------------------------------------------

STEP_CHOICES = ("5", "4", "2", "1")


def parse_image_shape(shape: str, config: str) -> tuple[int, int, int, int]:
    """(B, 3, H, W) from a `Bx3xHxW` --shape; ShapeError names the multiple."""
    from lowlight.models.family import _parse_shape

    dims = _parse_shape(shape)
    if len(dims) != 4 or dims[1] != 3:
        raise ShapeError(f"--shape {shape} is not [B,3,H,W]", "give --shape like 1x3x64x64 (the infrared input takes 1 channel of it)")
    m = CONFIGS[config].multiple
    b, _, h, w = dims
    bad = [f"{n}={v}" for n, v in (("H", h), ("W", w)) if v % m]
    if bad:
        fix = f"{h + (-h) % m}x{w + (-w) % m}"
        raise ShapeError(f"--shape {shape}: {', '.join(bad)} is not a multiple of {m} (VAE factor {CONFIGS[config].f} x patch "
                         f"{CONFIGS[config].patch})", f"use --shape {b}x3x{fix}; the PyTorch model pads and crops back itself")
    return b, 3, h, w


class MMAIFFamily(Family):
    """MMAIF as the compiler sees it: encoder, step (K times), decoder over a program, or one graph."""

    name = "mmaif"
    summary = "MMAIF: two degraded frames (mef: under/over exposure; vif: low-light visible + infrared) fused by a prompt-guided MoE DiT"
    configs = dict(CONFIGS)
    default_config = "small"
    options = (
        Option("variant", ("flow", "regression"), "flow", "flow: flow matching sampled in --steps; regression: one pass, no timestep"),
        Option("steps", STEP_CHOICES, "1",
               "sampler steps K: 5 the teacher (midpoint with velocity reuse), 2/1 the distilled students "
               "(the teacher's own sampler at K when there is none)"),
        Option("task", tuple(TASKS), "mef", "mef: inputs under, over (exposures); vif: inputs visible, infrared"),
        Option("prompt", ("default",) + PROMPT_NAMES, "default", "a shipped prompt of the task (default: its first)"),
        Option("unroll", ("no", "yes"), "no", "yes: one graph (what TensorRT build plans take); no: encoder, step, decoder"),
    )
    weights = {"small": "mmaif_small.safetensors"}
    trainer = "lowlight.models.train_mmaif:train"
    distill_option = "steps"
    teacher_steps = 5
    # The router's logits, softmax and top-2 are part of the decomposed moe_top2 (lowered nodes:
    # float; TopK and the router kept float by name too). On TensorRT >= 10.9 the whole MoE is one
    # plugin node and runs in the plugin's type (never quantized under INT8). The VAE's first and
    # last conv and the timestep embedding (sin/cos of up to 1000 rad) stay float: error there
    # lands in the image or feeds z back every step.
    keep_float = KeepFloat(op_types=("Sin", "Cos", "TopK"), module_patterns=(
        r"^model\.vae\.enc_in$", r"^model\.vae\.dec_out$", r"t_embed", r"\.router$"))
    output_names = ("fused",)

    def needs_student(self, steps: int, **options: str) -> bool:
        """The regression variant is one pass: no sampler, nothing to distill, whatever --steps says."""
        return options.get("variant") != "regression" and steps != self.teacher_steps

    def build(self, config: str, variant: str = "flow", steps: str | int | None = None, task: str = "mef",
              prompt: str | None = None, **_: Any) -> MMAIF:
        return build(config, variant, task, None if prompt in (None, "default") else prompt, steps)

    def catalog(self) -> list[str]:
        """The shipped prompts (learned embeddings in the weights), per task."""
        return [f"--task {t} --prompt {n}{' (default)' if task_prompts(t)[0] == n else ''}: {d}" for n, (t, d) in PROMPTS.items()]

    def finish_load(self, model: nn.Module, checkpoint: Path, config: str, steps: str | int | None = None,
                    student: str | Path | bool | None = None, variant: str = "flow", **options: Any) -> list[str]:
        """Load the K-step student beside the teacher for `steps=K` (K < 5); `student=False`: the teacher's sampler at K."""
        from lowlight.models.family import declines_student, load_student_into

        assert isinstance(model, MMAIF)
        k = int(steps) if steps is not None else model.steps
        if variant == "regression":
            return ["regression: one pass (steps ignored)"] if steps is not None else []
        if k == self.teacher_steps:
            return []
        if declines_student(student):
            return [f"student=False: the teacher's sampler at {k} steps"]
        path = load_student_into(self, model, checkpoint, config, k, ("flow",), student)
        if path is None:
            return [f"no {k}-step student beside {checkpoint.name}: the teacher's sampler at {k} steps"]
        model.steps = k
        return [f"{k}-step student {path.name} (distilled from this teacher)"]

    def default_shape(self, config: str, **options: str) -> str:
        side = max(CONFIGS[config].multiple, 64)
        return f"1x3x{side}x{side}"

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        b, _, h, w = parse_image_shape(shape, config)
        (n0, c0), (n1, c1) = TASKS[options.get("task") or "mef"]
        return [Tensor(n0, (b, c0, h, w), "BCHW"), Tensor(n1, (b, c1, h, w), "BCHW")]

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, np.ndarray]]:
        """The task's degraded pairs made from frames (`calibration.fusion`), whole batches."""
        return self.ground_truth_inputs(frames, shape, config, seed, **options)[0]

    def ground_truth_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0,
                            **options: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
        """(feeds, clean frames): each frame fitted to H x W and degraded the way training degrades it."""
        from lowlight.calibration.fusion import fusion_pair
        from lowlight.runtime.io import fit_frame

        b, _, h, w = parse_image_shape(shape, config)
        task = options.get("task") or "mef"
        prompt = options.get("prompt") or "default"
        prompt = task_prompts(task)[0] if prompt == "default" else prompt
        rng = np.random.default_rng(seed)
        made = [fusion_pair(prompt, fit_frame(f, h, w), rng) for f in frames]
        (n0, _), (n1, _) = TASKS[task]
        feeds, targets = [], []
        for i in range(0, len(made) - b + 1, b):
            part = made[i : i + b]
            feeds.append({n0: np.stack([p[0] for p in part]), n1: np.stack([p[1] for p in part])})
            targets.append(np.stack([p[2] for p in part]))
        return feeds, targets

    def _k(self, model: MMAIF, options: dict[str, str]) -> int:
        return 1 if model.variant == "regression" else int(options.get("steps") or model.steps)

    def components(self, model: nn.Module, inputs: list[Tensor], config: str, **options: str) -> list[Component]:
        assert isinstance(model, MMAIF)
        b, _, h, w = inputs[0].shape
        latent = model.latent_shape(b, h, w)
        cond = Tensor("cond", (b, 2 * latent[1], *latent[2:]), "other", None)
        z = Tensor("z", latent, "latent", None)
        if options.get("unroll") == "yes" or model.variant == "regression":
            noise = [Tensor("noise", latent, "latent", None)] if model.variant == "flow" else []
            return [Component("sampler", UnrolledGraph(model, self._k(model, options)), list(inputs) + noise,
                              ["fused"], {"fused": "BCHW"})]
        t_in = [Tensor("t", (1,), "other", (0.0, 1.0)), Tensor("t_next", (1,), "other", (0.0, 1.0))]
        return [
            Component("encoder", EncoderGraph(model), list(inputs), ["cond"], {"cond": "other"}),
            Component("step", StepGraph(model), [z, *t_in, cond], ["z_next"], {"z_next": "latent"}),
            Component("decoder", DecoderGraph(model), [z], ["fused"], {"fused": "BCHW"}),
        ]

    def program(self, components: list[Component], inputs: list[Tensor], config: str, **options: str) -> dict[str, Any]:
        by = {c.name: c for c in components}
        seed = CONFIGS[config].seed
        if "sampler" in by:
            sampler = by["sampler"]
            noise = [{"op": "noise", "shape": list(t.shape), "out": t.name, "input": "noise"} for t in sampler.inputs if t.layout == "latent"]
            return {"unrolled": True, "seed": seed, "steps": noise + [
                {"op": "call", "component": "sampler", "in": {t.name: t.name for t in sampler.inputs}, "out": {"fused": "fused"}}]}
        enc, step, dec = by["encoder"], by["step"], by["decoder"]
        k = int(options.get("steps") or CONFIGS[config].steps)
        return {"unrolled": False, "seed": seed, "steps": [
            {"op": "noise", "shape": list(step.inputs[0].shape), "out": "z", "input": "noise"},
            {"op": "call", "component": "encoder", "in": {t.name: t.name for t in enc.inputs}, "out": {"cond": "cond"}},
            {"op": "loop", "count": k, "var": "k", "body": [
                {"op": "const", "name": "t", "index": "k", "out": "t"},
                {"op": "const", "name": "t_next", "index": "k", "out": "t_next"},
                {"op": "call", "component": "step", "in": {t.name: t.name for t in step.inputs}, "out": {"z_next": "z"}},
            ]},
            {"op": "call", "component": "decoder", "in": {t.name: t.name for t in dec.inputs}, "out": {"fused": "fused"}},
        ]}

    def constants(self, config: str, **options: str) -> dict[str, np.ndarray]:
        """The K-step time grid (t, t_next per step, [K, 1] float32)."""
        if options.get("variant") == "regression":
            return {}
        k = int(options.get("steps") or CONFIGS[config].steps)
        grid = np.asarray(time_grid(k), dtype=np.float32)
        return {"t": grid[:-1].reshape(k, 1), "t_next": grid[1:].reshape(k, 1)}
