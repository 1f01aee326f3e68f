"""The views of ``--average-views`` on image tensors (..., H, W), for the places that hold the
resized tensor instead of the decoded image: the ONNX graph and explain's heatmaps.

Stage one turns the decoded image before the resize (``extract.apply_view``). Under ``--resize
squash`` a flip or quarter turn commutes with the resize up to the 8-bit rounding between the
resize's two axes, so turning the squashed tensor gives nearly the same embedding (measured in
``tests/test_export.py`` and ``docs/deploy.md``); under the centre crop it shifts the crop by a
pixel, so the graph is refused there. Written with ``flip`` and ``transpose`` only:
``torch.rot90`` has no ONNX symbolic.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

QUARTER_TURNS = {"rot90": 1, "rot180": 2, "rot270": 3}


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
        unknown = [v for v in views if v != "flip" and v not in QUARTER_TURNS]
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}")
        self.net, self.views = net, tuple(views)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # one batch of every copy through ``net``: one backbone in an exported graph
        out = self.net(torch.cat([image] + [turn(image, v) for v in self.views]))
        return out.reshape(1 + len(self.views), -1, out.shape[-1]).mean(dim=0)
