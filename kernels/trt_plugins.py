"""TensorRT Python plugins (`tensorrt.plugin`, AOT) for the lowlight ONNX nodes, TensorRT >= 10.9.

`register_plugins()` registers, per kernel, a shape/type descriptor, the
type combinations TensorRT may choose, and an AOT implementation that
compiles our Triton kernel to PTX for the build GPU and returns it with its
launch grid and scalar arguments: the kernel is baked into the engine, no
Python at run time. The ONNX parser maps a node to a plugin when the node's op
type is the plugin name and it carries `plugin_namespace` (and `aot=1` to pick
the AOT implementation): `lowlight.passes.custom_ops.to_plugin_nodes`.

| plugin                     | ONNX node                        | kernel                   |
|----------------------------|----------------------------------|--------------------------|
| lowlight::SpectralGate     | SpectralGate(re, im, w_g, ...)   | spectral_gate_kernel     |
| lowlight::IlluminationGate | IlluminationGate(z, w, b)        | illumination_gate_kernel |
| lowlight::MoETop2          | MoETop2(x, w_router, w1, w3, w2) | moe_top2_fused_kernel    |

An AOT plugin launches one kernel, so MoETop2's plugin runs the single fused
kernel of moe_fused_kernel.py (routing and every expert a token tile picked,
in one program per tile), not the four launches of the grouped-GEMM path
(moe_kernel.py) that the `lowlight::moe_top2` op uses on CUDA. Its D (and
E, F) must be static at engine build time: D sizes the kernel's tiles.

Kernel arguments follow TensorRT's AOT launch order: input pointers, then the
extra scalar arguments returned here, then output pointers. TensorRT tensors
are dense, so strides are derived from the shape.

Nothing here imports tensorrt or triton at module level; this module loads
(and type-checks against tensorrt-stubs) where TensorRT is missing.
"""
# No `from __future__ import annotations`: tensorrt.plugin inspects the
# annotations of the decorated functions at registration.
import re
from typing import Any, Callable, Dict, List, NamedTuple, Tuple, TypeVar, Union, cast

import numpy as np
import numpy.typing as npt

PLUGIN_NAMESPACE = "lowlight"
PLUGIN_IDS = ("lowlight::SpectralGate", "lowlight::IlluminationGate", "lowlight::MoETop2")

#: Tile width and warps baked into the engine for the gates (autotuning picks
#: these on H100 for AMNet sizes; TensorRT tactics could expose more, see
#: benchmarks/). MoETop2 takes its tiles and warps from moe_fused_kernel.py.
BLOCK_P = 64
NUM_WARPS = 4
_registered = False
_F = TypeVar("_F", bound=Callable[..., Any])


def _decorator(deco: Any) -> Callable[[str], Callable[[_F], _F]]:
    """Give a tensorrt.plugin decorator factory a type (the stubs lack `tensorrt.plugin`)."""
    return cast(Callable[[str], Callable[[_F], _F]], deco)


def tensorrt_available() -> bool:
    """True when the real TensorRT Python package (with `tensorrt.plugin`) imports.

    `import tensorrt` alone is not enough: tensorrt-stubs installs a bare
    `tensorrt/` stub folder that imports as an empty namespace package.
    """
    try:
        import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]
        import tensorrt.plugin  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return hasattr(trt, "__version__")


def _ptx_for_trt(ptx: str, kernel_name: str, n_params: int) -> str:
    """Drop the hidden trailing entry parameters newer Triton adds (global/profile scratch).

    TensorRT passes exactly inputs + extra args + outputs. The dropped
    parameters must be unused in the body (checked), which holds when the
    kernel needs no scratch memory (`metadata.global_scratch_size == 0`).
    """
    head = re.search(r"\.entry\s+" + re.escape(kernel_name) + r"\s*\((.*?)\)", ptx, re.S)
    if head is None:
        raise RuntimeError(f"kernel {kernel_name} not found in PTX")
    params = [p.strip() for p in head.group(1).split(",") if p.strip()]
    if len(params) <= n_params:
        return ptx
    body = ptx[head.end():]
    for p in params[n_params:]:
        name = p.split()[-1]
        if re.search(r"\[" + re.escape(name) + r"\]", body):
            raise RuntimeError(f"Triton kernel {kernel_name} uses hidden parameter {name}; cannot launch from TensorRT")
    kept = ",\n\t".join(params[:n_params])
    return ptx[: head.start(1)] + "\n\t" + kept + "\n" + ptx[head.end(1):]


#: Largest dynamic shared memory a launch may use without the opt-in attribute.
_SHARED_LIMIT = 48 * 1024


class AotKernel(NamedTuple):
    """A Triton kernel compiled for TensorRT: what `aot_impl` returns, plus launch facts."""

    name: str
    ptx: str
    threads: int
    shared: int
    block_p: int  # pixels per tile (tokens per tile for MoETop2): the grid is cdiv(size, block_p)
    tile_w: int  # IlluminationGate's tile width (tile = block_p // tile_w rows); 0 for the others


def _signature(op: str, t: str) -> Dict[str, str]:
    """Triton signature of the plugin's kernel: inputs, scalars, outputs (TensorRT's launch order)."""
    ins: Tuple[str, ...]
    ints: Tuple[str, ...]
    outs: Tuple[str, ...]
    if op == "SpectralGate":
        ins = ("re_ptr", "im_ptr", "wg_ptr", "bg_ptr", "ws_ptr", "bs_ptr")
        ints = ("B", "C", "HW", "Wf", "s_rb", "s_rc", "s_rh", "s_rw", "s_ib", "s_ic", "s_ih", "s_iw")
        outs = ("ore_ptr", "oim_ptr")
    elif op == "IlluminationGate":
        ins = ("z_ptr", "w_ptr", "b_ptr")
        ints = ("B", "C", "H", "W", "s_b", "s_c", "s_h", "s_w")
        outs = ("high_ptr", "low_ptr")
    elif op == "MoETop2":
        ins = ("x_ptr", "wr_ptr", "w1_ptr", "w3_ptr", "w2_ptr")
        ints = ("N", "D", "E", "F")
        outs = ("y_ptr",)
    else:
        raise KeyError(f"no TensorRT plugin for {op!r}")
    sig = {n: f"*{t}" for n in ins}
    sig.update({n: "i32" for n in ints})
    sig.update({n: f"*{t}" for n in outs})
    return sig


def compile_aot_kernel(op: str, dtype: str, channels: int, k: int = 1, arch: int | None = None,
                       experts: int = 0, hidden: int = 0) -> AotKernel:
    """Compile the kernel behind plugin `op` to PTX for TensorRT.

    dtype: "fp32" | "fp16" | "bf16"; channels: C (D for MoETop2; a build-time
    constant: it sizes the tiles); k: IlluminationGate's pool size; experts,
    hidden: MoETop2's E and F; arch: SM version such as 87 (Orin) or 90,
    default the current GPU. The gates try tile widths from BLOCK_P down until
    the kernel fits in 48 KiB of shared memory (no opt-in); MoETop2's tiles
    are sized for that by `moe_fused_kernel.fused_blocks`.
    Runs without a GPU when `arch` is given (Triton ships ptxas).
    """
    import triton  # type: ignore[import-untyped, unused-ignore]

    from lowlight.kernels import _triton as kt

    prec = {"DOT_PREC": "tf32x3" if dtype == "fp32" else "ieee", "UPCAST": False}
    # (constexprs, tile size, tile width) to try in order; the first that fits 48 KiB wins.
    tries: List[Tuple[Dict[str, Any], int, int]]
    num_warps = NUM_WARPS
    if op == "MoETop2":
        from lowlight.kernels import moe_fused_kernel as mf

        if experts < 2 or hidden < 1:
            raise ValueError(f"MoETop2 needs experts >= 2 and hidden >= 1, got experts={experts}, hidden={hidden}")
        fn = mf.moe_top2_fused_kernel
        blocks = mf.fused_blocks(channels, experts, hidden, 4 if dtype == "fp32" else 2)
        tries = [({**blocks._asdict(), **prec}, blocks.BLOCK_N, 0)]
        num_warps = mf.NUM_WARPS
    else:
        if op == "SpectralGate":
            from lowlight.kernels.spectral_gate_kernel import spectral_gate_kernel as fn
            consts: Dict[str, Any] = {"HOIST": False}  # weights re-read per tile: small shared memory
        else:
            from lowlight.kernels.illumination_gate_kernel import illumination_gate_kernel as fn
            consts = {"K": k}
        consts.update({"CP": kt.next_pow2(channels), **prec})
        tries = []
        for bp in (BLOCK_P, BLOCK_P // 2, 16):
            tile = {"TILE_W": min(16, bp)} if op == "IlluminationGate" else {}
            tries.append(({**consts, **tile, "BLOCK_P": bp}, bp, tile.get("TILE_W", 0)))
    sig = _signature(op, dtype)
    target = None
    if arch is not None:
        from triton.backends.compiler import GPUTarget  # type: ignore[import-untyped, unused-ignore]

        target = GPUTarget("cuda", arch, 32)
    for consts, block, tile_w in tries:
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
        ck = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": 1})
        if getattr(ck.metadata, "global_scratch_size", 0):
            raise RuntimeError(f"{ck.metadata.name} needs global scratch memory; not launchable from TensorRT")
        if ck.metadata.shared <= _SHARED_LIMIT:
            break
    if ck.metadata.shared > _SHARED_LIMIT:
        raise RuntimeError(f"{op} at width {channels} needs {ck.metadata.shared} B of shared memory (> 48 KiB)")
    ptx = _ptx_for_trt(ck.asm["ptx"], ck.metadata.name, len(sig))
    return AotKernel(ck.metadata.name, ptx, ck.metadata.num_warps * 32, ck.metadata.shared, block, tile_w)


def _tl_dtype(trt_dtype: Any) -> str:
    import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

    names = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}
    if trt_dtype not in names:
        raise TypeError(f"lowlight plugins take float32/float16/bfloat16, got {trt_dtype}")
    return names[trt_dtype]


def _static_dim(desc: Any, dim: int, what: str) -> int:
    """Build-time size of dimension `dim` of a TensorDesc (channels, MoE sizes: they size the kernel's tiles)."""
    if getattr(desc, "has_shape", False):
        return int(desc.shape[dim])
    expr = desc.shape_expr[dim]
    if not expr.is_constant:
        raise ValueError(f"{what} must be static at engine build time (it sizes the kernel's tiles)")
    return int(expr.constant_value())


def register_plugins() -> None:
    """Register the lowlight plugins with TensorRT's plugin registry (idempotent).

    Call before parsing an ONNX model lowered with `to_plugin_nodes`. Needs
    tensorrt >= 10.9 and triton; raises ImportError otherwise.
    """
    global _registered
    if _registered:
        return
    import tensorrt.plugin as trtp  # type: ignore[import-not-found, import-untyped, unused-ignore]

    register, autotune, aot_impl = (_decorator(d) for d in (trtp.register, trtp.autotune, trtp.aot_impl))

    def same_type_combination(n_io: int) -> List[Any]:
        # All tensors share one float type (the kernels cast nothing on the way in).
        return [trtp.AutoTuneCombination(", ".join(["FP32|FP16|BF16"] * n_io))]

    # ---------------------------------------------------------- SpectralGate
    @register("lowlight::SpectralGate")
    def spectral_gate_desc(
        re: trtp.TensorDesc, im: trtp.TensorDesc, w_g: trtp.TensorDesc, b_g: trtp.TensorDesc,
        w_s: trtp.TensorDesc, b_s: trtp.TensorDesc,
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return re.like(), im.like()

    @autotune("lowlight::SpectralGate")
    def spectral_gate_tune(
        re: trtp.TensorDesc, im: trtp.TensorDesc, w_g: trtp.TensorDesc, b_g: trtp.TensorDesc,
        w_s: trtp.TensorDesc, b_s: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        return same_type_combination(8)

    @aot_impl("lowlight::SpectralGate")
    def spectral_gate_aot(
        re: trtp.TensorDesc, im: trtp.TensorDesc, w_g: trtp.TensorDesc, b_g: trtp.TensorDesc,
        w_s: trtp.TensorDesc, b_s: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        C = _static_dim(re, 1, "SpectralGate channel count")
        kern = compile_aot_kernel("SpectralGate", _tl_dtype(re.dtype), C)
        s = re.shape_expr
        hw = s[2] * s[3]
        strides = [s[1] * hw, hw, s[3], trtp.ShapeExpr(1)]
        params = trtp.KernelLaunchParams()
        # One program per tile: the kernel's grid-stride loop then runs once.
        params.grid_x = s[0] * trtp.cdiv(hw, kern.block_p)
        params.block_x = kern.threads
        params.shared_mem = kern.shared
        extra = trtp.SymIntExprs.from_tuple(
            [trtp.SymInt32(e) for e in (s[0], s[1], hw, s[3], *strides, *strides)])
        return kern.name, kern.ptx, params, extra

    # ------------------------------------------------------ IlluminationGate
    @register("lowlight::IlluminationGate")
    def illumination_gate_desc(
        z: trtp.TensorDesc, w: trtp.TensorDesc, b: trtp.TensorDesc, kernel_shape: npt.NDArray[np.int32],
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return z.like(), z.like()

    @autotune("lowlight::IlluminationGate")
    def illumination_gate_tune(
        z: trtp.TensorDesc, w: trtp.TensorDesc, b: trtp.TensorDesc, kernel_shape: npt.NDArray[np.int32],
        outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        return same_type_combination(5)

    @aot_impl("lowlight::IlluminationGate")
    def illumination_gate_aot(
        z: trtp.TensorDesc, w: trtp.TensorDesc, b: trtp.TensorDesc, kernel_shape: npt.NDArray[np.int32],
        outputs: Tuple[trtp.TensorDesc], tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        C = _static_dim(z, 1, "IlluminationGate channel count")
        kern = compile_aot_kernel("IlluminationGate", _tl_dtype(z.dtype), C, k=int(kernel_shape[0]))
        s = z.shape_expr
        hw = s[2] * s[3]
        params = trtp.KernelLaunchParams()
        tile_h = kern.block_p // kern.tile_w
        params.grid_x = s[0] * trtp.cdiv(s[2], tile_h) * trtp.cdiv(s[3], kern.tile_w)
        params.block_x = kern.threads
        params.shared_mem = kern.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (
            s[0], s[1], s[2], s[3], s[1] * hw, hw, s[3], trtp.ShapeExpr(1))])
        return kern.name, kern.ptx, params, extra

    # --------------------------------------------------------------- MoETop2
    @register("lowlight::MoETop2")
    def moe_top2_desc(
        x: trtp.TensorDesc, w_router: trtp.TensorDesc, w1: trtp.TensorDesc, w3: trtp.TensorDesc,
        w2: trtp.TensorDesc,
    ) -> trtp.TensorDesc:
        return x.like()

    @autotune("lowlight::MoETop2")
    def moe_top2_tune(
        x: trtp.TensorDesc, w_router: trtp.TensorDesc, w1: trtp.TensorDesc, w3: trtp.TensorDesc,
        w2: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        return same_type_combination(6)

    @aot_impl("lowlight::MoETop2")
    def moe_top2_aot(
        x: trtp.TensorDesc, w_router: trtp.TensorDesc, w1: trtp.TensorDesc, w3: trtp.TensorDesc,
        w2: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        D = _static_dim(x, 1, "MoETop2 model width D")
        E = _static_dim(w1, 0, "MoETop2 expert count E")
        F = _static_dim(w1, 2, "MoETop2 hidden width F")
        kern = compile_aot_kernel("MoETop2", _tl_dtype(x.dtype), D, experts=E, hidden=F)
        n = x.shape_expr[0]  # the token count may vary at run time
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.cdiv(n, kern.block_p)  # one program per tile of tokens
        params.block_x = kern.threads
        params.shared_mem = kern.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (
            n, trtp.ShapeExpr(D), trtp.ShapeExpr(E), trtp.ShapeExpr(F))])
        return kern.name, kern.ptx, params, extra

    _registered = True
