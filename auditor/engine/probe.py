"""The factored projection's probe: each parameter's share of the squared gradient norm over the
first `PROBE` training images, kept in the cache folder so that a warm re-run finds its features
without probing again and every device reads the same shares, so the same feature layout.

    CACHE_DIR/probes/KEY.json    [share, ...] one per selected parameter
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from auditor.attribution.factored import gradient_shares
from auditor.attribution.gradients import GradientComputer
from auditor.attribution.memory import rows_within
from auditor.engine.keys import PROBE
from auditor.files import atomic_write
from auditor.target import Target


def probed_shares(target: Target, gradients: GradientComputer, path: Path) -> list[float] | None:
    """The shares kept at `path` (its name the probe's cache key), or measured and kept there;
    None when a gradient was not finite."""
    if path.is_file():
        return json.loads(path.read_text())
    images, labels = target.train_batch(torch.arange(min(PROBE, len(target.train))))
    shares = gradient_shares(gradients, images.to(target.device), labels.to(target.device),
                             rows_within(8 * gradients.dim, PROBE))
    if shares is not None:
        with contextlib.suppress(OSError):     # only a cache: featurizing names an unwritable folder
            atomic_write(path, json.dumps(shares))
    return shares
