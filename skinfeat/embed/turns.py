"""The views of ``--views`` / ``--average-views``: their names and presets, and the views made
on image tensors (..., H, W), as stage one makes averaged views under the squash and as the
ONNX graph and explain's heatmaps, which hold the resized tensor, make them.

Stored ``--views``, and averaged views under the centre crop, turn the decoded image before the
resize (``extract.apply_view``): there turning the cropped tensor would shift the crop by a
pixel, so the graph is refused for them. Under ``--resize squash`` a flip or quarter turn
commutes with the resize up to the 8-bit rounding between the resize's two axes, which is why
averaged views there turn the squashed tensor (``extract.TURNED_TENSOR``) and the graph equals
predict (``tests/test_export.py``). Written with ``flip`` and ``transpose`` only:
``torch.rot90`` has no ONNX symbolic.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

VIEW_NAMES = ("flip", "rot90", "rot180", "rot270")
VIEW_PRESETS = {"none": (), "flip": ("flip",), "rot90": ("rot90",), "all": VIEW_NAMES}
QUARTER_TURNS = {"rot90": 1, "rot180": 2, "rot270": 3}


def view_preset(name: str, option: str = "views") -> tuple[str, ...]:
    """The views a preset name (``VIEW_PRESETS``) stands for; another name is refused."""
    if name not in VIEW_PRESETS:
        raise InputError(f"{option} must be one of {', '.join(VIEW_PRESETS)}, got {name!r}")
    return VIEW_PRESETS[name]


def preset_name(views) -> str | None:
    """The preset name of a list of views (``view_preset``'s inverse); None where no preset
    is that list."""
    return next((k for k, v in VIEW_PRESETS.items() if v == tuple(views)), None)


def turn(x: torch.Tensor, view: str) -> torch.Tensor:
    """``view`` of (..., H, W) images: ``flip`` left-right, ``rotK`` counter-clockwise by K
    degrees (as PIL's ``ROTATE_K`` turns the decoded image, and ``torch.rot90`` turns H, W)."""
    if view == "flip":
        return x.flip(-1)
    k = QUARTER_TURNS[view]
    if k == 2:
        return x.flip(-2).flip(-1)
    return (x.flip(-1) if k == 1 else x.flip(-2)).transpose(-2, -1)


def turn_back(x: torch.Tensor, view: str) -> torch.Tensor:
    """The inverse of ``turn``: a map of the view, in the image's own orientation."""
    if view == "flip" or view == "rot180":
        return turn(x, view)
    return turn(x, "rot270" if view == "rot90" else "rot90")


class ViewAveraged(nn.Module):
    """The embedding a ``--average-views`` cache stores: the mean of ``net`` on the image and
    on each of its views, made from the resized tensor (see the module docstring)."""

    def __init__(self, net: nn.Module, views: Sequence[str]):
        super().__init__()
        unknown = [v for v in views if v not in VIEW_NAMES]
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}")
        self.net, self.views = net, tuple(views)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # one batch of every copy through ``net``: one backbone in an exported graph
        out = self.net(torch.cat([image] + [turn(image, v) for v in self.views]))
        return out.reshape(1 + len(self.views), -1, out.shape[-1]).mean(dim=0)
