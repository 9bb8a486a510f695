"""The kernels as custom ops and in deployed graphs: torch.library, torch.export, ONNX, lowering."""
from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

import lowlight.kernels as K
from lowlight.kernels import reference as ref

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spectral_args(B=1, C=4, H=5, W=6, dtype=torch.float32, seed=0):
    g = _gen(seed)
    ts = [torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g),
          torch.randn(2 * C, 2 * C, generator=g) / 3, torch.randn(2 * C, generator=g),
          torch.randn(2 * C, 2 * C, generator=g) / 3, torch.randn(2 * C, generator=g)]
    return [t.to(dtype) for t in ts]


def illum_args(B=1, C=4, H=6, W=7, dtype=torch.float32, seed=0):
    g = _gen(seed)
    return [t.to(dtype) for t in (torch.randn(B, C, H, W, generator=g), torch.randn(C, C, generator=g) / 2,
                                  torch.randn(C, generator=g))]


def moe_args(N=11, D=8, F=12, E=4, dtype=torch.float32, seed=0):
    g = _gen(seed)
    return [t.to(dtype) for t in (torch.randn(N, D, generator=g), torch.randn(D, E, generator=g),
                                  torch.randn(E, D, F, generator=g) / 3, torch.randn(E, D, F, generator=g) / 3,
                                  torch.randn(E, F, D, generator=g) / 3)]


# ------------------------------------------------------------- package surface
def test_package_imports_without_triton_or_torch_ops():
    """`import lowlight.kernels` is light, and the CPU path never loads a Triton kernel module."""
    code = (
        "import sys, torch\n"
        "import lowlight.kernels as K\n"
        "assert 'lowlight.kernels.ops' not in sys.modules\n"
        "re = torch.randn(1, 2, 3, 3); w = torch.randn(4, 4); b = torch.randn(4)\n"
        "K.spectral_gate(re, re, w, b, w, b)\n"
        "assert not any(m.endswith('_kernel') for m in sys.modules if m.startswith('lowlight')), sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_works_without_triton_installed():
    """No triton at all (the vehicle runtime, plain CPU training): ops, export and lowering still work."""
    code = (
        "import sys, torch\n"
        "sys.modules['triton'] = None  # any `import triton` now raises ImportError\n"
        "import lowlight.kernels as K\n"
        "from lowlight.kernels import reference as ref\n"
        "z = torch.randn(1, 3, 5, 5); w = torch.randn(3, 3); b = torch.randn(3)\n"
        "with K.triton_on_cpu():\n"
        "    h, l = K.illumination_gate(z, w, b, 3)\n"
        "assert torch.equal(h, ref.illumination_gate_ref(z, w, b, 3)[0])\n"
        "K.onnx_translation_table()\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_public_names():
    for name in ("spectral_gate", "illumination_gate", "moe_top2", "top2_route", "onnx_translation_table",
                 "export_onnx", "triton_on_cpu"):
        assert callable(getattr(K, name))
    assert callable(K.reference.spectral_gate_ref)


# ------------------------------------------------------------------ custom ops
@pytest.mark.parametrize("op,args", [
    ("spectral_gate", spectral_args()),
    ("illumination_gate", [*illum_args(), 3]),
    ("moe_top2", moe_args()),
])
def test_opcheck(op, args):
    import lowlight.kernels.ops  # noqa: F401  (registers the ops; the package imports it lazily)

    torch.library.opcheck(getattr(torch.ops.lowlight, op).default, tuple(args))


def test_channels_last_inputs_give_the_fake_kernels_layout():
    """inductor checks a custom op's real output strides against its fake kernel's: AMNet base under
    torch.compile hands the gates channels-last activations, and a layout-preserving result failed there."""
    import lowlight.kernels.ops  # noqa: F401

    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    re, im, *w = spectral_args(B=2, C=4, H=6, W=5)
    z, wi, bi = illum_args()
    for op, args in (("spectral_gate", (cl(re), cl(im), *w)), ("illumination_gate", (cl(z), wi, bi, 3))):
        torch.library.opcheck(getattr(torch.ops.lowlight, op).default, args)
        assert all(o.is_contiguous() for o in getattr(torch.ops.lowlight, op)(*args))


def test_cpu_default_is_reference():
    args = spectral_args()
    out = K.spectral_gate(*args)
    want = ref.spectral_gate_ref(*args)
    assert all(torch.equal(o, w) for o, w in zip(out, want))


def test_gradcheck_spectral_gate():
    args = [a.double().requires_grad_() for a in spectral_args(1, 2, 3, 2)]
    assert torch.autograd.gradcheck(lambda *a: K.spectral_gate(*a), args)


def test_gradcheck_illumination_gate():
    z, w, b = (a.double().requires_grad_() for a in illum_args(1, 2, 4, 3))
    assert torch.autograd.gradcheck(lambda z, w, b: K.illumination_gate(z, w, b, 3), (z, w, b))


def test_moe_grad_matches_reference():
    args = [a.requires_grad_() for a in moe_args()]
    K.moe_top2(*args).square().sum().backward()
    got = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    ref.moe_top2_ref(*args).square().sum().backward()
    for g, a in zip(got, args):
        torch.testing.assert_close(g, a.grad)


def test_training_step_through_gates_on_rfft2():
    """AMNet's use: grads reach the gate weights through rfft2 -> gate -> irfft2."""
    x = torch.randn(2, 3, 8, 10, generator=_gen(1))
    _, _, wg, bg, ws, bs = (a.requires_grad_() for a in spectral_args(C=3))
    z = torch.fft.rfft2(x, norm="ortho")
    r, i = K.spectral_gate(z.real, z.imag, wg, bg, ws, bs)
    y = torch.fft.irfft2(torch.complex(r, i), s=x.shape[-2:], norm="ortho")
    y.square().mean().backward()
    assert wg.grad is not None and torch.isfinite(wg.grad).all() and wg.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["spectral_gate", "illumination_gate", "moe_top2"])
def test_ops_run_triton_on_cpu_when_asked(name):
    pytest.importorskip("triton")
    if not K._triton.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    args = {"spectral_gate": spectral_args(), "illumination_gate": [*illum_args(), 5],
            "moe_top2": moe_args()}[name]
    with K.triton_on_cpu():
        out = getattr(K, name)(*args)
    assert f"lowlight.kernels.{name.replace('_top2', '')}_kernel" in sys.modules
    want = getattr(ref, f"{name}_ref")(*args)
    for o, w in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
        assert (o - w).abs().max().item() <= 1e-4 * max(1.0, w.abs().max().item())


def test_top2_route_public():
    logits = torch.randn(20, 6, generator=_gen(2))
    idx, w = K.top2_route(logits)
    ridx, rw = ref.top2_route_ref(logits)
    assert torch.equal(idx, ridx) and torch.allclose(w, rw)


# ------------------------------------------------------------------ models
class SpectralBlock(torch.nn.Module):
    """AMNet's FBS shape: rfft2 -> spectral gate -> irfft2, then the IADS gate."""

    def __init__(self, C: int = 4, k: int = 3) -> None:
        super().__init__()
        _, _, wg, bg, ws, bs = spectral_args(C=C, seed=3)
        _, w, b = illum_args(C=C, seed=4)
        self.wg, self.bg, self.ws, self.bs = (torch.nn.Parameter(t) for t in (wg, bg, ws, bs))
        self.w, self.b = torch.nn.Parameter(w), torch.nn.Parameter(b)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.fft.rfft2(x, norm="ortho")
        r, i = K.spectral_gate(z.real, z.imag, self.wg, self.bg, self.ws, self.bs)
        y = torch.fft.irfft2(torch.complex(r, i), s=x.shape[-2:], norm="ortho")
        high, low = K.illumination_gate(y, self.w, self.b, self.k)
        return high + 0.5 * low


class MoEBlock(torch.nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(t) for t in moe_args(dtype=dtype, seed=5)[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return K.moe_top2(x, *self.ws)


def test_torch_export_keeps_one_node_per_call():
    ep = torch.export.export(SpectralBlock().eval(), (torch.randn(1, 4, 8, 10),))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("lowlight.spectral_gate.default") == 1
    assert targets.count("lowlight.illumination_gate.default") == 1
    ep = torch.export.export(MoEBlock().eval(), (torch.randn(9, 8),))
    assert [str(n.target) for n in ep.graph.nodes if n.op == "call_function"] == ["lowlight.moe_top2.default"]


def _ort_run(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def spectral_onnx():
    from lowlight.kernels.onnx_export import export_onnx

    model = SpectralBlock(C=5, k=7).eval()
    x = torch.randn(2, 5, 9, 12, generator=_gen(6))
    with torch.no_grad():
        want = model(x).numpy()
    return export_onnx(model, (x,)), x.numpy(), want


def test_onnx_export_one_custom_node_per_op(spectral_onnx):
    proto, _, _ = spectral_onnx
    custom = [(n.domain, n.op_type) for n in proto.graph.node if n.domain]
    assert custom == [("lowlight", "SpectralGate"), ("lowlight", "IlluminationGate")]
    ig = next(n for n in proto.graph.node if n.op_type == "IlluminationGate")
    assert [(a.name, list(a.ints)) for a in ig.attribute] == [("kernel_shape", [7, 7])]
    assert {("lowlight", 1)} <= {(o.domain, o.version) for o in proto.opset_import}
    assert sorted(f.name for f in proto.functions) == ["IlluminationGate", "SpectralGate"]
    onnx.checker.check_model(proto, full_check=True)


def test_onnx_export_runs_in_onnxruntime(spectral_onnx):
    proto, x, want = spectral_onnx
    assert np.abs(_ort_run(proto, x) - want).max() <= 1e-4


def test_decompose_custom_ops(spectral_onnx):
    from lowlight.passes.custom_ops import decompose_custom_ops

    proto, x, want = spectral_onnx
    out = decompose_custom_ops(proto)
    assert not any(n.domain for n in out.graph.node)
    assert "lowlight" not in {o.domain for o in out.opset_import} and not out.functions
    assert {"Conv", "Sigmoid", "Tanh", "AveragePool", "Split"} <= {n.op_type for n in out.graph.node}
    onnx.checker.check_model(out, full_check=True)
    assert np.abs(_ort_run(out, x) - want).max() <= 1e-4


def test_decompose_bare_export_without_bodies():
    """A plain `torch.onnx.export(custom_translation_table=...)` (no bodies yet) decomposes too."""
    from lowlight.passes.custom_ops import decompose_custom_ops

    model = SpectralBlock().eval()
    x = torch.randn(1, 4, 6, 8, generator=_gen(7))
    prog = torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=K.onnx_translation_table())
    bare = prog.model_proto
    assert not bare.functions and any(n.domain == "lowlight" for n in bare.graph.node)
    with torch.no_grad():
        assert np.abs(_ort_run(decompose_custom_ops(bare), x.numpy()) - model(x).numpy()).max() <= 1e-4


def test_to_plugin_nodes(spectral_onnx):
    from lowlight.passes.custom_ops import to_plugin_nodes

    proto, x, want = spectral_onnx
    out = to_plugin_nodes(proto, plugin_namespace="lowlight")
    nodes = [n for n in out.graph.node if n.domain == "lowlight"]
    assert [n.op_type for n in nodes] == ["SpectralGate", "IlluminationGate"]
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_namespace"] == b"lowlight" and attrs["aot"] == 1
    assert not out.functions
    assert len(out.graph.node) == len(proto.graph.node)  # one node per op, nothing else touched
    # Plugin nodes with their bodies re-attached (the TensorRT target verifies in onnxruntime).
    from lowlight.kernels.onnx_export import attach_functions

    both = attach_functions(out)
    onnx.checker.check_model(both, full_check=True)
    assert np.abs(_ort_run(both, x) - want).max() <= 1e-4


def test_lowering_passes_are_noops_without_custom_ops():
    from lowlight.passes.custom_ops import decompose_custom_ops, to_plugin_nodes

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])
    for p in (decompose_custom_ops, to_plugin_nodes):
        assert p(m).SerializeToString() == m.SerializeToString()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_moe_onnx_both_forms(dtype):
    from lowlight.passes.custom_ops import decompose_custom_ops, to_plugin_nodes
    from lowlight.kernels.onnx_export import attach_functions, export_onnx

    model = MoEBlock(dtype).eval()
    x = torch.randn(13, 8, generator=_gen(8)).to(dtype)
    proto = export_onnx(model, (x,))
    assert [n.op_type for n in proto.graph.node if n.domain] == ["MoETop2"]
    with torch.no_grad():
        want = ref.moe_top2_ref(*(t.float() for t in (x, *model.ws))).numpy()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    scale = max(1.0, np.abs(want).max())
    trt_form = to_plugin_nodes(proto)  # one lowlight::MoETop2 plugin node (the fused kernel), no body
    assert [n.op_type for n in trt_form.graph.node if n.domain] == ["MoETop2"] and not trt_form.functions
    for form in (proto, decompose_custom_ops(proto), attach_functions(trt_form)):
        got = _ort_run(form, x.numpy()).astype(np.float32)
        assert np.abs(got - want).max() / scale <= tol


# ----------------------------------------------------------------- TensorRT
def test_trt_plugins_module_imports_without_tensorrt():
    from lowlight.kernels import trt_plugins

    assert trt_plugins.PLUGIN_IDS == ("lowlight::SpectralGate", "lowlight::IlluminationGate", "lowlight::MoETop2")


def test_trt_ptx_hidden_params_dropped():
    """Newer Triton appends scratch pointers to the entry; TensorRT passes only the declared args."""
    from lowlight.kernels.trt_plugins import _ptx_for_trt

    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n"
           "\t.param .u64 k_param_2,\n\t.param .u64 k_param_3\n)\n{\n\tld.param.u64 %rd1, [k_param_0];\n}")
    out = _ptx_for_trt(ptx, "k", 2)
    assert "k_param_1" in out and "k_param_2" not in out and "k_param_3" not in out
    with pytest.raises(RuntimeError, match="hidden parameter"):
        _ptx_for_trt(ptx.replace("[k_param_0]", "[k_param_3]"), "k", 2)


def test_trt_aot_kernels_compile_for_orin_and_hopper():
    """The plugin kernels compile to PTX for sm_87 / sm_90 here (Triton ships ptxas; no GPU needed),
    fit TensorRT's 48 KiB launch limit, use tensor cores, and match TensorRT's argument order."""
    pytest.importorskip("triton")
    code = (
        "from lowlight.kernels.trt_plugins import compile_aot_kernel, _signature\n"
        "for op, dt, C, k, arch in (('SpectralGate', 'fp16', 48, 1, 87), ('IlluminationGate', 'fp16', 16, 3, 90)):\n"
        "    a = compile_aot_kernel(op, dt, C, k=k, arch=arch)\n"
        "    n = len(_signature(op, dt))\n"
        "    head = a.ptx.split('.entry ' + a.name + '(')[1].split(')')[0]\n"
        "    assert head.count('.param') == n, (head, n)\n"
        "    assert a.shared <= 48 * 1024 and a.threads == 128 and 'mma' in a.ptx, a[2:]\n"
        "    print(op, arch, a.block_p, a.shared)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run([sys.executable, "-c", code], env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def _need_tensorrt() -> None:
    from lowlight.kernels.trt_plugins import tensorrt_available

    if not tensorrt_available():
        pytest.skip("TensorRT (with tensorrt.plugin, >= 10.9) is not installed here; "
                    "`import tensorrt` only finds the tensorrt-stubs namespace folder")


@pytest.mark.tensorrt
def test_trt_plugins_register():
    _need_tensorrt()
    from lowlight.kernels import trt_plugins

    trt_plugins.register_plugins()
    trt_plugins.register_plugins()  # idempotent
    import tensorrt as trt

    names = {c.name for c in trt.get_plugin_registry().all_creators}
    assert {"SpectralGate", "IlluminationGate"} <= names


class GatesOnly(SpectralBlock):
    """Both gates without the FFTs (TensorRT 10.x rejects ONNX DFT)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, i = K.spectral_gate(x, 0.5 * x, self.wg, self.bg, self.ws, self.bs)
        high, low = K.illumination_gate(r + i, self.w, self.b, self.k)
        return high + 0.5 * low


def test_onnx_dynamic_shapes():
    """The lowlight nodes and bodies are shape-generic: one export runs at other B/H/W and N."""
    from lowlight.passes.custom_ops import decompose_custom_ops
    from lowlight.kernels.onnx_export import export_onnx

    model = GatesOnly(C=4, k=5).eval()
    dims = ({0: torch.export.Dim("B"), 2: torch.export.Dim("H", min=4, max=512), 3: torch.export.Dim("W", min=4, max=512)},)
    proto = export_onnx(model, (torch.randn(2, 4, 16, 20),), dynamic_shapes=dims)
    for form in (proto, decompose_custom_ops(proto)):
        for shape in ((1, 4, 9, 14), (3, 4, 32, 24)):
            x = torch.randn(*shape, generator=_gen(10))
            with torch.no_grad():
                assert np.abs(_ort_run(form, x.numpy()) - model(x).numpy()).max() <= 1e-4


@pytest.mark.tensorrt
def test_trt_engine_matches_reference():
    """Parse the plugin-node graph, build, run: needs TensorRT >= 10.9 and a CUDA GPU."""
    _need_tensorrt()
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import tensorrt as trt

    from lowlight.passes.custom_ops import to_plugin_nodes
    from lowlight.kernels import trt_plugins

    from lowlight.kernels.onnx_export import export_onnx

    trt_plugins.register_plugins()
    model = GatesOnly(C=5, k=7).eval()
    xt = torch.randn(2, 5, 9, 12, generator=_gen(9))
    proto, x = export_onnx(model, (xt,)), xt.numpy()
    with torch.no_grad():
        want = model(xt).numpy()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(to_plugin_nodes(proto).SerializeToString()), [parser.get_error(i) for i in range(parser.num_errors)]
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, builder.create_builder_config()))
    ctx = engine.create_execution_context()
    xin = torch.from_numpy(x).cuda()
    out = torch.empty(want.shape, device="cuda")
    ctx.set_tensor_address(engine.get_tensor_name(0), xin.data_ptr())
    ctx.set_tensor_address(engine.get_tensor_name(1), out.data_ptr())
    ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert np.abs(out.cpu().numpy() - want).max() <= 1e-3
