"""TFA maps (DESIGN.md §1.2) of test examples on their top-k proponents: each (test, train)
pair computed once, kept in memory and on disk across runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import torch

from auditor.attribution.result_store import ResultStore
from auditor.attribution.memory import rows_within
from auditor.progress import bar as progress_bar
from auditor.attribution.tfa import TfaMaps, image_seed, row_bytes, tfa
from auditor.engine.keys import key_of
from auditor.engine.located import located
from auditor.engine.training_index import TrainingIndex
from auditor.errors import AuditError


@dataclass(frozen=True)
class TfaResult:
    """TFA of one test example on its top-k proponents: `train_indices (k,)`, `scores (k,)`, maps."""

    test_index: int
    train_indices: torch.Tensor
    scores: torch.Tensor
    maps: TfaMaps


class TfaCache:
    """Signed TFA maps `(C, H, W)` by (test, train) pair, for the proponents the index finds."""

    def __init__(self, index: TrainingIndex, stats: Counter[str]) -> None:
        self.index, self.stats = index, stats
        self.target, self.spec = index.target, index.spec
        self.settings = self.spec.settings

    @cached_property
    def results(self) -> ResultStore:
        """Maps of the pairs computed by earlier runs with the same key (on disk)."""
        meta = self.index.keys.tfa
        with located(self.spec, "cache_dir", section="settings"):
            return ResultStore(self.index.cache_root, "tfa", key_of(meta), meta)

    @cached_property
    def row_cost(self) -> int:
        """Bytes one TFA row holds on this model at this input size (one probe double backward)."""
        image, label = self.target.train_batch(torch.arange(1))
        return row_bytes(self.target.model, self.index.parameter_names, image[0].to(self.target.device),
                         label[0].to(self.target.device))

    @cached_property
    def _maps(self) -> dict[tuple[int, int], tuple[torch.Tensor]]:
        return self.results.load()

    def __call__(self, indices: torch.Tensor, k: int | None = None) -> list[TfaResult]:
        """TFA maps of each test example on its top-`k` proponents (SmoothGrad per settings)."""
        a = self.settings.attribution
        k = a.top_k if k is None else k
        if k > a.top_k:
            raise AuditError(f"TFA on k={k} proponents, but settings.attribution.top_k={a.top_k}",
                             field="k", fix=f"lower k or raise settings.attribution.top_k to {k}")
        influence = self.index.influence(indices)
        pairs = [(int(t), int(j)) for row, t in enumerate(indices.tolist())
                 for j in influence.proponents.indices[row, :k].tolist()]
        todo = [pair for pair in pairs if pair not in self._maps]
        if todo:
            self._compute(todo)
        results = []
        for row, t in enumerate(indices.tolist()):
            train = influence.proponents.indices[row, :k]
            signed = torch.stack([self._maps[(t, int(j))][0] for j in train.tolist()])
            results.append(TfaResult(t, train, influence.proponents.scores[row, :k],
                                     TfaMaps(signed, signed.abs().sum(1))))
        return results

    def pairs(self, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """Signed maps `(p, C, H, W)` of any (test, train) pairs, e.g. a suspect and an error it drives."""
        todo = [pair for pair in dict.fromkeys(pairs) if pair not in self._maps]
        if todo:
            self._compute(todo)
        return torch.stack([self._maps[pair][0] for pair in pairs]) if pairs else torch.zeros(0)

    def _compute(self, todo: list[tuple[int, int]]) -> None:
        """TFA maps of `todo`, a few test examples at a time: their parameter-space directions
        (`TrainingIndex.tfa_directions`) fit the memory budget, and each group's maps are saved
        before the next group starts."""
        tests = sorted({t for t, _ in todo})
        per_group = rows_within(4 * self.index.gradients.dim, len(tests))
        with progress_bar(len(todo), "TFA maps", unit="pair") as bar:
            for start in range(0, len(tests), per_group):
                group = set(tests[start:start + per_group])
                pairs = [pair for pair in todo if pair[0] in group]
                self._compute_group(pairs)
                bar.update(len(pairs))

    def _compute_group(self, pairs: list[tuple[int, int]]) -> None:
        """The maps of `pairs` (of a few test examples), computed and saved."""
        a, device = self.settings.attribution, self.target.device
        tests = sorted({t for t, _ in pairs})
        grads = self.index.tfa_directions(torch.tensor(tests))
        position = {t: r for r, t in enumerate(tests)}
        images, labels = self.target.train_batch(torch.tensor([j for _, j in pairs]))
        maps = tfa(self.target.model, self.index.parameter_names, images.to(device), labels.to(device),
                   grads[[position[t] for t, _ in pairs]], a.smoothgrad_samples, a.smoothgrad_sigma,
                   pair_seeds=[image_seed(self.settings.seed, j) for _, j in pairs], cost=self.row_cost)
        for n, pair in enumerate(pairs):
            self._maps[pair] = (maps.signed[n].cpu(),)
        self.stats["tfa_pairs"] += len(pairs)
        self.results.save(self._maps)
