"""Export stage: PyTorch module -> ONNX with the dynamo exporter (rfft2/irfft2 -> ONNX DFT)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from lowlight.compile.graph import fill_dft_lengths
from lowlight.core.onnx_graph import CUSTOM_DOMAIN, NODE_MODULES_KEY, name_nodes, node_modules  # noqa: F401  (node_modules re-exported)

if TYPE_CHECKING:
    import onnx
    import torch

OPSET = 20  # DFT-20 takes dft_length/axis as inputs; the dynamo exporter's default

#: Tensor bytes past which a model is saved with its weights in a side file
#: (`model.onnx.data`): protobuf cannot serialize a message over 2 GiB (EncodeError;
#: the released GM-MoE layout is 2.76 GB of float32). Override with the environment
#: variable below (the tests lower it to exercise the path with a tiny model).
EXTERNAL_DATA_BYTES = int(1.8e9)
EXTERNAL_DATA_ENV = "LOWLIGHT_ONNX_EXTERNAL_DATA_BYTES"


def external_data_threshold() -> int:
    """Bytes past which `save_onnx` writes external data (env LOWLIGHT_ONNX_EXTERNAL_DATA_BYTES, else 1.8e9)."""
    value = os.environ.get(EXTERNAL_DATA_ENV)
    return int(float(value)) if value else EXTERNAL_DATA_BYTES


def _tensors(model: "onnx.ModelProto") -> "Iterator[onnx.TensorProto]":
    """Every tensor of `model`: initializers, attribute tensors (Constant), in subgraphs and local functions."""

    def nodes(ns: Any) -> Any:
        for node in ns:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from graph(g)

    def graph(g: Any) -> Any:
        yield from g.initializer
        yield from nodes(g.node)

    yield from graph(model.graph)
    for f in model.functions:
        yield from nodes(f.node)


def tensor_bytes(model: "onnx.ModelProto") -> int:
    """Serialized bytes of every tensor in `model` (what counts towards protobuf's 2 GiB limit)."""
    return sum(t.ByteSize() for t in _tensors(model))


def save_onnx(model: "onnx.ModelProto", path: str | Path, threshold: int | None = None) -> list[Path]:
    """Save `model` at `path`; past `threshold` tensor bytes its weights go to `<name>.data` beside it.

    Returns the files written (the model, then its data file if any). A stale data
    file is removed first: onnx appends to an existing one. Readers need nothing
    special: `onnx.load(path)` and onnxruntime find the data file next to the model.
    """
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    limit = external_data_threshold() if threshold is None else threshold
    external = tensor_bytes(model) > limit
    data.unlink(missing_ok=True)
    if not external:
        onnx.save_model(model, str(path))
        return [path]
    # size_threshold=1024: small tensors (shapes, scalars) stay inline, where graph passes read them
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]


def onnx_files(path: str | Path) -> list[Path]:
    """The model file and the external data files it references (what to copy or hash with it)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data if entry.key == "location"
    }
    return [path] + [path.parent / loc for loc in sorted(locations)]


def onnx_sha256(path: str | Path) -> str:
    """sha256 over the model file and its external data: with external data the .onnx alone
    holds only offsets, so two models with different weights can have the same .onnx bytes."""
    h = hashlib.sha256()
    for f in onnx_files(path):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


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
    output_names: str | list[str],
    path: str | Path,
    verbose: bool = False,
    external_data_bytes: int | None = None,
) -> list[Path]:
    """Export `module` (taking `example`'s inputs positionally, in order) to ONNX at `path`.

    Returns the files written: `path`, plus `path.data` when the tensors exceed
    `external_data_bytes` (default `external_data_threshold()`, 1.8 GB).
    """
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
            output_names=[output_names] if isinstance(output_names, str) else list(output_names),
            custom_translation_table=custom_translation_table() or None,
            verbose=verbose,
        )
    assert program is not None  # dynamo=True always returns a program
    program.save(str(path))  # torch writes <path>.data itself past 1.5 GB
    del program  # its tensors alias the module's; drop them before the model is loaded again
    model = onnx.load(str(path))  # external data read into memory: the file may be rewritten below
    if any(n.domain == CUSTOM_DOMAIN for n in model.graph.node):
        # our custom-op nodes get their standard-op bodies as local functions,
        # so onnxruntime runs the graph as is (lowering decides their final form)
        from lowlight.kernels.onnx_export import attach_functions

        model = attach_functions(model)
    return save_onnx(keep_module_paths(name_nodes(fill_dft_lengths(model))), path, external_data_bytes)


#: Model-level metadata key holding {node name: {"module", "class"}} from export. Node-level
#: metadata (the exporter's `pkg.torch.onnx.name_scopes`) is dropped by onnxsim and by the
#: quantizers; model-level `metadata_props` survive them, and node names survive too, so
#: the per-layer profile can still say which PyTorch module a node of the final graph came from.


def module_path(node: "onnx.NodeProto") -> dict[str, str] | None:
    """The PyTorch module a dynamo-exported node belongs to, from its `name_scopes`/`class_hierarchy` metadata.

    name_scopes is ['', 'model.encoder', 'model.encoder.inc', 'conv2d']: the last entry is
    the FX node, the one before it the innermost module (module path as in `named_modules()`).
    """
    import ast

    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or len(scopes) < 2:
        return None
    modules = [s for s in scopes[:-1] if s]
    cls = classes[-2] if isinstance(classes, list) and len(classes) >= 2 else ""
    return {"module": modules[-1] if modules else "", "class": str(cls)}


def keep_module_paths(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Record node name -> PyTorch module path in the model's metadata_props (see NODE_MODULES_KEY)."""
    import json

    mapping = {n.name: mp for n in model.graph.node if (mp := module_path(n)) is not None}
    if mapping:
        for p in list(model.metadata_props):
            if p.key == NODE_MODULES_KEY:
                model.metadata_props.remove(p)
        entry = model.metadata_props.add()
        entry.key, entry.value = NODE_MODULES_KEY, json.dumps(mapping, separators=(",", ":"))
    return model


