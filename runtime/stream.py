"""Frame-by-frame enhancement: `stream = lowlight.runtime.load(bundle).stream(pixel_format="bgr24")`.

`out = stream(frame)` takes one camera frame (uint8 in the stream's pixel
format, any size) and returns the enhanced frame in the same format and size.
It is **causal**: the output for frame t reads frames up to t only, through a
window of the last K frames (edges repeat the first frame after a `reset()`,
as the clip model repeats a clip's first frame). K is:

- a streaming bundle (`lowlight-compile --stream yes`, the program declares
  `"stream"`): the frames the newest output depends on (AMNet tiny 2, base 3).
  Components declared `cached` (AMNet's per-frame encoder) run once per frame:
  their outputs are kept with the frame while it is in the window;
- a clip bundle (`rgb` laid out BTCHW, T frames): the last T frames, the whole
  clip run for every new frame, its last output frame kept (T x the compute
  of one frame, but no block edges: no flicker every T frames);
- an image bundle (BCHW): 1, each frame alone.

A frame whose size differs from the compiled one is tiled with overlap and
blended (`lowlight.runtime.tiling`); each tile keeps its own window. The size
is fixed by the first frame after a `reset()`: a frame of another size is a
bad frame. Bad frames (not a frame of the pixel format, wrong size, NaN/Inf)
are counted in `stats` and skipped (`stream(frame)` returns None), or raise
with `on_bad="raise"`.

Exposure awareness (on by default): a frame that is already well exposed is
blended toward its input, so a 24/7 camera needs no day/night switch. The
measure is the frame's mean BT.601 luma: at or below `exposure[0]` (0.13) the
enhanced frame is used as it is, at or above `exposure[1]` (0.22) the input
is, smoothstep in between. The thresholds come from measurements here: the
daytime clips of `../shared/data/video` sit at 0.225-0.48 mean luma (every 4th
frame: car-detection 0.225 minimum, vtest 0.45-0.48), the same clips darkened
x0.25 at 0.06-0.12; with the tiny model a 0.225 daytime frame enhanced fully
came out at 8.9 dB to its input (blown out). Real dusk photos brighter than
0.22 are therefore left as they are: pass `exposure=None` to always enhance.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowlight.core.errors import InputError
from lowlight.runtime.pixel_formats import check_format, frame_size, from_rgb, to_rgb
from lowlight.runtime.tiling import TilePlan, merge, plan_tiles, split

#: "rgb_f32": H x W x 3 float32 RGB in [0,1] in and out (what lowlight-run decodes to).
FLOAT_FORMAT = "rgb_f32"
#: Mean-luma thresholds of the exposure blend (see the module docstring).
EXPOSURE = (0.13, 0.22)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: Latencies kept for the percentiles (a ring: a 24/7 stream must not grow).
_LATENCY_RING = 4096


@dataclass
class StreamStats:
    """What a stream has done: frames in, enhanced, bad (by reason), latency of enhanced frames."""

    frames: int = 0
    enhanced: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_RING))
    resets: int = 0

    @property
    def skipped(self) -> int:
        return sum(self.bad.values())

    def latency(self) -> dict[str, float]:
        """p50 / p99 / mean of the last enhanced frames, in ms (empty before the first)."""
        if not self.latencies_ms:
            return {}
        a = np.asarray(self.latencies_ms)
        return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "enhanced": self.enhanced, "skipped": self.skipped, "bad": dict(self.bad),
                "resets": self.resets, "latency_ms": self.latency()}


def exposure_weight(rgb: np.ndarray, exposure: tuple[float, float] | None) -> float:
    """How much of the input to keep for a well-exposed frame: 0 (dark: all enhanced) .. 1 (bright: all input)."""
    if exposure is None:
        return 0.0
    lo, hi = exposure
    m = float((rgb.reshape(-1, 3) @ _LUMA).mean())
    t = min(max((m - lo) / max(hi - lo, 1e-6), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


class FrameStream:
    """A causal, stateful enhancer over a `Session`: `stream(frame)` -> enhanced frame (see the module docstring)."""

    def __init__(self, session: Any, pixel_format: str = "bgr24", *, exposure: tuple[float, float] | None = EXPOSURE,
                 overlap: int | None = None, cache: bool = True, on_bad: str = "skip") -> None:
        if pixel_format != FLOAT_FORMAT:
            check_format(pixel_format)
        if on_bad not in ("skip", "raise"):
            raise InputError(f"on_bad must be 'skip' or 'raise', got {on_bad!r}", "pass on_bad='skip' (count and skip bad frames) or 'raise'")
        if exposure is not None and not (len(exposure) == 2 and 0 <= exposure[0] < exposure[1] <= 1):
            raise InputError(f"exposure thresholds must be (low, high) with 0 <= low < high <= 1, got {exposure!r}",
                             f"pass e.g. exposure={EXPOSURE} (mean luma), or None to always enhance")
        self.session, self.pixel_format, self.exposure, self.cache, self.on_bad = session, pixel_format, exposure, cache, on_bad
        self.stats = StreamStats()
        self._mode, self._window_names, self._cached, self._shape = self._read_layout(session)
        b, h, w = self._shape
        self._overlap = overlap
        self._plan: TilePlan | None = None
        self._weights: list[np.ndarray] | None = None
        self._windows: list[deque] = []
        self._features: dict[int, dict[str, dict[str, np.ndarray]]] = {}

    # -- what the bundle is ------------------------------------------------------------------
    @staticmethod
    def _read_layout(sess: Any) -> tuple[str, list[str], set[str], tuple[int, int, int]]:
        """(mode, window input names oldest first, cached components, (B, H, W) of one tile)."""
        spec = sess.program.get("stream")
        if isinstance(spec, dict) and spec.get("window"):
            names = [str(n) for n in spec["window"]]
            if sorted(names) != sorted(sess.inputs) or any(len(sess.inputs[n]) != 4 for n in names):
                raise InputError(f"{sess.bundle}: the program's stream window {names} does not match its inputs {list(sess.inputs)}",
                                 "recompile the bundle")
            b, _, h, w = sess.inputs[names[0]]
            return "window", names, set(spec.get("cached", [])), (b, h, w)
        if list(sess.inputs) != ["rgb"]:
            raise InputError(f"this bundle takes inputs {list(sess.inputs)}; a stream feeds RGB frames only",
                             "call the session with every input from Python (lowlight.runtime.load(BUNDLE)(**inputs)); "
                             "an AMNet bundle streams when compiled with --modalities rgb")
        shape = sess.inputs["rgb"]
        layout = sess.layouts.get("rgb") or ("BTCHW" if len(shape) == 5 else "BCHW")
        if layout == "BTCHW" and len(shape) == 5 and shape[2] == 3:
            return "clip", ["rgb"] * shape[1], set(), (shape[0], shape[3], shape[4])
        if layout == "BCHW" and len(shape) == 4 and shape[1] == 3:
            return "image", ["rgb"], set(), (shape[0], shape[2], shape[3])
        raise InputError(f"this bundle's rgb input is {layout} {shape}; a stream feeds RGB frames (BCHW or BTCHW)",
                         "call lowlight.runtime.load(bundle).run() and build the inputs yourself")

    @property
    def window(self) -> int:
        """Frames each output reads (the newest included)."""
        return len(self._window_names)

    @property
    def tile_size(self) -> tuple[int, int]:
        return self._shape[1], self._shape[2]

    def reset(self) -> None:
        """Forget past frames (a scene cut, a camera switch); the next frame may have a new size."""
        self._plan, self._weights, self._windows, self._features = None, None, [], {}
        self.stats.resets += 1

    # -- one frame ---------------------------------------------------------------------------
    def __call__(self, frame: Any) -> np.ndarray | None:
        """The enhanced frame (same format and size), or None for a bad frame (counted in `stats`)."""
        self.stats.frames += 1
        t0 = time.perf_counter()
        try:
            rgb = self._decode(frame)
        except InputError as exc:
            self._bad(exc)
            return None
        out = self.enhance_rgb(rgb)
        self.stats.enhanced += 1
        result = out if self.pixel_format == FLOAT_FORMAT else from_rgb(out, self.pixel_format)
        self.stats.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        return result

    def _bad(self, exc: InputError) -> None:
        reason = exc.what.split(":")[0][:80] if ":" in exc.what else exc.what[:80]
        key = next((k for k in ("NaN/Inf", "size", "shape", "dtype", "uint8", "numpy") if k in exc.what), reason)
        self.stats.bad[key] = self.stats.bad.get(key, 0) + 1
        if self.on_bad == "raise":
            raise exc

    def _decode(self, frame: Any) -> np.ndarray:
        if self.pixel_format == FLOAT_FORMAT:
            if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype.kind != "f":
                raise InputError(f"an {FLOAT_FORMAT} frame must be a float H x W x 3 array, got "
                                 f"{getattr(frame, 'shape', type(frame).__name__)}", "pass RGB in [0,1] as float32")
            with np.errstate(invalid="ignore"):
                lo, hi = float(frame.min()), float(frame.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise InputError("the frame contains NaN/Inf values", "drop or repair the frame")
            rgb = np.clip(frame.astype(np.float32, copy=False), 0.0, 1.0)
        else:
            rgb = to_rgb(frame, self.pixel_format)
        h, w = rgb.shape[:2]
        if self._plan is not None and (h, w) != (self._plan.height, self._plan.width):
            raise InputError(f"frame size {w}x{h} differs from this stream's {self._plan.width}x{self._plan.height}",
                             "call stream.reset() when the camera changes resolution")
        return rgb

    def enhance_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """One H x W x 3 float RGB frame through the window, tiled, exposure-blended."""
        if self._plan is None:
            th, tw = self.tile_size
            self._plan = plan_tiles(rgb.shape[0], rgb.shape[1], th, tw, self._overlap)
            self._weights = self._plan.weights()
            self._windows = [deque(maxlen=self.window) for _ in range(self._plan.count)]
        tiles = [np.ascontiguousarray(t.transpose(2, 0, 1), dtype=np.float32) for t in split(rgb, self._plan)]
        for win, t in zip(self._windows, tiles):
            if not win:  # the first frame after a reset fills the window, as a clip repeats its first frame
                win.extend([t] * self.window)
            else:
                win.append(t)
        live = {id(t) for w in self._windows for t in w}
        for key in [k for k in self._features if k not in live]:  # features of frames that left every window
            del self._features[key]
        outs = self._run_windows()
        enhanced = merge([o.transpose(1, 2, 0) for o in outs], self._plan, self._weights)
        k = exposure_weight(rgb, self.exposure)
        if k > 0:
            enhanced = (1.0 - k) * enhanced + k * rgb
        return np.clip(enhanced, 0.0, 1.0)

    def _run_windows(self) -> list[np.ndarray]:
        """The newest enhanced frame (3 x h x w) of every tile's window."""
        b = self._shape[0]
        if self._mode == "window":
            return [self._run_cached(list(win)) for win in self._windows]
        outs: list[np.ndarray] = []
        for i in range(0, len(self._windows), b):  # tiles share a call through the batch dimension
            group = self._windows[i : i + b]
            items = [np.stack(list(w)) if self._mode == "clip" else w[-1] for w in group]
            items += [items[-1]] * (b - len(items))
            y = self._program({"rgb": np.stack(items)})
            outs.extend(y[j, -1] if self._mode == "clip" else y[j] for j in range(len(group)))
        return outs

    def _program(self, feeds: dict[str, np.ndarray], call: Any = None) -> np.ndarray:
        from lowlight.core.program import run_program

        s = self.session
        if call is None:
            return s(**feeds)  # the session's own checks and program
        return run_program(s.program, call, feeds, [s.output_name], s.constants)[s.output_name]

    def _run_cached(self, window: list[np.ndarray]) -> np.ndarray:
        """A streaming bundle's program over one tile's window; cached components run once per frame."""
        b = self._shape[0]
        feeds = {n: np.broadcast_to(t[None], (b, *t.shape)) if b > 1 else t[None] for n, t in zip(self._window_names, window)}
        by_id = {id(feeds[n]): id(t) for n, t in zip(self._window_names, window)}

        def call(component: str, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if not self.cache or component not in self._cached or len(f) != 1:
                return self.session._call(component, {k: np.ascontiguousarray(v) for k, v in f.items()})
            frame_id = by_id.get(id(next(iter(f.values()))))
            if frame_id is None:
                return self.session._call(component, {k: np.ascontiguousarray(v) for k, v in f.items()})
            per_frame = self._features.setdefault(frame_id, {})
            if component not in per_frame:
                per_frame[component] = self.session._call(component, {k: np.ascontiguousarray(v) for k, v in f.items()})
            return per_frame[component]

        return self._program(feeds, call)[0]


class CompiledFormatStream:
    """Frame-by-frame over a bundle compiled with `--pixel-format`: the graph converts the camera's
    bytes itself (on the GPU under TensorRT), so a frame is handed over as it is.

    The compiled shape is the camera's: frames of another size or format are refused
    (compile with `--shape` from the camera's resolution). Image bundles ([1,3,H,W])
    only: a clip bundle needs T frames per call, so use `Session.run(frame=...)` there.
    """

    def __init__(self, session: Any, pixel_format: str, compiled: str) -> None:
        from lowlight.core.errors import InputError

        if pixel_format != compiled:
            raise InputError(f"this bundle converts {compiled} frames in its graph; stream(pixel_format={pixel_format!r}) does not match",
                             f"use stream(pixel_format={compiled!r}), or compile again with --pixel-format {pixel_format}")
        self.session, self.pixel_format = session, compiled
        self.input = next(iter(session.inputs))
        self.shape = list(session.inputs[self.input])
        if self.shape[0] != 1 or len(self.shape) != {"nv12": 3}.get(compiled, 4):
            raise InputError(f"stream() over a {compiled} bundle needs a single-image bundle; this one takes {self.shape}",
                             "call Session.run(frame=...) with whole batches or clips")
        self.frames = 0

    def __call__(self, frame: Any) -> Any:
        import numpy as np

        x = np.asarray(frame)
        y = self.session.run(**{self.input: x.reshape(self.shape) if list(x.shape) == self.shape[1:] else x})
        self.frames += 1
        return y[self.session.output_name].reshape(x.shape)

    def reset(self) -> None:
        """Nothing is carried between frames of an image bundle."""

