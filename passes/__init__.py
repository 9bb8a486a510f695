"""ONNX -> ONNX lowering passes: a library that deployment targets pick from.

The contract of a pass:

- it is a function `onnx.ModelProto -> onnx.ModelProto` (`LoweringPass`);
  passes that need a parameter (a plugin namespace) are bound by the target
  that uses them;
- it is named: a target lists it as `(name, pass)` (`NamedPass`), and the name
  goes into the compile cache key and the compile log, so it must stay stable
  ("dft-to-matmul", "decompose-custom-ops", "plugin-nodes");
- it is pure: it never mutates its input, returns a new model when it changes
  something and may return its input unchanged when there is nothing to do.

What is here:

- `dft`: `lower_dft` ("dft-to-matmul"), ONNX `DFT` as MatMul against constant
  DFT matrices, for runtimes without DFT (TensorRT < 11.2, and onnxruntime's
  CPU provider, where the MatMul form is faster).
- `custom_ops`: `decompose_custom_ops` ("decompose-custom-ops"), the
  `lowlight` custom-domain nodes inlined as standard ONNX ops; and
  `to_plugin_nodes`, the same nodes marked for TensorRT AOT plugins.

This package imports only `lowlight.core` and `lowlight.kernels` (the custom-op
bodies): targets import passes, never the other way round. Importing the
package itself is light; `onnx` loads with the pass modules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # heavy imports only for type checkers
    import onnx

#: An ONNX -> ONNX rewrite chosen by the target (DFT -> MatMul, plugin nodes...).
LoweringPass = Callable[["onnx.ModelProto"], "onnx.ModelProto"]
#: A pass with the stable name it is logged and cache-keyed under.
NamedPass = tuple[str, LoweringPass]

__all__ = ["LoweringPass", "NamedPass"]
