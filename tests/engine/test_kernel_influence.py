"""`settings.attribution.influence: kernel` (DESIGN.md §1.4): on a linear softmax model, whose
per-example gradients have a closed form, the stored features equal it and the proponents equal
a dense float64 solve of u_zᵀ(UᵀU + λI)⁻¹u_i; its settings are in the cache key; and the rule
that assumes Grad-Cos scores refuses it at load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from auditor.engine import Engine
from auditor.errors import SpecError
from auditor.spec import load_spec
from auditor.target import load_target
from conftest import write

N = 40


def kernel_audit(tmp_path, influence: str = "kernel", damping: float = 0.1, rules: str = "rules: []") -> Engine:
    path = write(tmp_path / "audit_kernel.yaml", f"""
audit: kernel
model: {{factory: fakes:linear}}
data:
  train: {{factory: fakes:images, kwargs: {{n: {N}}}}}
  test: {{factory: fakes:images, kwargs: {{n: 12}}}}
settings:
  device: cpu
  cache_dir: {tmp_path / 'cache'}
  attribution: {{influence: {influence}, damping: {damping}, projection_dim: 256, test_label: true, top_k: 5}}
{rules}
""")
    return Engine(load_target(load_spec(path)))


def closed_form(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unit-norm cross-entropy gradients of a linear softmax model: ((p − e_y) xᵀ, p − e_y) per example."""
    linear = model[1]
    x = images.flatten(1).double()
    p = (x @ linear.weight.double().T + linear.bias.double()).softmax(1)
    delta = p - F.one_hot(labels, p.shape[1]).double()
    return F.normalize(torch.cat([(delta[:, :, None] * x[:, None, :]).flatten(1), delta], 1), dim=1)


def test_kernel_proponents_equal_a_dense_solve_on_the_closed_form_gradients(tmp_path):
    torch.manual_seed(0)
    engine = kernel_audit(tmp_path)
    train_images, train_labels = engine.train_batch(torch.arange(N))
    u = closed_form(engine.target.model, train_images, train_labels)
    stored = engine.index.store.matrix().double()
    assert stored.shape == u.shape and torch.allclose(stored, u, atol=1e-5)       # exact features (P ≤ d)
    tests = torch.arange(12)
    q = closed_form(engine.target.model, engine.target.test_images(tests), engine.predictions.labels[tests])
    gram = u.T @ u
    gram += 0.1 * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    reference = q @ torch.linalg.solve(gram, u.T)                                   # (12, N) dense float64
    found = engine.influence(tests)
    top = reference.topk(5, dim=1)
    assert torch.equal(found.proponents.indices, top.indices)
    assert torch.allclose(found.proponents.scores.double(), top.values, rtol=1e-3, atol=1e-4)
    bottom = (-reference).topk(5, dim=1)
    assert torch.equal(found.opponents.indices, bottom.indices)


def test_changing_the_influence_or_its_damping_recomputes_and_the_same_settings_reuse(tmp_path):
    tests = torch.arange(12)
    first = kernel_audit(tmp_path)
    scores = first.influence(tests).proponents.scores
    assert first.stats["scored"] == 12
    again = kernel_audit(tmp_path)
    assert torch.equal(again.influence(tests).proponents.scores, scores) and again.stats["scored"] == 0
    damped = kernel_audit(tmp_path, damping=10.0)
    assert not torch.allclose(damped.influence(tests).proponents.scores, scores) and damped.stats["scored"] == 12
    plain = kernel_audit(tmp_path, influence="grad_cos")
    plain.influence(tests)
    assert plain.stats["scored"] == 12 and float(plain.influence(tests).proponents.scores.max()) <= 1 + 1e-5


def test_single_image_errors_refuses_kernel_scores_at_load(tmp_path):
    with pytest.raises(SpecError) as info:
        kernel_audit(tmp_path, rules="rules:\n  - {name: one, check: single_image_errors}")
    message = str(info.value)
    assert "audit_kernel.yaml:11" in message and "Grad-Cos" in message and "settings.attribution.influence" in message
