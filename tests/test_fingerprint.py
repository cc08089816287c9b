"""Cache-key hashes: every model's state hashes (BatchNorm's 0-dim counters included) and
any change to a weight or buffer changes the hash."""

from __future__ import annotations

import torch
from torch import nn

from auditor.fingerprint import model_hash


def batch_norm_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()


def test_models_with_zero_dim_buffers_hash_and_changes_show():
    model = batch_norm_net()
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    assert model[1].num_batches_tracked.dim() == 0 and model[1].num_batches_tracked.dtype == torch.long
    before = model_hash(model)
    assert before == model_hash(model)
    model[1].num_batches_tracked += 1
    counted = model_hash(model)
    assert counted != before
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    assert model_hash(model) != counted
