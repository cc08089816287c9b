"""`settings.attribution.influence: kernel` (DESIGN.md §1.4): on a linear softmax model, whose
per-example gradients have a closed form, the stored features equal it and the proponents equal
a dense float64 solve of u_zᵀ(UᵀU + λI)⁻¹u_i, and its TFA maps equal the gradient in the training
image of that score; its settings are in the cache keys; and the rule that assumes Grad-Cos scores
refuses it at load."""

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


def kernel_audit(tmp_path, influence: str = "kernel", damping: float = 0.1, rules: str = "rules: []",
                 samples: int = 16) -> Engine:
    attribution = (f"{{influence: {influence}, damping: {damping}, projection_dim: 256, test_label: true, top_k: 5, "
                   f"smoothgrad_samples: {samples}}}")
    path = write(tmp_path / "audit_kernel.yaml", f"""
audit: kernel
model: {{factory: fakes:linear}}
data:
  train: {{factory: fakes:images, kwargs: {{n: {N}}}}}
  test: {{factory: fakes:images, kwargs: {{n: 12}}}}
settings:
  device: cpu
  cache_dir: {tmp_path / 'cache'}
  attribution: {attribution}
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


def test_kernel_tfa_is_the_gradient_of_the_kernel_score_in_the_training_image(tmp_path):
    """TFA under `influence: kernel` differentiates the score that ranked the pair: on the linear
    model (exact features) it equals ∇_x u_zᵀ(UᵀU + λI)⁻¹u(x) of the closed-form gradients, in
    float64, up to the per-test factor 1/‖(UᵀU + λI)⁻¹u_z‖ (no double backward in the reference)."""
    torch.manual_seed(0)
    engine = kernel_audit(tmp_path, samples=0)
    model = engine.target.model
    train_images, train_labels = engine.train_batch(torch.arange(N))
    u = closed_form(model, train_images, train_labels)
    gram = u.T @ u
    gram += 0.1 * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    tests = torch.arange(3)
    q = closed_form(model, engine.target.test_images(tests), engine.predictions.labels[tests])
    solved = torch.linalg.solve(gram, q.T).T                                        # (3, P)
    pairs = [(t, int(engine.influence(tests).proponents.indices[t, 0])) for t in tests.tolist()]
    found = engine.tfa_pairs(pairs)
    for (t, j), signed in zip(pairs, found):
        x = train_images[j:j + 1].double().requires_grad_(True)
        score = closed_form(model, x, train_labels[j:j + 1])[0] @ solved[t]
        assert abs(float(score.detach()) - float(engine.influence(tests).proponents.scores[t, 0])) < 1e-4
        reference = torch.autograd.grad(score, x)[0][0] / solved[t].norm()
        assert torch.allclose(signed.double(), reference, rtol=1e-3, atol=1e-6 * float(reference.abs().max()))


def test_kernel_tfa_recomputes_when_the_influence_or_its_damping_changes(tmp_path):
    tests = torch.arange(2)
    first = kernel_audit(tmp_path, samples=0)
    pairs = [(t, int(first.influence(tests).proponents.indices[t, 0])) for t in tests.tolist()]
    maps = first.tfa_pairs(pairs)
    again = kernel_audit(tmp_path, samples=0)
    assert torch.equal(again.tfa_pairs(pairs), maps) and again.stats["tfa_pairs"] == 0
    damped = kernel_audit(tmp_path, damping=10.0, samples=0)
    assert not torch.allclose(damped.tfa_pairs(pairs), maps) and damped.stats["tfa_pairs"] == 2
    plain = kernel_audit(tmp_path, influence="grad_cos", samples=0)
    assert not torch.allclose(plain.tfa_pairs(pairs), maps) and plain.stats["tfa_pairs"] == 2


def test_tfa_maps_recompute_when_their_formula_changes(tmp_path, monkeypatch):
    from auditor.engine import keys

    tests = torch.arange(2)
    first = kernel_audit(tmp_path, influence="grad_cos", samples=0)
    pairs = [(t, int(first.influence(tests).proponents.indices[t, 0])) for t in tests.tolist()]
    first.tfa_pairs(pairs)
    monkeypatch.setattr(keys, "TFA_FORMULA", keys.TFA_FORMULA + 1)
    again = kernel_audit(tmp_path, influence="grad_cos", samples=0)
    again.tfa_pairs(pairs)
    assert again.stats["tfa_pairs"] == 2
