"""Engine integration of the training-side attributions, on a real trained model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from auditor.engine import Engine
from auditor.spec import load_spec
from auditor.target import load_target
from conftest import needs_fashion

pytestmark = needs_fashion


def engine_for(fashion_audit, settings: str = "", train_limit: int = 1000, name: str = "audit_e.yaml") -> Engine:
    path = fashion_audit("rules: []\n", name=name, test_limit=200)
    text = path.read_text().replace("limit: 1000", f"limit: {train_limit}")
    if settings:
        text = text.replace("cache_dir:", f"{settings}, cache_dir:")
    path.write_text(text)
    return Engine(load_target(load_spec(path)))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_cache_is_reused_and_invalidated(fashion_audit, tmp_path):
    first = engine_for(fashion_audit, train_limit=300)
    matrix = first.index.store.matrix()
    assert first.stats["featurized"] == 300
    second = engine_for(fashion_audit, train_limit=300)
    assert torch.equal(second.index.store.matrix(), matrix)
    assert second.stats["featurized"] == 0, "second run featurized again"
    # a changed setting, dataset or weight each invalidate the cache
    projected = engine_for(fashion_audit, "attribution: {projection_dim: 512}", train_limit=300)
    projected.index.store
    assert projected.stats["featurized"] == 300
    for other in ("attribution: {projection: sparse}", "attribution: {precision: bfloat16}"):
        kind = engine_for(fashion_audit, other, train_limit=300)
        kind.index.store
        assert kind.stats["featurized"] == 300, other
    longer = engine_for(fashion_audit, train_limit=301)
    longer.index.store
    assert longer.stats["featurized"] == 301
    changed = engine_for(fashion_audit, train_limit=300)
    with torch.no_grad():
        changed.target.model[0].bias.add_(0.01)
    changed.index.store
    assert changed.stats["featurized"] == 300


def test_a_warm_rerun_finds_its_features_without_probing_the_gradients_again(fashion_audit, monkeypatch):
    first = engine_for(fashion_audit, train_limit=200)
    first.index.store
    assert len(list((first.index.cache_root / "probes").glob("*.json"))) == 1
    monkeypatch.setattr("auditor.engine.probe.gradient_shares",
                        lambda *a, **k: pytest.fail("probed again"))
    second = engine_for(fashion_audit, train_limit=200)
    assert torch.equal(second.index.store.matrix(), first.index.store.matrix())
    assert second.index.featurizer.projector.layout == first.index.featurizer.projector.layout


def test_influence_results_are_reused_by_a_rerun_and_keyed_by_what_they_depend_on(fashion_audit, caplog):
    engine = engine_for(fashion_audit, "attribution: {top_k: 4}", train_limit=300)
    first = engine.influence(torch.arange(10))
    assert engine.stats["scored"] == 10
    rerun = engine_for(fashion_audit, "attribution: {top_k: 4}", train_limit=300)
    again = rerun.influence(torch.arange(10))
    assert rerun.stats["scored"] == 0 and rerun.stats["featurized"] == 0, "re-run recomputed"
    for mine, theirs in ((again.proponents, first.proponents), (again.opponents, first.opponents)):
        assert torch.equal(mine.indices, theirs.indices) and torch.equal(mine.scores, theirs.scores)
    rerun.influence(torch.arange(5, 15))                     # a wider selection scores only the new examples
    assert rerun.stats["scored"] == 5
    for changed in ("attribution: {top_k: 4, test_label: true}", "attribution: {top_k: 5}"):
        other = engine_for(fashion_audit, changed, train_limit=300)
        other.influence(torch.arange(3))
        assert other.stats["scored"] == 3, "a changed test label or k reused stale results"
    damaged = engine_for(fashion_audit, "attribution: {top_k: 4}", train_limit=300)
    damaged.index.results.path.write_bytes(b"not a torch file")
    repaired = damaged.influence(torch.arange(10))
    assert "result cache" in caplog.text and damaged.stats["scored"] == 10
    assert torch.equal(repaired.proponents.indices, first.proponents.indices)


def test_truncated_shard_is_rebuilt(fashion_audit):
    engine = engine_for(fashion_audit, "attribution: {shard_size: 128}", train_limit=300)
    store = engine.index.store
    expected = store.matrix()
    path = store.shard_path(1)
    path.write_bytes(path.read_bytes()[:1000])
    rebuilt = engine_for(fashion_audit, "attribution: {shard_size: 128}", train_limit=300)
    again = rebuilt.index.store
    assert rebuilt.stats["featurized"] == 128
    assert torch.equal(again.matrix(), expected)


def test_unprojected_influence_equals_argsort_of_exact_scores(fashion_audit):
    engine = engine_for(fashion_audit, "attribution: {layers: ['10'], projection_dim: 4096}", train_limit=500)
    assert engine.index.featurizer.projector.in_dim == 2890  # head only: exact, no projection
    tests = torch.arange(0, 40)
    influence = engine.influence(tests)
    images, labels = engine.train_batch(torch.arange(500))
    train = F.normalize(engine.index.gradients.flat(images, labels), dim=1)
    test_images = engine.test_images(tests)
    query = F.normalize(engine.index.gradients.flat(test_images, engine.predictions.predicted[tests]), dim=1)
    full = query @ train.T
    assert torch.equal(influence.proponents.indices, full.argsort(dim=1, descending=True)[:, :5])
    assert torch.allclose(influence.opponents.scores, full.sort(dim=1).values[:, :5], atol=1e-5)


def test_projected_scores_keep_rank_order_at_default_dimension(fashion_audit):
    engine = engine_for(fashion_audit, train_limit=1000)
    assert engine.index.gradients.dim > engine.attribution.projection_dim  # projection is active
    tests = torch.arange(0, 30)
    projected = engine.index.test_features(tests) @ engine.index.store.matrix().T
    images, labels = engine.train_batch(torch.arange(1000))
    exact_train = F.normalize(engine.index.gradients.flat(images, labels), dim=1)
    exact = engine.index.exact_test_gradients(tests) @ exact_train.T
    rho = np.mean([spearman(projected[i], exact[i]) for i in range(len(tests))])
    print(f"mean Spearman rho projected vs exact: {rho:.4f}")
    assert rho >= 0.95, rho


def test_tfa_of_top_proponents_is_tfa_of_each_pair_with_its_training_images_seed(fashion_audit):
    """The engine's maps are `tfa` of (proponent j, test t): t's exact unit gradient for its
    predicted label, written here by plain autograd, and the training image's SmoothGrad seed."""
    from auditor.attribution.tfa import image_seed, tfa

    engine = engine_for(fashion_audit, "attribution: {smoothgrad_samples: 2, top_k: 3}", train_limit=300)
    results = engine.tfa(torch.tensor([3, 9]), k=2)
    assert [r.test_index for r in results] == [3, 9]
    proponents = engine.influence(torch.tensor([3, 9])).proponents
    model, names = engine.target.model, engine.index.parameter_names
    a = engine.attribution
    for row, result in enumerate(results):
        assert torch.equal(result.train_indices, proponents.indices[row, :2])
        assert result.maps.signed.shape == (2, 3, 28, 28)
        t = result.test_index
        image = engine.test_images(torch.tensor([t]))
        loss = F.cross_entropy(model(image), engine.predictions.predicted[t].view(1))
        params = dict(model.named_parameters())
        g = torch.cat([p.flatten() for p in torch.autograd.grad(loss, [params[n] for n in names])])
        g = (g / g.norm()).detach()
        for n, j in enumerate(result.train_indices.tolist()):
            x, y = engine.train_batch(torch.tensor([j]))
            want = tfa(model, names, x, y, g[None], a.smoothgrad_samples, a.smoothgrad_sigma,
                       pair_seeds=[image_seed(engine.settings.seed, j)]).signed[0]
            assert want.abs().max() > 0
            diff = float((result.maps.signed[n] - want).abs().max() / want.abs().max())
            assert diff < 1e-4, (t, j, diff)
        assert torch.allclose(result.maps.magnitude, result.maps.signed.abs().sum(1))


def test_tfa_maps_are_reused_by_a_rerun_and_do_not_depend_on_what_else_was_asked(fashion_audit):
    settings = "attribution: {smoothgrad_samples: 2, top_k: 2}"
    engine = engine_for(fashion_audit, settings, train_limit=300)
    both = engine.tfa(torch.tensor([3, 9]))
    assert engine.stats["tfa_pairs"] == 4
    rerun_engine = engine_for(fashion_audit, settings, train_limit=300)
    rerun = rerun_engine.tfa(torch.tensor([9]))
    assert rerun_engine.stats["tfa_pairs"] == 0, "a re-run recomputed stored maps"
    assert torch.equal(rerun[0].maps.signed, both[1].maps.signed)
    assert torch.equal(rerun[0].maps.magnitude, both[1].maps.magnitude)
    shutil.rmtree(engine_for(fashion_audit, settings, train_limit=300).tfa.results.path.parent)
    alone_engine = engine_for(fashion_audit, settings, train_limit=300)
    alone = alone_engine.tfa(torch.tensor([9]))
    assert alone_engine.stats["tfa_pairs"] == 2
    scale = both[1].maps.signed.abs().max()  # equal up to float rounding (other batch shapes)
    assert torch.allclose(alone[0].maps.signed, both[1].maps.signed, atol=1e-4 * scale), "depends on other pairs"
    changed = engine_for(fashion_audit, "attribution: {smoothgrad_samples: 3, top_k: 2}", train_limit=300)
    changed.tfa(torch.tensor([9]))
    assert changed.stats["tfa_pairs"] == 2, "changed SmoothGrad settings reused stale maps"
    sigma = engine_for(fashion_audit, "attribution: {smoothgrad_samples: 2, smoothgrad_sigma: 0.2, top_k: 2}",
                       train_limit=300)
    sigma.tfa(torch.tensor([9]))
    assert sigma.stats["tfa_pairs"] == 2, "a changed smoothgrad_sigma reused stale maps"


def test_saliency_and_var_are_computed_once_per_example(fashion_audit):
    engine = engine_for(fashion_audit, train_limit=100)
    first = engine.saliency(torch.tensor([0, 5]), "input_x_gradient", use_var=True)
    assert first.signed.shape == (2, 3, 28, 28) and first.magnitude.shape == (2, 28, 28)
    calls = []
    original = engine._saliency.method
    engine._saliency.method = lambda name=None: calls.append(name) or original(name)
    again = engine.saliency(torch.tensor([5, 0]), "input_x_gradient", use_var=True)
    assert calls == [] and torch.equal(again.signed[0], first.signed[1])
    plain = engine.saliency(torch.tensor([0]), "input_x_gradient")
    assert calls == ["input_x_gradient"]
    # VAR written out for example 0 from the plain maps of its class set (predicted first, then
    # the most probable others): the target's map times its softmax share over classes (of |A|
    # over the image's largest |A|), where that share beats 1/K by more than tau
    a = engine.attribution
    logits = engine.predictions.logits[0]
    predicted = int(logits.argmax())
    others = [c for c in logits.argsort(descending=True).tolist() if c != predicted][:a.var_top_k]
    image = engine.test_images(torch.tensor([0]))
    maps = torch.stack([engine.attribute(image, torch.tensor([c]), "input_x_gradient")[0]
                        for c in [predicted, *others]]).double()
    scaled = a.var_temperature * maps.abs() / maps.abs().max()
    shares = torch.exp(scaled) / torch.exp(scaled).sum(0)
    keep = shares[0] - 1.0 / len(maps) > a.var_tau
    expected = maps[0] * shares[0] * keep
    assert torch.allclose(maps[0].float(), plain.signed[0], atol=1e-6)
    assert torch.allclose(first.signed[0].double(), expected, atol=1e-6)
    assert 0 < keep.float().mean() < 1, "the check needs both kept and removed pixels"


def test_shards_written_separately_merge_into_the_same_store(fashion_audit, tmp_path):
    from auditor.attribution.feature_store import FeatureStore

    engine = engine_for(fashion_audit, train_limit=300)
    whole = engine.index.store.matrix()
    parts = FeatureStore(tmp_path / "ranks", "k", 300, engine.index.featurizer.dim, shard_size=128)
    assert parts.n_shards == 3
    engine.index.featurize(parts, shards=[1])
    assert parts.missing_shards() == [0, 2]           # "rank 1" wrote only its shard
    engine.index.featurize(parts, shards=[0, 2])
    assert parts.complete() and torch.allclose(parts.matrix(), whole, atol=1e-6)


def test_class_names_match_case_insensitively_unless_ambiguous():
    from auditor.engine.predictions import class_index
    from auditor.errors import SpecError
    from auditor.spec.binding import Where

    where = Where(Path("audit_x.yaml"), 7, "rules[0].on.class")
    classes = ("T-shirt/top", "Shirt", "Coat")
    assert class_index("shirt", classes, where) == 1 and class_index("SHIRT", classes, where) == 1
    assert class_index("Shirt", classes, where) == 1 and class_index(2, classes, where) == 2
    with pytest.raises(SpecError) as info:
        class_index("shrt", classes, where)
    assert str(info.value).startswith("audit_x.yaml:7") and "did you mean 'Shirt'" in str(info.value)
    with pytest.raises(SpecError):
        class_index("cat", ("Cat", "CAT"), where)                          # two classes fold to 'cat'


def test_representations_are_cached_and_a_changed_layer_or_weight_recomputes(fashion_audit):
    first = engine_for(fashion_audit, train_limit=300)
    mid, head_input = first.representations.layers()
    assert head_input == ("10", True) and not mid[1]                # the mid-depth map's output, the head's input
    values = first.representations.train(mid)
    assert first.stats["represented"] == 300 and values.shape[0] == 300
    again = engine_for(fashion_audit, train_limit=300)
    assert torch.equal(again.representations.train(mid), values) and again.stats["represented"] == 0
    other = engine_for(fashion_audit, train_limit=300)
    head = other.representations.train(("10", False))             # the head's output: another layer, recomputed
    assert other.stats["represented"] == 300 and head.shape == (300, 10)
    assert other.representations.train(head_input).shape == (300, 288) and other.stats["represented"] == 600
    changed = engine_for(fashion_audit, train_limit=300)
    with torch.no_grad():
        changed.target.model[0].bias.add_(0.01)
    changed.representations.train(mid)
    assert changed.stats["represented"] == 300
    votes = again.neighbours(5)
    assert votes.indices.shape == (300, 5) and torch.allclose(votes.votes.sum(1), torch.ones(300))
