"""Saliency maps (DESIGN.md §1.3) of test images for their predicted class, plain or
VAR-refined, per method: each (method, VAR, example) computed once per run."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from auditor.attribution.memory import Chunked
from auditor.progress import bar as progress_bar
from auditor.attribution.saliency import SaliencyMethod, make_method
from auditor.attribution.var import class_set, var
from auditor.engine.located import located
from auditor.engine.predictions import Predictions
from auditor.target import Target


@dataclass(frozen=True)
class SaliencyMaps:
    """Test-image maps for `test_indices (m,)`: `signed (m, C', H, W)`, `magnitude (m, H, W)`."""

    test_indices: torch.Tensor
    signed: torch.Tensor
    magnitude: torch.Tensor


class SaliencyCache:
    """Maps by (method, VAR) and test example. VAR's class set: the predicted class plus the
    `var_top_k` most probable others."""

    def __init__(self, target: Target) -> None:
        self.target, self.spec = target, target.spec
        self.settings = self.spec.settings
        self._maps: dict[tuple[str, bool], dict[int, torch.Tensor]] = {}

    @cached_property
    def _chunks(self) -> Chunked:
        """Test images per saliency batch: each backpropagates its VAR class set within the budget."""
        return Chunked(self.chunk_size, "saliency maps", "settings.batch_size",
                       "lower settings.batch_size, or use a device with more memory")

    @cached_property
    def chunk_size(self) -> int:
        return self.target.rows(self.settings.batch_size, 1 + self.settings.attribution.var_top_k)

    def method(self, name: str | None = None) -> SaliencyMethod:
        a = self.settings.attribution
        name = name or a.saliency
        options = {"integrated_gradients": {"steps": a.ig_steps, "internal_batch_size": self.target.rows(512)},
                   "grad_cam": {"layer": a.grad_cam_layer}}
        with located(self.spec, self.setting(name)):
            return make_method(name, self.target.model, **options.get(name, {}))

    @staticmethod
    def setting(method: str) -> str:
        """The setting an error of `method` is about: Grad-CAM's layer, else the method itself."""
        return "grad_cam_layer" if method == "grad_cam" else "saliency"

    def __call__(self, predictions: Predictions, indices: torch.Tensor, method: str | None = None,
                 use_var: bool = False) -> SaliencyMaps:
        """Maps of the predicted class for each selected test image, VAR-refined if `use_var`."""
        a = self.settings.attribution
        method = method or a.saliency
        cache = self._maps.setdefault((method, use_var), {})
        missing = torch.tensor([i for i in indices.tolist() if i not in cache], dtype=torch.long)
        if len(missing):
            attributor = self.method(method)

            def run(part: slice) -> None:
                chunk = missing[part]
                images = self.target.test_images(chunk).to(self.target.device)
                predicted = predictions.predicted[chunk]
                classes = class_set(predictions.logits[chunk], predicted, a.var_top_k) if use_var else predicted[:, None]
                with located(self.spec, self.setting(method)):
                    maps = attributor.attribute(images, classes.to(self.target.device)).detach()
                maps = var(maps, 0, a.var_temperature, a.var_tau) if use_var else maps[:, 0]
                for i, m in zip(chunk.tolist(), maps.cpu()):
                    cache[i] = m
                bar.update(len(chunk))
            with progress_bar(len(missing), f"{method}{' + VAR' if use_var else ''} maps") as bar:
                self._chunks.map(len(missing), run)
        signed = torch.stack([cache[i] for i in indices.tolist()]) if len(indices) else torch.zeros(0)
        return SaliencyMaps(indices.clone(), signed, signed.abs().sum(1) if len(indices) else signed)
