"""Export stage: PyTorch module -> ONNX with the dynamo exporter (rfft2/irfft2 -> ONNX DFT)."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowlight.compile.graph import fill_dft_lengths, name_nodes

if TYPE_CHECKING:
    import torch

OPSET = 20  # DFT-20 takes dft_length/axis as inputs; the dynamo exporter's default


def custom_translation_table() -> dict:
    """ONNX translations for our custom ops (lowlight.kernels), if that package provides them."""
    try:
        from lowlight.kernels import onnx_translation_table
    except ImportError:
        return {}
    return onnx_translation_table()


def export_onnx(
    module: "torch.nn.Module",
    example: dict[str, np.ndarray],
    output_name: str,
    path: str | Path,
    verbose: bool = False,
) -> None:
    """Export `module` (taking `example`'s inputs positionally, in order) to a single ONNX file."""
    import onnx
    import torch

    args = tuple(torch.from_numpy(v) for v in example.values())
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink if not verbose else None):  # type: ignore[arg-type]
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(example),
            output_names=[output_name],
            custom_translation_table=custom_translation_table() or None,
            verbose=verbose,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    if any(n.domain == "lowlight" for n in model.graph.node):
        # our custom-op nodes get their standard-op bodies as local functions,
        # so onnxruntime runs the graph as is (lowering decides their final form)
        from lowlight.kernels.onnx_export import attach_functions

        model = attach_functions(model)
    onnx.save(name_nodes(fill_dft_lengths(model)), str(path))
