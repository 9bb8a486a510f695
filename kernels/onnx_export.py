"""ONNX export of the custom ops: one node per op in domain `lowlight`, plus its body as a local function.

`onnx_translation_table()` goes to `torch.onnx.export(..., dynamo=True,
custom_translation_table=...)`; each `lowlight::*` torch op becomes ONE node
(`SpectralGate`, `IlluminationGate`, `MoETop2`; domain `lowlight`, opset 1).
`attach_functions(model)` then adds each op's body, a model-local ONNX function
of standard ops, so onnxruntime (which inlines local functions) runs the graph
as is. `export_onnx(module, args)` does both. The lowering pass
(`lowlight.passes.custom_ops`) later inlines the bodies (onnxruntime,
TensorRT < 10.9) or strips them and marks the node for our TensorRT plugin.

Why bodies are attached after export, not by the exporter: torch 2.13's dynamo
exporter always runs onnxscript's version converter (and, with optimize=True,
the optimizer), and both inline every model-local function first: a
translation that is an onnxscript function comes out as its decomposition,
with nothing left to say where it was. So the translation emits a bare node of
a registered ONNX schema (`register_onnx_schemas`), which the exporter passes
leave alone, and the bodies are attached afterwards.

Bodies (why these forms):
- SpectralGate: Concat + two 1x1 Conv (TensorRT maps Conv well; weights fold to
  constants), `fg + fg*S` instead of `f*G*(1+S)`: no typed constant, so the
  body is dtype-generic (fp32/fp16/bf16).
- IlluminationGate: AveragePool with auto_pad SAME_UPPER (= pad k//2 on each
  side for odd k, stride 1), count_include_pad=0. The node carries
  `kernel_shape=[k, k]`: function attributes can be referenced, not computed.
- MoETop2: dense in standard ops (every expert on every token, gated by the
  scattered top-2 weights): exact and loop-free, E/2 times the sparse FLOPs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import onnx
from onnx import defs
from onnxscript.values import Opset

from lowlight.kernels.onnx_functions import (
    DOMAIN,
    DOMAIN_VERSION,
    IlluminationGate,
    MoETop2,
    SpectralGate,
)

#: Body of each op type (onnxscript functions written against opset 18).
FUNCTIONS: Dict[str, Any] = {"SpectralGate": SpectralGate, "IlluminationGate": IlluminationGate, "MoETop2": MoETop2}
#: Torch op name -> ONNX op type.
OP_TYPES = {"spectral_gate": "SpectralGate", "illumination_gate": "IlluminationGate", "moe_top2": "MoETop2"}
_BODY_OPSET = 18

_IO = {
    "SpectralGate": (["re", "im", "w_g", "b_g", "w_s", "b_s"], ["re_out", "im_out"]),
    "IlluminationGate": (["z", "w", "b"], ["high_gated", "low"]),
    "MoETop2": (["x", "w_router", "w1", "w3", "w2"], ["y"]),
}


def register_onnx_schemas() -> None:
    """Register the `lowlight` op schemas with onnx (idempotent).

    Lets onnxscript emit the ops as plain nodes and onnx.checker validate them.
    """
    types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    for name, (ins, outs) in _IO.items():
        if defs.has(name, DOMAIN):
            continue
        A = defs.OpSchema.Attribute
        # TensorRT ONNX-parser hints that lower_custom_ops.to_plugin_nodes adds (optional).
        attrs = [
            A("plugin_namespace", defs.OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False),
            A("aot", defs.OpSchema.AttrType.INT, "1: use the plugin's AOT implementation", required=False),
        ]
        if name == "IlluminationGate":
            attrs.append(A("kernel_shape", defs.OpSchema.AttrType.INTS, "pool size [k, k], k odd"))
        schema = defs.OpSchema(
            name, DOMAIN, DOMAIN_VERSION,
            doc=f"lowlight.kernels {name}; body: lowlight.kernels.onnx_export.{name}",
            inputs=[defs.OpSchema.FormalParameter(n, "T") for n in ins],
            outputs=[defs.OpSchema.FormalParameter(n, "T") for n in outs],
            type_constraints=[("T", types, "float tensors")],
            attributes=attrs,
        )
        defs.register_schema(schema)


def _node_ops() -> Opset:
    register_onnx_schemas()
    return Opset(DOMAIN, DOMAIN_VERSION)


def _spectral_gate(re: Any, im: Any, w_g: Any, b_g: Any, w_s: Any, b_s: Any) -> Any:
    return _node_ops().SpectralGate(re, im, w_g, b_g, w_s, b_s)


def _illumination_gate(z: Any, w: Any, b: Any, k: int) -> Any:
    # The torch op takes k; the ONNX node takes kernel_shape (see module doc).
    return _node_ops().IlluminationGate(z, w, b, kernel_shape=[int(k), int(k)])


def _moe_top2(x: Any, w_router: Any, w1: Any, w3: Any, w2: Any) -> Any:
    return _node_ops().MoETop2(x, w_router, w1, w3, w2)


def onnx_translation_table() -> Dict[Any, Callable[..., Any]]:
    """`{torch.ops.lowlight.<op>.default: translation}` for the dynamo ONNX exporter.

    Each translation emits one `lowlight` node; run `attach_functions` on the
    result (or use `export_onnx`) before giving the model to onnxruntime.
    """
    import torch

    from lowlight.kernels import register_ops

    register_ops()
    register_onnx_schemas()
    return {
        torch.ops.lowlight.spectral_gate.default: _spectral_gate,
        torch.ops.lowlight.illumination_gate.default: _illumination_gate,
        torch.ops.lowlight.moe_top2.default: _moe_top2,
    }


def _model_opset(model: onnx.ModelProto, domain: str = "") -> int | None:
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return imp.version
    return None


def function_proto(op_type: str, onnx_opset: int = _BODY_OPSET) -> onnx.FunctionProto:
    """The body of `op_type` as a FunctionProto importing the standard domain at `onnx_opset`.

    The bodies use only ops whose semantics are unchanged from opset 18 to 23,
    so they are stamped with the model's own opset (onnxruntime wants function
    and model to agree).
    """
    if onnx_opset < _BODY_OPSET:
        from lowlight.core.errors import TargetError

        raise TargetError(f"ONNX opset {onnx_opset} is too old for the lowlight op bodies",
                          f"export with opset_version >= {_BODY_OPSET}")
    proto = FUNCTIONS[op_type].to_function_proto()
    for imp in proto.opset_import:
        if imp.domain == "":
            imp.version = onnx_opset
    return proto


def lowlight_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    """Main-graph nodes in the lowlight domain (subgraphs are not searched: the exporter emits none there)."""
    return [n for n in model.graph.node if n.domain == DOMAIN]


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` whose lowlight nodes have their bodies as local functions (idempotent)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = {n.op_type for n in lowlight_nodes(out)}
    if not used:
        return out
    opset = _model_opset(out) or _BODY_OPSET
    have = {(f.domain, f.name) for f in out.functions}
    for op_type in sorted(used):
        if op_type not in FUNCTIONS:
            from lowlight.core.errors import TargetError

            raise TargetError(f"unknown lowlight op {op_type!r} in the graph",
                              f"known ops: {sorted(FUNCTIONS)}; re-export with this lowlight version")
        if (DOMAIN, op_type) not in have:
            out.functions.append(function_proto(op_type, opset))
    if _model_opset(out, DOMAIN) is None:
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return out


def export_onnx(module: Any, args: Tuple[Any, ...], **kwargs: Any) -> onnx.ModelProto:
    """`torch.onnx.export(module, args, dynamo=True, custom_translation_table=...)` + `attach_functions`.

    Extra keyword arguments go to `torch.onnx.export`. The result runs in onnxruntime as is.
    """
    import torch

    prog = torch.onnx.export(module, args, dynamo=True, custom_translation_table=onnx_translation_table(), **kwargs)
    assert prog is not None  # dynamo=True always returns an ONNXProgram
    return attach_functions(prog.model_proto)
