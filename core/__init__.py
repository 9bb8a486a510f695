"""lowlight.core: the foundation every other part imports and that imports none of them.

Errors with a fix (`errors`), the bundle format (`bundle`), programs over
components (`program`), safe output paths (`fsio`), metrics (`metrics`), the
ONNX graph index (`onnx_graph`) and the TensorRT version type (`trt_version`).
Only the standard library and numpy at import time (onnx, onnxruntime lazily):
the runtime ships it to the vehicle.
"""
