"""Programs: what the runtime executes over a bundle's components, as data in the manifest.

Iterative models (latent diffusion, flow matching, masked refinement) run an
encoder once, a step K times carrying state, and a decoder once. Each of those
is a *component* (its own ONNX graph, its own precision); the *program* says in
which order to call them, what to feed each call and what to carry. A family
may instead unroll its K steps into one graph: then the program is one call and
the manifest says `"unrolled": true`. Single-graph models are the one-call case.

A program is a list of steps over an environment of named numpy arrays
(the program's inputs are in it from the start):

    {"op": "call", "component": C, "in": {graph_input: env_name}, "out": {graph_output: env_name}}
    {"op": "const", "name": N, "out": env_name}                  # constants[N]
    {"op": "const", "name": N, "index": LOOP_VAR, "out": env_name}  # constants[N][k]
    {"op": "noise", "shape": [..], "out": env_name}                # N(0,1), float32
    {"op": "noise", "shape": [..], "out": env_name, "input": NAME}  # ... or the caller's `NAME` input if given
    {"op": "loop", "count": K, "var": LOOP_VAR, "body": [steps...]}

Noise is drawn on the host from the bundle's seed (numpy PCG64), never by an
RNG op inside a graph: TensorRT ignores a RandomNormal's seed, so a graph that
draws its own noise cannot be verified against its reference. Constants
(timesteps, schedule coefficients, prompt embeddings) live in one `.npz` file
of the bundle. Values carried across loop iterations are simply rebound names.

`run_program` takes a `call(component, feeds) -> outputs` function, so the same
schedule runs over onnxruntime, TensorRT or a PyTorch reference (the compiler
wraps its modules the same way): one comparison for host and device.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from lowlight.core.errors import BundleError

#: Declared layouts of program inputs/outputs (what profile, roofline and lowlight-run read).
LAYOUTS = {
    "BCHW": "a batch of images, channels first",
    "BTCHW": "a batch of clips of T frames, channels first",
    "RGGB": "packed Bayer raw [B,4,h,w]: R, Gr, Gb, B planes",
    "BC": "one vector per batch item (e.g. per-channel gains)",
    "BL": "a token or index map per batch item",
    "latent": "a latent tensor (not an image)",
    "other": "anything else",
}

Call = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]

_MAX_LOOP = 10_000  # a manifest asking for more is damaged or hostile, not a sampler


def single_call_program(component: str, inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    """The program of a one-graph model: call it with the program inputs, return its outputs."""
    return {
        "unrolled": False,
        "steps": [{"op": "call", "component": component, "in": {n: n for n in inputs}, "out": {n: n for n in outputs}}],
    }


def _bad(what: str) -> BundleError:
    return BundleError(
        f"the bundle's program is invalid: {what}",
        "the bundle is damaged or was edited by hand: recompile it",
    )


def check_program(program: Any, components: Mapping[str, Any], inputs: list[str], outputs: list[str],
                  constants: Mapping[str, Any] | None = None, input_shapes: Mapping[str, list[int]] | None = None,
                  output_shapes: Mapping[str, list[int]] | None = None) -> None:
    """Validate a program statically: known ops and components, each call fed exactly its component's
    inputs, program inputs shaped as the components they feed, names defined before use, outputs produced."""
    input_shapes = input_shapes or {}
    output_shapes = output_shapes or {}
    rebound: set[str] = set()
    if not isinstance(program, dict) or not isinstance(program.get("steps"), list) or not program["steps"]:
        raise _bad("'program' must be an object with a non-empty 'steps' list")
    seed = program.get("seed", 0)
    if type(seed) is not int or seed < 0:
        raise _bad(f"'seed' must be a non-negative integer, got {seed!r}")
    defined = set(inputs)
    const_names = set(constants or {}) if constants is not None else None

    def walk(steps: Any, loop_vars: set[str], where: str) -> None:
        if not isinstance(steps, list):
            raise _bad(f"{where} must be a list of steps")
        for i, st in enumerate(steps):
            at = f"{where}[{i}]"
            if not isinstance(st, dict):
                raise _bad(f"{at} must be an object")
            op = st.get("op")
            if op == "call":
                comp = st.get("component")
                if not isinstance(comp, str) or comp not in components:
                    raise _bad(f"{at} calls unknown component {comp!r} (known: {', '.join(sorted(components))})")
                ins, outs = st.get("in"), st.get("out")
                if not isinstance(ins, dict) or not isinstance(outs, dict) or not outs:
                    raise _bad(f"{at} needs 'in' and 'out' objects")
                declared = components[comp].get("inputs") if isinstance(components[comp], dict) else None
                if isinstance(declared, list):
                    names = [t.get("name") for t in declared if isinstance(t, dict)]
                    if sorted(names) != sorted(ins):
                        raise _bad(f"{at} feeds {comp!r} with {sorted(ins)}, but it takes {names}")
                    for t in declared:
                        src = ins.get(t.get("name"))
                        if src in input_shapes and src not in rebound and list(input_shapes[src]) != list(t.get("shape", [])):
                            raise _bad(f"the manifest gives {src!r} shape {list(input_shapes[src])}, component {comp!r} takes {t.get('shape')}")
                for src in ins.values():
                    if not isinstance(src, str) or src not in defined:
                        raise _bad(f"{at} reads {src!r} before anything defines it")
                declared_out = components[comp].get("outputs") if isinstance(components[comp], dict) else None
                out_shapes = {t.get("name"): t.get("shape") for t in declared_out if isinstance(t, dict)} if isinstance(declared_out, list) else {}
                for k, dst in outs.items():
                    if not isinstance(dst, str) or not dst:
                        raise _bad(f"{at} writes to an invalid name {dst!r}")
                    if out_shapes and k not in out_shapes:
                        raise _bad(f"{at} reads output {k!r} of {comp!r}, which has {sorted(out_shapes)}")
                    if dst in output_shapes and out_shapes and list(output_shapes[dst]) != list(out_shapes[k] or []):
                        raise _bad(f"the manifest gives output {dst!r} shape {list(output_shapes[dst])}, component {comp!r} makes {out_shapes[k]}")
                    defined.add(dst)
                    rebound.add(dst)
            elif op == "const":
                name, out = st.get("name"), st.get("out")
                if not isinstance(name, str) or (const_names is not None and name not in const_names):
                    raise _bad(f"{at} names unknown constant {name!r}")
                if "index" in st and st["index"] not in loop_vars:
                    raise _bad(f"{at} indexes by {st['index']!r}, which is not an enclosing loop variable")
                if not isinstance(out, str) or not out:
                    raise _bad(f"{at} needs an 'out' name")
                defined.add(out)
            elif op == "noise":
                shape, out = st.get("shape"), st.get("out")
                if not isinstance(shape, list) or not all(type(d) is int and 0 < d < 1 << 31 for d in shape):
                    raise _bad(f"{at} noise shape must be a list of positive integers, got {shape!r}")
                if not isinstance(out, str) or not out:
                    raise _bad(f"{at} needs an 'out' name")
                if "input" in st and (not isinstance(st["input"], str) or not st["input"]):
                    raise _bad(f"{at} 'input' must be a name, got {st['input']!r}")
                defined.add(out)
            elif op == "loop":
                count, var = st.get("count"), st.get("var", "k")
                if type(count) is not int or not 0 < count <= _MAX_LOOP:
                    raise _bad(f"{at} loop count must be an integer in 1..{_MAX_LOOP}, got {count!r}")
                if not isinstance(var, str):
                    raise _bad(f"{at} loop var must be a name")
                walk(st.get("body"), loop_vars | {var}, f"{at}.body")
            else:
                raise _bad(f"{at} has unknown op {op!r} (call, const, noise, loop)")

    walk(program["steps"], set(), "steps")
    missing = [o for o in outputs if o not in defined]
    if missing:
        raise _bad(f"no step produces the output(s) {missing}")


def run_program(
    program: Mapping[str, Any],
    call: Call,
    inputs: Mapping[str, np.ndarray],
    outputs: list[str],
    constants: Mapping[str, np.ndarray] | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Execute `program`; `call(component, feeds)` runs one component. Returns the named outputs.

    `seed` overrides the program's seed (the runtime passes the bundle's; a
    caller asking for different noise passes its own).
    """
    env: dict[str, Any] = dict(inputs)
    rng = np.random.default_rng(program.get("seed", 0) if seed is None else seed)
    consts = constants or {}
    loop_index: dict[str, int] = {}

    def walk(steps: list[dict[str, Any]]) -> None:
        for st in steps:
            op = st["op"]
            if op == "call":
                feeds = {k: env[v] for k, v in st["in"].items()}
                result = call(st["component"], feeds)
                for k, v in st["out"].items():
                    if k not in result:
                        raise _bad(f"component {st['component']!r} has no output {k!r} (it has {sorted(result)})")
                    env[v] = result[k]
            elif op == "const":
                value = np.asarray(consts[st["name"]])
                env[st["out"]] = value[loop_index[st["index"]]] if "index" in st else value
            elif op == "noise":
                drawn = rng.standard_normal(st["shape"], dtype=np.float32)  # drawn anyway: later draws stay the same
                given = inputs.get(st["input"]) if "input" in st else None
                env[st["out"]] = drawn if given is None else np.asarray(given, dtype=np.float32)
            elif op == "loop":
                var = st.get("var", "k")
                for k in range(st["count"]):
                    loop_index[var] = k
                    walk(st["body"])
                loop_index.pop(var, None)

    walk(list(program["steps"]))
    return {o: env[o] for o in outputs}


def noise_inputs(program: Mapping[str, Any]) -> dict[str, list[int]]:
    """Optional program inputs a caller may pass instead of the drawn noise: {name: shape}."""
    return {str(st["input"]): list(st["shape"]) for st in program.get("steps", []) if st.get("op") == "noise" and "input" in st}


def count_calls(program: Mapping[str, Any]) -> dict[str, int]:
    """How many times each component runs in one execution (for latency and roofline per program)."""
    counts: dict[str, int] = {}

    def walk(steps: list[dict[str, Any]], mult: int) -> None:
        for st in steps:
            if st["op"] == "call":
                counts[st["component"]] = counts.get(st["component"], 0) + mult
            elif st["op"] == "loop":
                walk(st["body"], mult * int(st["count"]))

    walk(list(program["steps"]), 1)
    return counts
