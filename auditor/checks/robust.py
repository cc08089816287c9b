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
