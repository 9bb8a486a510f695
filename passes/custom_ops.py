"""Lowering of the `lowlight` custom-domain ONNX nodes, chosen by the target.

Two ONNX -> ONNX passes over graphs exported with `lowlight.kernels.export_onnx`
(or `torch.onnx.export(..., custom_translation_table=onnx_translation_table())`):

- `decompose_custom_ops`: every lowlight node becomes its body of standard ONNX
  ops (the model-local function inlined), the lowlight functions and opset
  import are dropped. For onnxruntime targets and TensorRT < 10.9.
- `to_plugin_nodes`: every lowlight node that has a TensorRT plugin
  (`PLUGIN_OPS`: SpectralGate, IlluminationGate, MoETop2) stays one node,
  marked for TensorRT's ONNX parser (`plugin_namespace`, `aot=1`: op type =
  plugin name, so it loads our AOT Triton plugin `lowlight::<OpType>` from
  `lowlight.kernels.trt_plugins`; MoETop2's is the single fused kernel of
  `lowlight.kernels.moe_fused_kernel`), its function body removed; a lowlight
  op not in `plugin_ops` is decomposed. For TensorRT >= 10.9.

Both return a new model and are no-ops (an unchanged copy) when the graph has
no lowlight node.
"""
from __future__ import annotations

import onnx
import onnx.inliner

from lowlight.core.onnx_graph import CUSTOM_DOMAIN as DOMAIN

#: Op types with a TensorRT AOT plugin (kernels/trt_plugins.py: PLUGIN_IDS).
PLUGIN_OPS = ("SpectralGate", "IlluminationGate", "MoETop2")


def _has_lowlight(model: onnx.ModelProto) -> bool:
    return any(n.domain == DOMAIN for n in model.graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _drop_lowlight_functions_and_import(model: onnx.ModelProto) -> None:
    keep = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    if not _has_lowlight(model) and not any(
        n.domain == DOMAIN for f in model.functions for n in f.node
    ):
        imports = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)


def _inline(model: onnx.ModelProto, op_types: set[str]) -> onnx.ModelProto:
    from lowlight.kernels.onnx_export import attach_functions

    with_bodies = attach_functions(model)  # adds missing bodies; keeps any already there
    ids = sorted((DOMAIN, t) for t in op_types)
    out = onnx.inliner.inline_selected_functions(with_bodies, ids, exclude=False)
    _drop_lowlight_functions_and_import(out)
    return out


def decompose_custom_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every lowlight-domain node by its decomposition into standard ONNX ops."""
    if not _has_lowlight(model):
        return _copy(model)
    return _inline(model, {n.op_type for n in model.graph.node if n.domain == DOMAIN})


def to_plugin_nodes(model: onnx.ModelProto, plugin_namespace: str = DOMAIN,
                    plugin_ops: tuple[str, ...] = PLUGIN_OPS) -> onnx.ModelProto:
    """Keep each lowlight node with a plugin as one TensorRT plugin node; decompose the rest.

    Adds the string attribute `plugin_namespace` and `aot=1` (TensorRT's ONNX
    parser then uses the plugin's AOT implementation); other attributes
    (e.g. IlluminationGate's `kernel_shape`) become plugin attributes. The
    function bodies of plugin ops are removed.
    """
    if not _has_lowlight(model):
        return _copy(model)
    no_plugin = {n.op_type for n in model.graph.node if n.domain == DOMAIN and n.op_type not in plugin_ops}
    out = _inline(model, no_plugin) if no_plugin else _copy(model)
    for node in out.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = [a for a in node.attribute if a.name not in ("plugin_namespace", "aot")]
        del node.attribute[:]
        node.attribute.extend(attrs)
        node.attribute.append(onnx.helper.make_attribute("plugin_namespace", plugin_namespace))
        node.attribute.append(onnx.helper.make_attribute("aot", 1))
    keep = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    if _has_lowlight(out) and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return out
