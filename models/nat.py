"""NAT on GLARE: codebook retrieval refined by a mask-aware non-autoregressive transformer.

Sources (not shipped with the code; the facts this file relies on are here):
  - GLARE (Zhou et al., "GLARE: Low Light Image Enhancement via Generative
    Latent Feature based Codebook Retrieval", ECCV 2024; public code
    LowLevelAI/GLARE). Its three stages: a VQGAN codebook learned on
    normal-light images (`code/confs/LOL.yml`: n_embed 8192, embed_dim 3,
    ch 128, ch_mult [1, 2, 4] so f = 4, 2 res blocks, attention at 64); an
    invertible conditional flow (I-LNF: K 12, L 2, RRDB condition encoder
    nf 64, nb 24) mapping the low-light image to the normal-light latent, run at
    heat 0 at test time (deterministic); nearest-code retrieval; a decoder with
    the low-light encoder's features fused in by adaptive feature transformation
    (deformable convolution, `deformableDecoder_arch.py`).
  - The slides "Enhancing Low-Light Image Reconstruction via Non-Autoregressive
    Transformers: A Mask-Aware Latent Integration Framework": a NAT after latent
    alignment. "Tokens with entropy above a threshold tau are replaced with a
    learnable [MASK] token. The NAT module predicts all masked tokens in parallel
    at each iteration. After each round, tokens with low confidence are
    re-masked"; H(V_i) = -sum_k p(V_i = k) log p(V_i = k); 4 rounds in training
    and inference. Table II (rounds -> PSNR on their data): 2 -> 26.33,
    4 -> 26.60, 6 -> 26.62 dB; GLARE baseline 25.52 dB.

Read top to bottom:
  1. config: `NATConfig`, `CONFIGS` tiny / small / paper;
  2. convolutional parts: residual block, encoder (the VQ encoder and the
     low-light encoder), the codebook, the decoder with AFT;
  3. the NAT and the entropy rule;
  4. `NATGlare`: retrieval, K rounds of refinement, decoding;
  5. `NATFamily`: what the compiler needs to know.

Choices where the sources are silent (each recorded here and counted in tests/test_nat.py):
  - a token is the codebook index at a latent position. Round 0 has no NAT
    output: its distribution is p0 = softmax(-d / T) over the retrieval
    distances d, T (`temperature`) a constant calibrated at training time;
  - tau (`tau`, a buffer: a constant in every compiled graph) is calibrated
    so that round 1 masks about 30 % of the tokens on the training data;
  - re-masking applies to every position in every round (accepted tokens can be
    re-masked when the NAT is unsure of them); tokens still above tau after the
    last round keep their argmax;
  - a distilled K-round student's last round sets every token (`refine`,
    `decide_all`): it is trained to match the teacher's final distribution on all
    tokens, including ones the teacher only re-masks in later rounds;
  - the NAT input is the code embedding (or [MASK]) plus a projection of the
    aligned low-light latent (so a masked position still sees its own evidence)
    plus a fixed 2D sin-cos position embedding; one NAT shared by all rounds;
  - the I-LNF flow is replaced by a deterministic conditional encoder that
    regresses the normal-light latent (GLARE at heat 0 is a deterministic
    conditional map; the flow's likelihood training is what this gives up).
    The compiled graphs therefore have no matrix inverse at all;
  - the slides' second NAT in GLARE's stage 3 is "not shown" there and not built;
  - the AFT fusion is feat * (1 + gamma(f_ll)) + beta(f_ll) per decoder level,
    gamma and beta zero-initialised convs; the paper config aligns f_ll with a
    deformable conv first (`torchvision.ops.deform_conv2d`), the small one does not;
  - paper NAT: 8 pre-LN layers, d 512, 8 heads, FFN 2048 (the slides give no size);
    GLARE's attention at 64 and RRDB blocks become plain residual blocks (nb 24
    of them in the low-light encoder).

Compiled form (static, deterministic): masking is `Where` on an entropy
threshold (no TopK over all tokens: TensorRT's TopK needs K < 3840 and a 64x64
latent has 4096 tokens), decoding is argmax, no random op. Distances, softmax,
entropy and arg-min/max stay float under INT8 and FP16 (`keep_float`): one
flipped token is a visible 4x4 block. The bundle outputs `tokens` (the final
indices) so verification reports token agreement with FP32.

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

# -- 1. config ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NATConfig:
    """Sizes of one NAT-on-GLARE config."""

    name: str
    ch: int                     # VQ encoder/decoder base width
    ch_mult: tuple[int, ...]    # per level; f = 2 ** (levels - 1)
    res_blocks: int             # per level, VQ encoder and decoder
    embed_dim: int              # code vector size
    codes: int                  # codebook entries V
    ll_ch: int                  # low-light encoder (the flow's stand-in) base width
    ll_blocks: int              # its residual blocks per level
    nat_layers: int
    nat_dim: int
    nat_heads: int
    nat_ffn: int
    rounds: int = 4             # the teacher's refinement rounds (the slides' default)
    deform: bool = False        # AFT aligns the low-light features with a deformable conv
    max_tokens: int = 4096      # global attention over N tokens: N^2 scores per head

    @property
    def f(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def multiple(self) -> int:
        return self.f


CONFIGS: dict[str, NATConfig] = {
    "tiny": NATConfig("tiny", ch=8, ch_mult=(1, 2, 2), res_blocks=1, embed_dim=3, codes=32, ll_ch=8, ll_blocks=1,
                      nat_layers=2, nat_dim=32, nat_heads=2, nat_ffn=64),
    "small": NATConfig("small", ch=32, ch_mult=(1, 2, 2), res_blocks=1, embed_dim=3, codes=512, ll_ch=32, ll_blocks=2,
                       nat_layers=4, nat_dim=128, nat_heads=4, nat_ffn=512),
    "paper": NATConfig("paper", ch=128, ch_mult=(1, 2, 4), res_blocks=2, embed_dim=3, codes=8192, ll_ch=64, ll_blocks=8,
                       nat_layers=8, nat_dim=512, nat_heads=8, nat_ffn=2048, deform=True, max_tokens=3840),
}

# -- 2. convolutional parts -------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """conv3-SiLU-conv3 with a skip (1x1 when the width changes). No norm: the graphs quantize plainly."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv2(F.silu(self.conv1(x)))


class Encoder(nn.Module):
    """Image -> latent [B, embed_dim, H/f, W/f], and each level's features (full, 1/2, ... resolution).

    The VQ encoder (normal-light prior) and the low-light encoder (the flow's
    stand-in, whose features also feed the decoder's AFT) are both this."""

    def __init__(self, ch: int, mult: tuple[int, ...], blocks: int, embed_dim: int) -> None:
        super().__init__()
        chs = [ch * m for m in mult]
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = chs[0]
        for i, c in enumerate(chs):
            self.levels.append(nn.Sequential(*[ResBlock(prev if j == 0 else c, c) for j in range(blocks)]))
            prev = c
            if i < len(chs) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.conv_out = nn.Conv2d(chs[-1], embed_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.conv_in(x)
        feats = []
        for i, level in enumerate(self.levels):
            h = level(h)
            feats.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        return self.conv_out(F.silu(h)), feats


class Codebook(nn.Module):
    """The normal-light codebook [V, e]: `forward` gives squared distances [B, N, V] of each latent token to every code."""

    def __init__(self, codes: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.empty(codes, dim).uniform_(-1.0 / codes, 1.0 / codes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        tokens = z.flatten(2).transpose(1, 2)  # [B, N, e]
        e = self.embed
        # |z|^2 + |e|^2 - 2 z.e: one MatMul, not a [B, N, V, e] difference tensor
        return (tokens * tokens).sum(-1, keepdim=True) + (e * e).sum(-1)[None, None, :] - 2.0 * tokens @ e.t()


class Lookup(nn.Module):
    """Code indices [B, N] -> the quantized latent [B, e, h, w]."""

    def forward(self, idx: torch.Tensor, embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return F.embedding(idx, embed).transpose(1, 2).reshape(idx.shape[0], embed.shape[1], h, w)


class DeformAlign(nn.Module):
    """A 3x3 deformable conv whose offsets come from the features themselves (paper config's AFT alignment).

    Runs `torchvision.ops.deform_conv2d` with symmetric pads (exported as ONNX DeformConv, which
    TensorRT 10 runs in FP32/FP16); torchvision is imported only when it runs."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.offset = nn.Conv2d(c, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.weight = nn.Parameter(torch.empty(c, c, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            from torchvision.ops import deform_conv2d
        except Exception as exc:  # noqa: BLE001 - torchvision missing or broken beside this torch
            raise LowlightError(f"the paper config's deformable convolution needs torchvision ({type(exc).__name__}: {exc})",
                                "install a torchvision matching your torch, or use --config small (plain convolutions)") from exc
        return deform_conv2d(x, self.offset(x), self.weight, self.bias, padding=(1, 1))


class AFT(nn.Module):
    """Adaptive feature transformation: decoder features modulated by the low-light encoder's (zero-initialised: identity)."""

    def __init__(self, c: int, c_ll: int, deform: bool) -> None:
        super().__init__()
        self.align = DeformAlign(c_ll) if deform else nn.Identity()
        self.gamma = nn.Conv2d(c_ll, c, 3, padding=1)
        self.beta = nn.Conv2d(c_ll, c, 3, padding=1)
        for m in (self.gamma, self.beta):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, f_ll: torch.Tensor) -> torch.Tensor:
        f = self.align(f_ll)
        return x * (1 + self.gamma(f)) + self.beta(f)


class Decoder(nn.Module):
    """Quantized latent (+ low-light features) -> image. Without features it is the VQ decoder."""

    def __init__(self, cfg: NATConfig) -> None:
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        ll = [cfg.ll_ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.embed_dim, chs[-1], 3, padding=1)
        self.levels = nn.ModuleList()
        self.aft = nn.ModuleList()
        self.up = nn.ModuleList()
        prev = chs[-1]
        for i in reversed(range(len(chs))):
            self.levels.append(nn.Sequential(*[ResBlock(prev if j == 0 else chs[i], chs[i]) for j in range(cfg.res_blocks)]))
            self.aft.append(AFT(chs[i], ll[i], cfg.deform))
            prev = chs[i]
            if i > 0:
                self.up.append(nn.Conv2d(chs[i], chs[i], 3, padding=1))
        self.conv_out = nn.Conv2d(chs[0], 3, 3, padding=1)

    def forward(self, zq: torch.Tensor, feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = self.conv_in(zq)
        n = len(self.levels)
        for j, level in enumerate(self.levels):
            h = level(h)
            if feats is not None:
                h = self.aft[j](h, feats[n - 1 - j])
            if j < len(self.up):
                h = self.up[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(h))


# -- 3. the NAT and the entropy rule ---------------------------------------------------------------------


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding [h*w, dim] (half the channels for rows, half for columns)."""
    q = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(q, dtype=torch.float32, device=device) / max(1, q))
    # arange(h)[:, None].expand: exports with static or symbolic sizes (see models/mmaif.py rope_2d)
    rows = torch.arange(h, dtype=torch.float32, device=device)[:, None].expand(h, w).reshape(-1, 1) * freqs
    cols = torch.arange(w, dtype=torch.float32, device=device)[None, :].expand(h, w).reshape(-1, 1) * freqs
    pe = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)
    return F.pad(pe, (0, dim - pe.shape[-1]))


class Entropy(nn.Module):
    """H = -sum p log p of softmax(logits) over the last axis, in nats (log-softmax: no log of 0)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)


class Block(nn.Module):
    """Pre-LN transformer block: global self-attention over all tokens, then a SiLU MLP.

    SiLU rather than GELU: opset-20 Gelu is not in TensorRT 10.3's ONNX parser (Jetson Orin)."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.silu(self.fc1(self.ln2(x))))


class NAT(nn.Module):
    """Tokens (code or [MASK]) + the low-light evidence -> logits over the codebook for every position."""

    def __init__(self, cfg: NATConfig) -> None:
        super().__init__()
        d = cfg.nat_dim
        self.dim = d
        self.embed = nn.Embedding(cfg.codes, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.evidence = nn.Linear(cfg.embed_dim, d)
        self.blocks = nn.ModuleList(Block(d, cfg.nat_heads, cfg.nat_ffn) for _ in range(cfg.nat_layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.codes)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def context(self, z_ll: torch.Tensor) -> torch.Tensor:
        """What every round adds to its tokens: the aligned latent's projection plus the position embedding [B, N, d]."""
        _, _, h, w = z_ll.shape
        return self.evidence(z_ll.flatten(2).transpose(1, 2)) + sincos_2d(h, w, self.dim, z_ll.device)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(ctx.dtype), self.embed(idx)) + ctx
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


# -- 4. the model --------------------------------------------------------------------------------------------


class NATGlare(nn.Module):
    """`model(rgb=[B,3,H,W] in [0,1])` -> enhanced [B,3,H,W] (and the final `tokens` [B,N] with `return_tokens=True`).

    `rounds`: refinement rounds (`cfg.rounds` the teacher; 0 plain retrieval).
    `student_steps` is set when a distilled student's NAT is loaded."""

    def __init__(self, cfg: NATConfig, rounds: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.rounds = cfg.rounds if rounds is None else int(rounds)
        self.student_steps: int | None = None
        self.encoder = Encoder(cfg.ch, cfg.ch_mult, cfg.res_blocks, cfg.embed_dim)         # normal-light VQ encoder (training only)
        self.codebook = Codebook(cfg.codes, cfg.embed_dim)
        self.lookup = Lookup()
        self.ll_encoder = Encoder(cfg.ll_ch, cfg.ch_mult, cfg.ll_blocks, cfg.embed_dim)  # the I-LNF at heat 0, as a map
        self.nat = NAT(cfg)
        self.entropy = Entropy()
        self.decoder = Decoder(cfg)
        # calibrated by the trainer and shipped in the weights: constants of every compiled graph
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("tau", torch.tensor(1.0))

    # pieces the trainer and the distill stage use -----------------------------------------------------------

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Reflect-pad H and W to multiples of f (cropped back after decoding)."""
        h, w = x.shape[-2:]
        m = self.cfg.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return x, h, w

    def retrieve(self, z_ll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(initial indices [B, N], round-0 logits -d/T [B, N, V]) by nearest-code retrieval."""
        d = self.codebook(z_ll)
        return d.argmin(-1), -d / self.temperature

    def refine(self, z_ll: torch.Tensor, rounds: int, decide_all: bool | None = None) -> dict[str, Any]:
        """Retrieval then `rounds` NAT rounds. Returns the final indices ("tokens"), the logits that decided
        each token ("logits": the round that last set it; round 0: -d/T) and each round's mask ("masks").

        `decide_all` (default: True for a distilled student): the last round sets every token, masked or
        not. A student is trained to match the teacher's final distribution on every token, and tokens
        the teacher re-masks in its later rounds may be confident at round 0: a student that could only
        change the tokens its own masks name could not reach them. The teacher (and its truncation) follow
        the slides' rule: only masked tokens change."""
        if decide_all is None:
            decide_all = self.student_steps is not None
        idx, logits0 = self.retrieve(z_ll)
        decided = logits0
        mask = self.entropy(logits0) > self.tau
        masks = [mask]
        ctx = self.nat.context(z_ll)
        for k in range(rounds):
            logits = self.nat(idx, mask, ctx)
            if decide_all and k == rounds - 1:
                idx, decided = logits.argmax(-1), logits
                break
            idx = torch.where(mask, logits.argmax(-1), idx)
            decided = torch.where(mask.unsqueeze(-1), logits, decided)
            if k < rounds - 1:
                mask = self.entropy(logits) > self.tau
                masks.append(mask)
        return {"tokens": idx, "logits": decided, "masks": masks}

    def decode(self, idx: torch.Tensor, feats: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
        """Indices [B, N] on an h x w latent grid -> image, the low-light features fused in."""
        return self.decoder(self.lookup(idx, self.codebook.embed, h, w), feats)

    def forward(self, rgb: torch.Tensor, return_tokens: bool = False) -> Any:
        x, h, w = self.pad(rgb)
        z_ll, feats = self.ll_encoder(x)
        lh, lw = z_ll.shape[-2:]
        tokens = self.refine(z_ll, self.rounds)["tokens"]
        out = self.decode(tokens, feats, lh, lw)[..., :h, :w].clamp(0.0, 1.0)
        return (out, tokens) if return_tokens else out


class _WithTokens(nn.Module):
    """What a bundle exports: `rgb` -> (enhanced, tokens)."""

    def __init__(self, model: NATGlare) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, tokens = self.model(rgb, return_tokens=True)
        return out, tokens


def build(config: str | NATConfig, steps: int | str | None = None) -> NATGlare:
    """A fresh NAT-on-GLARE model at `config` (untrained), refining in `steps` rounds (default: the teacher's)."""
    cfg = CONFIGS[config] if isinstance(config, str) else config
    return NATGlare(cfg, None if steps is None else int(steps))


def count_parameters(model: NATGlare) -> dict[str, int]:
    """Parameters per part (the paper config's are counted in tests/test_nat.py)."""
    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())
    return {"vq_encoder": n(model.encoder), "codebook": n(model.codebook), "ll_encoder": n(model.ll_encoder),
            "nat": n(model.nat), "decoder": n(model.decoder), "total": n(model)}


# -- 5. family ------------------------------------------------------------------------------------------------

STEP_CHOICES = ("4", "3", "2", "1", "0")


def parse_shape(shape: str, config: str) -> tuple[int, int, int, int]:
    """(B, 3, H, W) from a `Bx3xHxW` --shape; ShapeError names the multiple or the token limit."""
    from lowlight.models.family import _parse_shape

    dims = _parse_shape(shape)
    if len(dims) != 4 or dims[1] != 3:
        raise ShapeError(f"--shape {shape} is not [B,3,H,W]", "give --shape like 1x3x64x64")
    cfg = CONFIGS[config]
    b, _, h, w = dims
    m = cfg.multiple
    bad = [f"{n}={v}" for n, v in (("H", h), ("W", w)) if v % m]
    if bad:
        raise ShapeError(f"--shape {shape}: {', '.join(bad)} is not a multiple of {m} (the codebook's latent is 1/{m} of the image)",
                         f"use --shape {b}x3x{h + (-h) % m}x{w + (-w) % m}; the PyTorch model pads and crops back itself")
    n = (h // m) * (w // m)
    if n > cfg.max_tokens:
        side = int(math.isqrt(cfg.max_tokens)) * m
        raise ShapeError(f"--shape {shape} gives a latent of {n} tokens; the NAT's global attention is compiled for at most "
                         f"{cfg.max_tokens} ({n}^2 attention scores per head and round)",
                         f"compile at most {side}x{side} (e.g. --shape {b}x3x{side}x{side}); lowlight-run and the runtime "
                         f"session enhance larger frames in overlapping tiles of the compiled size")
    return b, 3, h, w


class NATFamily(Family):
    """NAT on GLARE as the compiler sees it: one static graph with K rounds unrolled, outputs enhanced and tokens."""

    name = "nat"
    summary = "NAT on GLARE: codebook retrieval from a low-light encoder, refined by a mask-aware non-autoregressive transformer"
    configs = dict(CONFIGS)
    default_config = "small"
    options = (
        Option("steps", STEP_CHOICES, "2",
               "refinement rounds K: 4 the teacher; 2/1 the distilled students (the teacher truncated when there is none); "
               "0 plain retrieval"),
    )
    weights = {"small": "nat_small.safetensors"}
    trainer = "lowlight.models.train_nat:train"
    distill_option = "steps"
    teacher_steps = 4
    output_names = ("enhanced", "tokens")
    # One flipped token is a visible block: the retrieval distances, every softmax/entropy and the
    # arg-min/max decisions stay float (op types), as do the codebook lookups, the whole NAT (its logits
    # decide tokens; at 256 tokens x d 128 it is a small share of the work) and the whole low-light
    # encoder (the latent the retrieval reads: 512 codes in 3 dimensions sit close, so small errors
    # pick a neighbour). Measured on small, 1x3x64x64, INT8 cpu against FP32: everything but the
    # decisions quantized, 34.88 dB mean / 29.74 dB worst; the NAT's Gemms still quantized (their
    # module paths lost), 34.3-42.1 dB with 80-95 % token agreement; as below, 44.0 / 39.1 dB and 100 %.
    # INT8 is left to the decoder.
    # Gemm and MatMul by op type: simplification fuses the NAT's linears into Gemm nodes that keep
    # no module path (the decoder has none: its convs are what INT8 runs).
    keep_float = KeepFloat(boundary_convs=True, op_types=("ArgMax", "ArgMin", "Softmax", "LogSoftmax", "Exp", "Gather", "Where",
                                                          "Gemm", "MatMul"),
                           module_patterns=(r"\.codebook$", r"\.entropy$", r"\.nat(\.|$)", r"\.lookup$", r"\.ll_encoder\.", r"\.aft\."))

    def needs_student(self, steps: int, **options: str) -> bool:
        """K = 0 (plain retrieval) and the teacher's 4 rounds run no student."""
        return steps not in (0, self.teacher_steps)

    def build(self, config: str, steps: str | int | None = None, **_: Any) -> NATGlare:
        return build(config, steps)

    def finish_load(self, model: nn.Module, checkpoint: Path, config: str, steps: str | int | None = None,
                    student: str | Path | bool | None = None, **options: Any) -> list[str]:
        """Load the K-round student beside the teacher for `steps=K` in (1, 2); else the teacher truncated to K rounds."""
        from lowlight.models.family import declines_student, load_student_into

        assert isinstance(model, NATGlare)
        k = model.rounds if steps is None else int(steps)
        if k > self.teacher_steps or k < 0:
            raise LowlightError(f"steps={k}: the NAT teacher refines in {self.teacher_steps} rounds", f"use steps 0..{self.teacher_steps}")
        if k in (0, self.teacher_steps):
            return ["plain retrieval (no refinement)"] if k == 0 else []
        if declines_student(student):
            return [f"student=False: the teacher truncated to {k} round(s)"]
        path = load_student_into(self, model, checkpoint, config, k, ("nat",), student)
        if path is None:
            return [f"no {k}-round student beside {checkpoint.name}: the teacher truncated to {k} round(s)"]
        model.rounds = k
        return [f"{k}-round student {path.name} (distilled from this teacher)"]

    def default_shape(self, config: str, **options: str) -> str:
        return "1x3x64x64"

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        return [Tensor("rgb", parse_shape(shape, config), "BCHW")]

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, np.ndarray]]:
        from lowlight.models.family import image_batches

        return image_batches(frames, parse_shape(shape, config))

    def ground_truth_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0,
                            **options: str) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
        """(feeds, clean frames): each frame fitted to H x W and darkened in linear light as training darkens it."""
        from lowlight.calibration.degrade import linear_low_light
        from lowlight.runtime.io import fit_frame

        b, _, h, w = parse_shape(shape, config)
        rng = np.random.default_rng(seed)
        clean = [fit_frame(f, h, w) for f in frames]
        dark = [linear_low_light(c, rng) for c in clean]
        feeds, targets = [], []
        for i in range(0, len(clean) - b + 1, b):
            feeds.append({"rgb": np.stack(dark[i : i + b]).transpose(0, 3, 1, 2).copy()})
            targets.append(np.stack(clean[i : i + b]).transpose(0, 3, 1, 2).copy())
        return feeds, targets

    def export_module(self, model: nn.Module, **options: str) -> nn.Module:
        assert isinstance(model, NATGlare)
        return _WithTokens(model)

    def components(self, model: nn.Module, inputs: list[Tensor], config: str, **options: str) -> list[Component]:
        return [Component("model", self.export_module(model), list(inputs), ["enhanced", "tokens"],
                          {"enhanced": "BCHW", "tokens": "other"})]
