"""One ONNX graph helper that every pass uses (as onnxruntime's quantization tools do with ONNXModel).

`GraphIndex(model)` answers the questions passes keep asking: who produces a
tensor, who consumes it, what constant value it has (initializer or Constant
node), what static shape it has (from one shape inference, run once per index),
how many nodes of each op there are. Also here: the custom-op domain our
kernels export to, node naming, and the one way to open an onnxruntime
session for a model.

`onnx` and `onnxruntime` are imported lazily: `lowlight.core` is imported by the
runtime, which must load without the compiler's dependencies.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

#: ONNX domain of our custom ops (the Triton kernels' one-node exports) and the
#: TensorRT plugin namespace they map to.
CUSTOM_DOMAIN = "lowlight"


def has_custom_nodes(model: "onnx.ModelProto") -> bool:
    """Does `model` hold nodes of the lowlight custom domain (TensorRT plugin nodes)?"""
    return any(n.domain == CUSTOM_DOMAIN for n in model.graph.node)


class GraphIndex:
    """Producers, consumers, constants and static shapes of one (top-level) graph."""

    def __init__(self, model: "onnx.ModelProto") -> None:
        self.model = model
        self.graph = model.graph
        self.producer: dict[str, Any] = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.initializers: dict[str, Any] = {i.name: i for i in self.graph.initializer}
        self._shapes: dict[str, tuple[int | None, ...]] | None = None
        self._elem_types: dict[str, int] = {}

    # -- constants ------------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is an initializer or a Constant node's output, else None."""
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return constant_node_value(node)
        return None

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or (name in self.producer and self.producer[name].op_type == "Constant")

    # -- shapes ---------------------------------------------------------------------------

    @property
    def shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Static shape of every tensor shape inference can type (None for an unknown dimension)."""
        if self._shapes is None:
            import onnx

            try:
                inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
            except Exception:  # a graph with unknown custom ops: keep what the model already states
                inferred = self.model
            out: dict[str, tuple[int | None, ...]] = {}
            g = inferred.graph
            for v in list(g.value_info) + list(g.input) + list(g.output):
                t = v.type.tensor_type
                if t.HasField("shape"):
                    out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                    self._elem_types[v.name] = t.elem_type
            for name, init in self.initializers.items():
                out[name] = tuple(init.dims)
                self._elem_types[name] = init.data_type
            self._shapes = out
        return self._shapes

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type (TensorProto.FLOAT...) shape inference gave `name`, if any."""
        _ = self.shapes
        return self._elem_types.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return len(s) if s is not None else None

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of `name` if every dimension is known, else None."""
        s = self.shapes.get(name)
        return tuple(int(d) for d in s) if s is not None and all(d is not None for d in s) else None  # type: ignore[misc]

    # -- counts ---------------------------------------------------------------------------

    def op_counts(self) -> dict[str, int]:
        return op_counts(self.model)


def constant_node_value(node: Any) -> np.ndarray:
    """The value of a Constant node, whatever attribute carries it (value, value_float(s), value_int(s)...)."""
    from onnx import helper, numpy_helper

    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "sparse_value":
        return np.zeros(0)
    return np.asarray(helper.get_attribute_value(attr))


#: ONNX metadata key under which export keeps node name -> PyTorch module path (onnxsim drops per-node metadata).
NODE_MODULES_KEY = "lowlight.node_modules"


def node_modules(model: "onnx.ModelProto") -> dict[str, dict[str, str]]:
    """ONNX node -> {"module", "type"...} as export stored it ({} for a model we did not export)."""
    import json

    for p in model.metadata_props:
        if p.key == NODE_MODULES_KEY:
            value: dict[str, dict[str, str]] = json.loads(p.value)
            return value
    return {}


def op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    """Nodes per op type (custom domains as `domain::Op`), sorted by name."""
    counts: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] += 1
    return dict(sorted(counts.items()))


def name_nodes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Give every node a unique, non-empty name (quantizers and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
    return model


def ort_session(model: "str | Path | bytes", threads: int | None = None, profile_prefix: str | None = None,
                providers: list[str] | None = None) -> Any:
    """One onnxruntime InferenceSession (quiet logging, CPU unless `providers` says otherwise).

    With only the CPU provider, ORT's fallback would retry the same load (printing a
    banner to stdout), so a damaged model would fail twice, noisily: it is off then.
    `threads` None: $LOWLIGHT_THREADS if set (a process sharing the CPU, e.g. with a
    camera pipeline or a training run, caps onnxruntime's pool), else all cores.
    """
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = threads or int(os.environ.get("LOWLIGHT_THREADS") or 0) or None
    if threads:
        opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    src = model if isinstance(model, bytes) else str(model)
    providers = providers or ["CPUExecutionProvider"]
    return ort.InferenceSession(src, opts, providers=providers, enable_fallback=int(providers != ["CPUExecutionProvider"]))
