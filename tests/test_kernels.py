"""Triton kernels vs their PyTorch references, on CPU through Triton's interpreter.

TRITON_INTERPRET is set before anything imports triton's kernels (the kernel
modules are only imported inside the tests). Shapes are small: the interpreter
runs each program in numpy.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

pytest.importorskip("triton")

from lowlight.kernels import reference as ref
from lowlight.core.errors import InputError, ShapeError

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="kernel tests run under TRITON_INTERPRET=1")

# Tolerances on max |err| / max(1, max |ref|) (the "relative to output scale").
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # bf16: 8-bit mantissa
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    scale = max(1.0, want.abs().max().item())
    return (out.float() - want.float()).abs().max().item() / scale


def assert_close(outs, wants, dtype) -> None:
    for o, w in zip(outs, wants):
        assert o.shape == w.shape and o.dtype == dtype
        assert rel_err(o, w) <= TOL[dtype], rel_err(o, w)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- spectral gate
def spectral_args(B, C, H, W, dtype, seed=0):
    g = _gen(seed)
    re = torch.randn(B, C, H, W, generator=g)
    im = torch.randn(B, C, H, W, generator=g)
    wg = torch.randn(2 * C, 2 * C, generator=g) / (2 * C) ** 0.5
    ws = torch.randn(2 * C, 2 * C, generator=g) / (2 * C) ** 0.5
    bg, bs = torch.randn(2 * C, generator=g), torch.randn(2 * C, generator=g)
    return [t.to(dtype) for t in (re, im, wg, bg, ws, bs)]


SPECTRAL_SHAPES = [
    (2, 3, 5, 7),    # C not a power of two, odd H/Wf
    (1, 16, 9, 5),   # AMNet width
    (1, 48, 4, 33),  # AMNet width, CP padding 48 -> 64, Wf = W/2 + 1
    (1, 64, 3, 6),   # AMNet base's S2DG width
    (1, 5, 1, 1),    # H = Wf = 1
    (3, 2, 1, 9),    # H = 1, tiny C
    (1, 7, 6, 1),    # Wf = 1
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPECTRAL_SHAPES)
def test_spectral_gate_matches_reference(shape, dtype):
    from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton

    args = spectral_args(*shape, dtype)
    out = spectral_gate_triton(*args)
    assert_close(out, ref.spectral_gate_ref(*(a.float() for a in args)), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 48, 4, 33)])
def test_spectral_gate_weights_per_tile(shape, dtype):
    """HOIST=False (the TensorRT AOT variant: weights re-read per tile) gives the same numbers."""
    from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton

    args = spectral_args(*shape, dtype)
    out = spectral_gate_triton(*args, block_p=16, hoist=False)
    assert_close(out, ref.spectral_gate_ref(*(a.float() for a in args)), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_spectral_gate_random_shapes(seed):
    from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton

    g = _gen(100 + seed)
    B, C, H, W = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 3), (1, 40), (1, 12), (1, 20)))
    args = spectral_args(B, C, H, W, torch.float32, seed)
    out = spectral_gate_triton(*args, block_p=int(torch.randint(0, 2, (1,), generator=g)) * 32 + 32)
    assert_close(out, ref.spectral_gate_ref(*args), torch.float32)


def test_spectral_gate_on_rfft2_views():
    """re/im straight from `.real`/`.imag` of an rfft2 (strided, interleaved): no copies needed."""
    from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton

    x = torch.randn(2, 6, 10, 12, generator=_gen(1))
    z = torch.fft.rfft2(x, norm="ortho")
    assert not z.real.is_contiguous()
    _, _, wg, bg, ws, bs = spectral_args(1, 6, 1, 1, torch.float32, seed=2)
    out = spectral_gate_triton(z.real, z.imag, wg, bg, ws, bs)
    want = ref.spectral_gate_ref(z.real.contiguous(), z.imag.contiguous(), wg, bg, ws, bs)
    assert_close(out, want, torch.float32)


def test_spectral_gate_rejects_bad_weights():
    from lowlight.kernels.spectral_gate_kernel import spectral_gate_triton

    re, im, wg, bg, ws, bs = spectral_args(1, 4, 3, 3, torch.float32)
    with pytest.raises(ShapeError, match="w_g"):
        spectral_gate_triton(re, im, wg[:4], bg, ws, bs)
    with pytest.raises(InputError, match="mixed dtypes"):
        spectral_gate_triton(re, im, wg.half(), bg, ws, bs)


# ------------------------------------------------------------ illumination gate
def illum_args(B, C, H, W, dtype, seed=0):
    g = _gen(seed)
    z = torch.randn(B, C, H, W, generator=g)
    w = torch.randn(C, C, generator=g) / C ** 0.5
    b = torch.randn(C, generator=g)
    return [t.to(dtype) for t in (z, w, b)]


ILLUM_CASES = [
    ((2, 3, 5, 7), 3),
    ((1, 16, 9, 5), 7),   # k = 7 on a 5-wide map: windows clipped on both sides
    ((1, 48, 4, 33), 5),
    ((1, 5, 1, 1), 1),    # k = 1: low = z
    ((1, 5, 1, 6), 7),    # H = 1
    ((2, 6, 6, 1), 3),    # W = 1
    ((1, 32, 8, 8), 7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", ILLUM_CASES)
def test_illumination_gate_matches_reference(shape, k, dtype):
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    args = illum_args(*shape, dtype)
    out = illumination_gate_triton(*args, k)
    assert_close(out, ref.illumination_gate_ref(*(a.float() for a in args), k), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_illumination_gate_random_shapes(seed):
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    g = _gen(200 + seed)
    B, C, H, W = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 3), (1, 40), (1, 12), (1, 20)))
    k = int(torch.randint(0, 4, (1,), generator=g)) * 2 + 1
    args = illum_args(B, C, H, W, torch.float32, seed)
    assert_close(illumination_gate_triton(*args, k), ref.illumination_gate_ref(*args, k), torch.float32)


@pytest.mark.parametrize("block_p,tile_w", [(32, 1), (32, 4), (64, 16), (64, 64)])
def test_illumination_gate_tile_shapes(block_p, tile_w):
    """2-D tiles of any aspect (1 to 64 wide) cover the image exactly once."""
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    args = illum_args(2, 5, 11, 13, torch.float32, seed=4)
    out = illumination_gate_triton(*args, 5, block_p=block_p, tile_w=tile_w)
    assert_close(out, ref.illumination_gate_ref(*args, 5), torch.float32)


def test_illumination_gate_k1_low_is_input():
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    z, w, b = illum_args(1, 4, 3, 5, torch.float32)
    high, low = illumination_gate_triton(z, w, b, 1)
    assert torch.equal(low, z) and torch.count_nonzero(high) == 0


def test_illumination_gate_strided_input():
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    big, w, b = illum_args(2, 4, 12, 10, torch.float32, seed=3)
    z = big[:, :, ::2, 1:]  # non-contiguous view
    out = illumination_gate_triton(z, w, b, 3)
    assert_close(out, ref.illumination_gate_ref(z.contiguous(), w, b, 3), torch.float32)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_illumination_gate_rejects_even_k(k):
    from lowlight.kernels.illumination_gate_kernel import illumination_gate_triton

    with pytest.raises(InputError, match="odd"):
        illumination_gate_triton(*illum_args(1, 2, 3, 3, torch.float32), k)


# ---------------------------------------------------------------- top-2 route
@pytest.mark.parametrize("E", [2, 3, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_top2_route_matches_reference(E, dtype):
    from lowlight.kernels.top2_route_kernel import top2_route_triton

    logits = torch.randn(77, E, generator=_gen(E)).to(dtype)
    idx, w = top2_route_triton(logits)
    ridx, rw = ref.top2_route_ref(logits)
    assert torch.equal(idx, ridx)
    assert (w - rw).abs().max().item() <= 1e-6
    assert torch.allclose(w.sum(1), torch.ones(77))


def test_top2_route_rejects_one_expert():
    from lowlight.kernels.top2_route_kernel import top2_route_triton

    with pytest.raises(ShapeError, match="E >= 2"):
        top2_route_triton(torch.randn(4, 1))


# ------------------------------------------------------------------------ MoE
def moe_args(N, D, F, E, dtype, seed=0):
    g = _gen(seed)
    x = torch.randn(N, D, generator=g)
    wr = torch.randn(D, E, generator=g)
    w1 = torch.randn(E, D, F, generator=g) / D ** 0.5
    w3 = torch.randn(E, D, F, generator=g) / D ** 0.5
    w2 = torch.randn(E, F, D, generator=g) / F ** 0.5
    return [t.to(dtype) for t in (x, wr, w1, w3, w2)]


MOE_CASES = [
    (37, 24, 40, 4),   # N not a multiple of any block, D/F not powers of two
    (1, 16, 16, 2),    # one token
    (70, 32, 48, 8),
    (33, 20, 28, 3),   # odd E
    (130, 16, 32, 4),  # > 2 blocks per expert at BLOCK_M = 32
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MOE_CASES)
def test_moe_top2_matches_reference(case, dtype):
    from lowlight.kernels.moe_kernel import moe_top2_triton

    args = moe_args(*case, dtype)
    out = moe_top2_triton(*args)
    assert out.shape == args[0].shape and out.dtype == dtype
    assert rel_err(out, ref.moe_top2_ref(*(a.float() for a in args))) <= TOL[dtype]


@pytest.mark.parametrize("seed", range(3))
def test_moe_random_shapes(seed):
    from lowlight.kernels.moe_kernel import moe_top2_triton

    g = _gen(300 + seed)
    N, D, F, E = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 90), (8, 40), (8, 48), (2, 9)))
    args = moe_args(N, D, F, E, torch.float32, seed)
    assert rel_err(moe_top2_triton(*args), ref.moe_top2_ref(*args)) <= 1e-4


def test_moe_skewed_routing_empty_experts():
    """Every token's top-1 is expert 0 and top-2 expert 2: experts 1 and 3 get no tokens."""
    from lowlight.kernels.moe_kernel import moe_top2_triton

    x, wr, w1, w3, w2 = moe_args(45, 16, 24, 4, torch.float32, seed=5)
    x[:, 0] = 1.0
    wr[0] = torch.tensor([100.0, 0.0, 50.0, 0.0])
    idx, _ = ref.top2_route_ref(x @ wr)
    assert (idx[:, 0] == 0).all() and (idx[:, 1] == 2).all()
    out = moe_top2_triton(x, wr, w1, w3, w2)
    assert rel_err(out, ref.moe_top2_ref(x, wr, w1, w3, w2)) <= 1e-4


def test_moe_two_experts_every_token_to_both():
    from lowlight.kernels.moe_kernel import moe_top2_triton

    args = moe_args(50, 16, 16, 2, torch.float32, seed=6)
    assert rel_err(moe_top2_triton(*args), ref.moe_top2_ref(*args)) <= 1e-4


@pytest.mark.parametrize("cfg", [
    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16},
    {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16},
])
def test_moe_pinned_block_sizes(cfg):
    from lowlight.kernels.moe_kernel import moe_top2_triton

    args = moe_args(41, 24, 40, 4, torch.float32, seed=7)
    assert rel_err(moe_top2_triton(*args, config=cfg), ref.moe_top2_ref(*args)) <= 1e-4


def test_moe_matches_per_expert_loop():
    args = moe_args(29, 12, 20, 5, torch.float32, seed=8)
    assert rel_err(ref.moe_top2_loop(*args), ref.moe_top2_ref(*args)) <= 1e-5


@pytest.mark.parametrize("block_m", [16, 32])
def test_align_by_expert_blocks_are_single_expert(block_m):
    from lowlight.kernels.moe_kernel import align_by_expert

    E = 5
    idx = torch.stack([torch.randint(0, E, (60,), generator=_gen(9)), torch.zeros(60, dtype=torch.long)], 1)
    idx[:, 1] = (idx[:, 0] + 1) % E
    idx[idx == 3] = 4  # expert 3 empty (and a token may now have 4 twice: fine for the layout)
    sorted_ids, block_expert = align_by_expert(idx, E, block_m)
    flat = idx.reshape(-1)
    real = sorted_ids < flat.numel()
    assert sorted(sorted_ids[real].tolist()) == list(range(flat.numel()))  # a permutation
    rows_expert = block_expert.repeat_interleave(block_m)
    assert torch.equal(flat[sorted_ids[real]], rows_expert[real])  # rows sit in their expert's blocks
    assert 3 not in block_expert.tolist()


@pytest.mark.parametrize("N,E,block_m", [(37, 4, 16), (1, 2, 16), (300, 8, 32), (130, 3, 64)])
def test_route_and_align_kernel_matches_torch_layout(N, E, block_m):
    """The two-launch Triton route+align gives align_by_expert's blocks (same ids per expert run)."""
    from lowlight.kernels.moe_align_kernel import route_and_align
    from lowlight.kernels.moe_kernel import align_by_expert

    logits = torch.randn(N, E, generator=_gen(N))
    idx, w, sorted_ids, block_expert = route_and_align(logits, block_m)
    ridx, rw = ref.top2_route_ref(logits)
    assert torch.equal(idx, ridx) and (w - rw).abs().max().item() <= 1e-6
    want_ids, want_blocks = align_by_expert(idx, E, block_m)
    assert torch.equal(block_expert, want_blocks)
    row_expert = block_expert.repeat_interleave(block_m)
    for e in range(E):
        rows = row_expert == e
        assert sorted(sorted_ids[rows].tolist()) == sorted(want_ids[rows].tolist())


def test_moe_rejects_bad_shapes():
    from lowlight.kernels.moe_kernel import moe_top2_triton

    x, wr, w1, w3, w2 = moe_args(8, 16, 16, 4, torch.float32)
    with pytest.raises(ShapeError, match="w2"):
        moe_top2_triton(x, wr, w1, w3, w2.transpose(1, 2)[:, :, :8])
