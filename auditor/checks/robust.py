"""Robust statistics for scale-free thresholds: a value judged against the median and the
median absolute deviation of a reference, never against an absolute count."""

from __future__ import annotations

import torch

MAD_TO_SIGMA = 1.4826    # MAD of a normal distribution × this = its standard deviation


def robust_z(values: torch.Tensor, reference: torch.Tensor, floor: float) -> torch.Tensor:
    """`(values − median(reference)) / (1.4826 · MAD(reference))`, the scale at least `floor`."""
    centre = reference.median()
    scale = max(MAD_TO_SIGMA * float((reference - centre).abs().median()), floor)
    return (values - centre) / scale


def within_class_z(values: torch.Tensor, labels: torch.Tensor, floor: float) -> torch.Tensor:
    """`(n,)` each value's `robust_z` against the values of its own class (a Shirt among shirts,
    not among all images: classes differ in how tightly their images agree)."""
    z = torch.zeros_like(values, dtype=torch.float32)
    for c in labels.unique():
        members = labels == c
        z[members] = robust_z(values[members].float(), values[members].float(), floor)
    return z
