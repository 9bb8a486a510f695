"""MoETop2 as one TensorRT plugin node: the fused single-kernel MoE, its AOT build, and the lowering.

The kernel runs on CPU through Triton's interpreter (TRITON_INTERPRET is set
before anything imports triton's kernels, as in test_kernels.py); the AOT
compile runs in a subprocess without the interpreter (Triton ships ptxas: no
GPU needed).
"""
from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from lowlight.core.errors import InputError, ShapeError
from lowlight.kernels import reference as ref

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="kernel tests run under TRITON_INTERPRET=1")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def moe_args(N: int, D: int, F: int, E: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(N, D, generator=g)
    wr = torch.randn(D, E, generator=g)
    w1 = torch.randn(E, D, F, generator=g) / D ** 0.5
    w3 = torch.randn(E, D, F, generator=g) / D ** 0.5
    w2 = torch.randn(E, F, D, generator=g) / F ** 0.5
    return [t.to(dtype) for t in (x, wr, w1, w3, w2)]


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    scale = max(1.0, want.abs().max().item())
    return (out.float() - want.float()).abs().max().item() / scale


def fused(*args: torch.Tensor, **kw: int) -> torch.Tensor:
    pytest.importorskip("triton")
    from lowlight.kernels.moe_fused_kernel import moe_top2_fused

    return moe_top2_fused(*args, **kw)


# ------------------------------------------------------------ fused kernel
FUSED_CASES = [
    (37, 24, 40, 4),   # N not a multiple of BLOCK_N, D/F not powers of two
    (16, 8, 12, 4),    # N = BLOCK_N exactly; D, F below the 16-wide dot minimum (padded)
    (1, 16, 16, 2),    # one token, two experts
    (70, 32, 48, 8),   # E = 8
    (33, 20, 28, 3),   # odd E
    (21, 520, 20, 4),  # DP = 1024 in fp32: the accumulator split in two column halves
]


@needs_interpreter
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_matches_reference_fp32(case):
    args = moe_args(*case, seed=sum(case))
    out = fused(*args)
    assert out.shape == args[0].shape and out.dtype == torch.float32
    assert rel_err(out, ref.moe_top2_ref(*args)) <= 1e-4


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_matches_reference_16bit(dtype):
    args = moe_args(45, 24, 40, 4, dtype, seed=3)
    out = fused(*args)
    assert out.dtype == dtype
    assert rel_err(out, ref.moe_top2_ref(*(a.float() for a in args))) <= TOL[dtype]


@needs_interpreter
@pytest.mark.parametrize("block_f", [16, 32])
def test_fused_pinned_f_chunk(block_f):
    """Several F chunks per expert, the last one partial (F = 70)."""
    args = moe_args(29, 24, 70, 4, seed=4)
    assert rel_err(fused(*args, block_f=block_f), ref.moe_top2_ref(*args)) <= 1e-4


def _route_all_to(x: torch.Tensor, wr: torch.Tensor, logits_row0: list[float]) -> None:
    """Make every token's router logits `logits_row0` (x[:, 0] = 1, the other router rows 0)."""
    x[:, 0] = 1.0
    wr.zero_()
    wr[0] = torch.tensor(logits_row0)


def _poison(ws: list[torch.Tensor], experts: list[int]) -> list[torch.Tensor]:
    """Copies of w1, w3, w2 with NaN in the given experts: any work on them would reach the output."""
    out = [w.clone() for w in ws]
    for w in out:
        w[experts] = float("nan")
    return out


@needs_interpreter
@pytest.mark.parametrize("E,first,second", [(4, 3, 1), (8, 5, 2)])
def test_all_tokens_to_one_expert_skip_the_others(E, first, second):
    """Every token's top-1 is `first` and top-2 `second`: the other experts are skipped, not
    multiplied by a zero weight (their NaN weights would make NaN outputs)."""
    x, wr, w1, w3, w2 = moe_args(37, 24, 40, E, seed=5)
    logits = [0.0] * E
    logits[first], logits[second] = 3.0, 2.0
    _route_all_to(x, wr, logits)
    idx, _ = ref.top2_route_ref(x @ wr)
    assert (idx[:, 0] == first).all() and (idx[:, 1] == second).all()
    want = ref.moe_top2_ref(x, wr, w1, w3, w2)
    unused = [e for e in range(E) if e not in (first, second)]
    out = fused(x, wr, *_poison([w1, w3, w2], unused))
    assert torch.isfinite(out).all()
    assert rel_err(out, want) <= 1e-4


def _moe_with_gate(x: torch.Tensor, gate: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                   w2: torch.Tensor) -> torch.Tensor:
    """sum_e gate[:, e] * GLU expert e (x): the MoE for a given [N, E] routing matrix."""
    ys = torch.stack([(torch.nn.functional.silu(x @ w1[e]) * (x @ w3[e])) @ w2[e] for e in range(w1.shape[0])], 1)
    return (gate.unsqueeze(-1) * ys).sum(dim=1)  # ys [N, E, D]


@needs_interpreter
def test_ties_go_to_the_lower_expert():
    """Tied logits across the top-2 boundary pick the lower expert indices (top2_route_ref's documented
    rule, and what the route kernel does). torch.topk itself promises no order among ties on CPU
    (it picks experts 2, 3 for logits [0, 1.5, 1.5, 1.5]), so the expected routing is written out."""
    from lowlight.kernels.top2_route_kernel import top2_route_triton

    x, wr, w1, w3, w2 = moe_args(20, 16, 24, 4, seed=6)
    x[:, :2] = 0.0
    x[0::2, 0] = 1.0  # even tokens: logits [0, 1.5, 1.5, 1.5] -> experts 1, 2 (0.5 each)
    x[1::2, 1] = 1.0  # odd tokens: logits [2, 1, 1, 1] -> experts 0, 1
    wr.zero_()
    wr[0] = torch.tensor([0.0, 1.5, 1.5, 1.5])
    wr[1] = torch.tensor([2.0, 1.0, 1.0, 1.0])
    g_top = 1.0 / (1.0 + torch.exp(torch.tensor(-1.0)))
    gate = torch.zeros(20, 4)
    gate[0::2, 1] = gate[0::2, 2] = 0.5
    gate[1::2, 0], gate[1::2, 1] = g_top, 1.0 - g_top
    idx, _ = top2_route_triton(x @ wr)
    assert torch.equal(idx[0], torch.tensor([1, 2])) and torch.equal(idx[1], torch.tensor([0, 1]))
    want = _moe_with_gate(x, gate, w1, w3, w2)
    out = fused(x, wr, *_poison([w1, w3, w2], [3]))  # expert 3 loses every tie
    assert torch.isfinite(out).all() and rel_err(out, want) <= 1e-4


@needs_interpreter
def test_fused_takes_strided_inputs_and_no_tokens():
    x, wr, w1, w3, w2 = moe_args(19, 24, 20, 4, seed=7)
    xt = x.t().contiguous().t()  # same values, column-major
    assert not xt.is_contiguous()
    assert rel_err(fused(xt, wr, w1, w3, w2), ref.moe_top2_ref(x, wr, w1, w3, w2)) <= 1e-4
    empty = fused(x[:0], wr, w1, w3, w2)
    assert empty.shape == (0, 24)


def test_fused_rejects_bad_arguments():
    x, wr, w1, w3, w2 = moe_args(8, 16, 16, 4)
    with pytest.raises(ShapeError, match="w2"):
        fused(x, wr, w1, w3, w2.transpose(1, 2)[:, :, :8])
    with pytest.raises(ShapeError, match="at least 2"):
        fused(x, wr[:, :1], w1[:1], w3[:1], w2[:1])
    with pytest.raises(InputError, match="mixed dtypes"):
        fused(x, wr.double(), w1, w3, w2)


def test_fused_blocks_fit_trt_shared_memory():
    """The paper config (D=576, E=4, F=1536): w2 tiles of <= 32 KiB, fp32 by splitting the accumulator."""
    pytest.importorskip("triton")
    from lowlight.kernels.moe_fused_kernel import fused_blocks

    for elem, dh in ((2, 1024), (4, 512)):
        b = fused_blocks(576, 4, 1536, elem)
        assert (b.DP, b.DH, b.EP, b.BLOCK_N, b.BLOCK_F) == (1024, dh, 16, 16, 16)
        assert b.BLOCK_F * b.DH * elem <= 32 * 1024
    small = fused_blocks(24, 4, 40, 4)
    assert (small.DP, small.DH, small.BLOCK_F, small.BLOCK_D) == (32, 32, 64, 32)


# ---------------------------------------------------------------- AOT build
def test_trt_aot_moe_compiles_for_orin_and_hopper():
    """The MoETop2 plugin kernel compiles to PTX for sm_87 / sm_90 without a GPU, takes exactly
    TensorRT's arguments (5 inputs, N/D/E/F, 1 output), fits 48 KiB of shared memory, uses tensor cores."""
    pytest.importorskip("triton")
    code = (
        "from lowlight.kernels.trt_plugins import compile_aot_kernel, _signature\n"
        "from lowlight.kernels.moe_fused_kernel import BLOCK_N, NUM_WARPS\n"
        "assert list(_signature('MoETop2', 'fp16')) == ['x_ptr', 'wr_ptr', 'w1_ptr', 'w3_ptr', 'w2_ptr',\n"
        "                                               'N', 'D', 'E', 'F', 'y_ptr']\n"
        "for dt, D, E, F, arch in (('fp16', 576, 4, 1536, 87), ('fp32', 576, 4, 1536, 90), ('bf16', 24, 8, 40, 87)):\n"
        "    a = compile_aot_kernel('MoETop2', dt, D, experts=E, hidden=F, arch=arch)\n"
        "    head = a.ptx.split('.entry ' + a.name + '(')[1].split(')')[0]\n"
        "    assert head.count('.param') == 10, head\n"
        "    assert a.name == 'moe_top2_fused_kernel' and a.block_p == BLOCK_N and a.threads == 32 * NUM_WARPS\n"
        "    assert 0 < a.shared <= 48 * 1024 and 'mma' in a.ptx, a[2:]\n"
        "    print(dt, arch, a.shared)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run([sys.executable, "-c", code], env=env, timeout=600, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_compile_aot_kernel_needs_moe_sizes():
    pytest.importorskip("triton")
    from lowlight.kernels.trt_plugins import compile_aot_kernel

    with pytest.raises(ValueError, match="experts >= 2"):
        compile_aot_kernel("MoETop2", "fp16", 576, arch=87)


def test_plugin_ids_and_lowering_table_agree():
    from lowlight.kernels import trt_plugins
    from lowlight.passes.custom_ops import PLUGIN_OPS

    assert "lowlight::MoETop2" in trt_plugins.PLUGIN_IDS
    assert [f"{trt_plugins.PLUGIN_NAMESPACE}::{op}" for op in PLUGIN_OPS] == list(trt_plugins.PLUGIN_IDS)


@pytest.mark.tensorrt
def test_trt_registers_moe_plugin():
    from lowlight.kernels import trt_plugins

    if not trt_plugins.tensorrt_available():
        pytest.skip("TensorRT (with tensorrt.plugin, >= 10.9) is not installed here; "
                    "`import tensorrt` only finds the tensorrt-stubs namespace folder")
    trt_plugins.register_plugins()
    import tensorrt as trt

    assert "MoETop2" in {c.name for c in trt.get_plugin_registry().all_creators}


# ------------------------------------------------------------------ lowering
class TinyMoE(torch.nn.Module):
    """One lowlight::moe_top2 call between standard ops (so the graph has more than the custom node)."""

    def __init__(self, D: int = 8, F: int = 12, E: int = 4) -> None:
        super().__init__()
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(t) for t in moe_args(1, D, F, E, seed=8)[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import lowlight.kernels as K

        return K.moe_top2(x * 2.0, *self.ws) + x


@pytest.fixture(scope="module")
def moe_onnx():
    pytest.importorskip("onnx")
    from lowlight.kernels.onnx_export import export_onnx

    model = TinyMoE().eval()
    x = torch.randn(13, 8, generator=_gen(9))
    with torch.no_grad():
        want = model(x).numpy()
    return export_onnx(model, (x,)), x.numpy(), want


def _ort_run(model, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_to_plugin_nodes_keeps_one_moe_node(moe_onnx):
    import onnx

    from lowlight.kernels.onnx_export import attach_functions
    from lowlight.passes.custom_ops import decompose_custom_ops, to_plugin_nodes

    proto, x, want = moe_onnx
    assert [n.op_type for n in proto.graph.node if n.domain == "lowlight"] == ["MoETop2"]
    out = to_plugin_nodes(proto)
    nodes = [n for n in out.graph.node if n.domain == "lowlight"]
    assert [n.op_type for n in nodes] == ["MoETop2"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {"plugin_namespace": b"lowlight", "aot": 1}
    assert list(nodes[0].input) == list(next(n for n in proto.graph.node if n.op_type == "MoETop2").input)
    assert not out.functions and len(out.graph.node) == len(proto.graph.node)
    assert ("lowlight", 1) in {(o.domain, o.version) for o in out.opset_import}
    # With its body re-attached (what the TensorRT target ships for onnxruntime's verify) it still computes the MoE.
    both = attach_functions(out)
    onnx.checker.check_model(both, full_check=True)
    assert np.abs(_ort_run(both, x) - want).max() <= 1e-4

    dec = decompose_custom_ops(proto)
    assert not any(n.domain == "lowlight" for n in dec.graph.node) and not dec.functions
    assert {"MatMul", "TopK", "Softmax"} <= {n.op_type for n in dec.graph.node}
    assert np.abs(_ort_run(dec, x) - want).max() <= 1e-4


def test_to_plugin_nodes_still_decomposes_ops_without_plugin(moe_onnx):
    """An op left out of plugin_ops is decomposed (the pass's other half)."""
    from lowlight.passes.custom_ops import to_plugin_nodes

    proto, x, want = moe_onnx
    out = to_plugin_nodes(proto, plugin_ops=("SpectralGate", "IlluminationGate"))
    assert not any(n.domain == "lowlight" for n in out.graph.node) and not out.functions
    assert np.abs(_ort_run(out, x) - want).max() <= 1e-4


@pytest.mark.parametrize("version,plugin", [("10.3", False), ("10.13", True), ("11.4", True)])
def test_tensorrt_targets_lower_moe(moe_onnx, version, plugin):
    """jetson-orin on TensorRT >= 10.9 keeps the MoETop2 plugin node (body attached for verify); 10.3 decomposes."""
    from lowlight.targets import get_target

    proto, x, want = moe_onnx
    target = get_target("jetson-orin", version)
    lowered = proto
    for _, fn in target.lowering_passes():
        lowered = fn(lowered)
    moe = [n for n in lowered.graph.node if n.op_type == "MoETop2"]
    assert len(moe) == (1 if plugin else 0)
    assert not any(n.domain == "lowlight" and n.op_type != "MoETop2" for n in lowered.graph.node)
    assert target.check_graph(lowered, {"dla": False, "precision": "fp16"}) == []
    assert np.abs(_ort_run(lowered, x) - want).max() <= 1e-4
