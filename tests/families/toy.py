"""Toy families for the contract tests: each is what a user would write in one file.

`ToyDenoiser` is a one-graph image model. `ToyIterative` is an iterative
sampler in miniature: an encoder runs once, a step runs K times carrying a
latent that starts from noise, with per-step timesteps as program constants,
and a decoder runs once; with `--unroll yes` the K steps are one graph.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lowlight.core.errors import ShapeError
from lowlight.models.family import Component, Family, KeepFloat, Option, Tensor, image_batches

STEPS = 3


def _shape(shape: str) -> tuple[int, int, int, int]:
    dims = tuple(int(d) for d in shape.split("x"))
    if len(dims) != 4 or dims[1] != 3 or dims[2] % 4 or dims[3] % 4:
        raise ShapeError(f"toy shape {shape} is not Bx3xHxW with H, W multiples of 4", "e.g. --shape 1x3x32x32")
    return dims  # type: ignore[return-value]


class Denoiser(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb + 0.1 * self.body(rgb)).clamp(0, 1)


class ImageFamily(Family):
    """What both toys share: one `rgb` image input, frames fitted to it."""

    default_config = "tiny"

    def default_shape(self, config: str, **options: str) -> str:
        return "1x3x32x32"

    def inputs(self, shape: str, config: str, **options: str) -> list[Tensor]:
        return [Tensor("rgb", _shape(shape), "BCHW")]

    def make_inputs(self, frames: list[np.ndarray], shape: str, config: str, seed: int = 0, **options: str) -> list[dict[str, np.ndarray]]:
        return image_batches(frames, _shape(shape))


class ToyDenoiser(ImageFamily):
    name = "toy-denoiser"
    configs = {"tiny": 8}
    keep_float = KeepFloat(boundary_convs=True)

    def build(self, config: str, **options: str) -> nn.Module:
        torch.manual_seed(0)
        return Denoiser(self.configs[config])


class Encoder(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 4, stride=4)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.conv(rgb)


class Step(nn.Module):
    """z <- z + (cond - z) * sigmoid(t): moves the latent towards the condition as t grows."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(2 * c, c, 3, padding=1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(t.reshape(1, 1, 1, 1) * 4.0)
        return z + gate * (self.mix(torch.cat([z, cond], 1)) - z)


class Decoder(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c, 3, 4, stride=4)

    def forward(self, z: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb + 0.1 * self.up(z)).clamp(0, 1)


class ToyModel(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.encoder, self.step, self.decoder = Encoder(c), Step(c), Decoder(c)


class Unrolled(nn.Module):
    """The K steps in one graph: timesteps become constants, the noise stays an input."""

    def __init__(self, m: ToyModel, timesteps: np.ndarray) -> None:
        super().__init__()
        self.m = m
        self.register_buffer("t", torch.from_numpy(timesteps))

    def forward(self, rgb: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        cond = self.m.encoder(rgb)
        z = noise
        for k in range(self.t.shape[0]):
            z = self.m.step(z, cond, self.t[k : k + 1])
        return self.m.decoder(z, rgb)


class ToyIterative(ImageFamily):
    name = "toy-iterative"
    configs = {"tiny": 4}
    options = (Option("unroll", ("no", "yes"), "no", "run the K steps as one graph"),)
    keep_float = KeepFloat()  # every conv is a boundary conv here: quantize them all

    def build(self, config: str, **options: str) -> nn.Module:
        torch.manual_seed(1)
        return ToyModel(self.configs[config])

    def constants(self, config: str, **options: str) -> dict[str, np.ndarray]:
        return {"timesteps": np.linspace(1.0, 0.0, STEPS, dtype=np.float32).reshape(STEPS, 1)}

    def components(self, model: nn.Module, inputs: list[Tensor], config: str, **options: str) -> list[Component]:
        b, _, h, w = inputs[0].shape
        c = self.configs[config]
        latent = (b, c, h // 4, w // 4)
        if options.get("unroll") == "yes":
            noise = Tensor("noise", latent, "latent", None)
            return [Component("sampler", Unrolled(model, self.constants(config)["timesteps"].reshape(-1)), [inputs[0], noise], ["enhanced"], {"enhanced": "BCHW"})]
        return [
            Component("encoder", model.encoder, [inputs[0]], ["cond"], {"cond": "latent"}),
            Component("step", model.step, [Tensor("z", latent, "latent", None), Tensor("cond", latent, "latent", None), Tensor("t", (1,), "other", None)],
                      ["z_next"], {"z_next": "latent"}),
            Component("decoder", model.decoder, [Tensor("z", latent, "latent", None), inputs[0]], ["enhanced"], {"enhanced": "BCHW"}),
        ]

    def program(self, components: list[Component], inputs: list[Tensor], config: str, **options: str) -> dict[str, Any]:
        latent = list(components[-1].inputs[0].shape) if options.get("unroll") != "yes" else list(components[0].inputs[1].shape)
        if options.get("unroll") == "yes":
            return {"unrolled": True, "steps": [
                {"op": "noise", "shape": latent, "out": "noise"},
                {"op": "call", "component": "sampler", "in": {"rgb": "rgb", "noise": "noise"}, "out": {"enhanced": "enhanced"}},
            ]}
        return {"unrolled": False, "steps": [
            {"op": "call", "component": "encoder", "in": {"rgb": "rgb"}, "out": {"cond": "cond"}},
            {"op": "noise", "shape": latent, "out": "z"},
            {"op": "loop", "count": STEPS, "var": "k", "body": [
                {"op": "const", "name": "timesteps", "index": "k", "out": "t"},
                {"op": "call", "component": "step", "in": {"z": "z", "cond": "cond", "t": "t"}, "out": {"z_next": "z"}},
            ]},
            {"op": "call", "component": "decoder", "in": {"z": "z", "rgb": "rgb"}, "out": {"enhanced": "enhanced"}},
        ]}


def make_model() -> nn.Module:
    """A plain image model, as a user's function: [B,3,H,W] in [0,1] -> same shape."""
    torch.manual_seed(2)
    return Denoiser(6)


def not_a_model() -> int:
    return 3
