"""Every cache key in one place: what each stored result depends on, hashed.

- training features: the weights, the training data, the parameters, the projection (and its
  layout: the factored kind sizes its blocks from the gradients), the precision, the seed;
- the factored projection's gradient shares: the weights, the training data, the parameters;
- influence top-k: the features' key + the test data, the test label mode and top_k (and, for
  `influence: kernel`, its damping);
- TFA maps: the weights, both datasets, the parameters, the label mode, SmoothGrad, the seed and
  the formula's version (and, for `influence: kernel`, whose direction they differentiate against,
  its damping and the features);
- representations (a mid-depth feature map of every training image): the weights, the training data, the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from auditor.attribution.tfa import FORMULA as TFA_FORMULA
from auditor.fingerprint import dataset_hash, model_hash, settings_hash
from auditor.target import Target

KEY_LENGTH = 24
PROBE = 16                      # training images whose gradients size the factored projection's blocks


def key_of(meta: dict) -> str:
    """The short hash naming a cache entry."""
    return settings_hash(meta)[:KEY_LENGTH]


class CacheKeys:
    """Hashes of the target (each computed once) and the metadata of each cached result."""

    def __init__(self, target: Target, parameter_names: list[str],
                 projection_layout: Callable[[], list[int]] = list) -> None:
        self.target, self.parameter_names, self.projection_layout = target, parameter_names, projection_layout
        self.settings = target.spec.settings
        self.attribution = self.settings.attribution

    @cached_property
    def model(self) -> str:
        return model_hash(self.target.model)

    @cached_property
    def train_data(self) -> str:
        return dataset_hash(self.target.train)

    @cached_property
    def test_data(self) -> str:
        return dataset_hash(self.target.test)

    @cached_property
    def features(self) -> dict[str, str]:
        a = self.attribution
        return {"model": self.model, "data": self.train_data,
                "settings": settings_hash({"params": self.parameter_names, "projection_dim": a.projection_dim,
                                           "projection": a.projection, "layout": self.projection_layout(),
                                           "precision": a.precision, "seed": self.settings.seed, "label": "true"})}

    @cached_property
    def probe(self) -> dict:
        """What the factored projection's gradient shares depend on (its first training images)."""
        return {"model": self.model, "data": self.train_data, "params": self.parameter_names, "probe_images": PROBE}

    @cached_property
    def influence(self) -> dict:
        a = self.attribution
        kernel = {"influence": "kernel", "damping": a.damping} if a.influence == "kernel" else {}
        return {"features": self.features, "test": self.test_data, "test_label": a.test_label, "top_k": a.top_k,
                **kernel}

    @cached_property
    def tfa(self) -> dict:
        a = self.attribution
        kernel = ({"influence": "kernel", "damping": a.damping, "features": self.features}
                  if a.influence == "kernel" else {})
        return {"model": self.model, "data": self.train_data, "test": self.test_data, "params": self.parameter_names,
                "test_label": a.test_label, "samples": a.smoothgrad_samples, "sigma": a.smoothgrad_sigma,
                "seed": self.settings.seed, "formula": TFA_FORMULA, **kernel}

    def representation(self, layer: str) -> dict[str, str]:
        """What the training set's representation at `layer` (output, or `NAME:input` for a head) depends on."""
        return {"model": self.model, "data": self.train_data, "layer": layer}
