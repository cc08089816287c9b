"""Label errors from one trained model: which signal ranks planted relabels best, and what the
shipped `no-mislabel-suspects` rule lists, against the loss a user already has and cleanlab.

Regimes (each: planted errors of two kinds, a systematic class swap and random relabels):
- part_a: the efficacy benchmark's 3-epoch sample CNN on 20,000 Fashion-MNIST images (with its
  red square on half the Shirts; 30 Sneakers → Sandal, 30 random relabels): under-fit;
- memorising: a width-64 CNN trained 30 epochs on 5,000 images until it fits every label,
  relabels included (30 swapped, 30 random);
- second_dataset: scikit-learn's digits (1,400 training images, 32×32) on a stock torchvision
  ResNet-18 trained 40 epochs (20 ones → 7, 20 random);
- held_out: added after the two-depth vote was chosen on the three above, to check it on what
  it was not chosen on: a small ViT (torchvision `VisionTransformer`, 4 blocks of width 64) on
  the first 3,000 Fashion-MNIST images, seed 1, 30 epochs, 20 Coats → Pullover
  and 20 random relabels.
- held_out_mobilenet: added after the rule shipped, nothing tuned on it: a stock torchvision
  MobileNetV3-small (hardswish, squeeze-excitation, batch norm) at 64 px, the architecture the issue
  found listing 1 of 40 memorised relabels, on 3,000 images, seed 2, 30 epochs, 20 Sneakers → Sandal
  and 20 random relabels.
Rows: `ours` (the shipped rule: its ranking and what it lists), `ours_without_class_z` (what it
lists with the absolute share cut alone, `max_own_z: null`: the rule before the class-relative cut;
the same ranking), `loss`, candidates (`neighbours_mid_depth`: the vote of the mid-depth feature map
alone, the rule before the two-depth vote; `neighbours_gradient`: the same vote among Grad-Cos
neighbours of the stored gradient features; `neighbours_head_input`: the same vote in the input of
the classifier head alone; `self_influence_loss` / `self_influence_margin`: φᵀ(ΦᵀΦ + λI)⁻¹φ on exact
last-layer gradient features of the loss / the margin log p − log(1 − p), λ = 1e-3 · mean diagonal,
dense float64; `self_influence_stored`: the same on the audit's stored features (all layers,
projected, unit-norm) under the shipped kernel (`influence: kernel`, damping 1);
`opponents_own_class`: how much an image opposes the correct test predictions of its own label,
minus its mean Grad-Cos with them; `rank_average`: mean rank of loss and ours; `trust_score`,
`vote_cleaned`, `vote_and_probability`: tried later to lift ours' recall at 2×, `later_candidates`;
`gaussian_head_input`, `gaussian_two_depths`: the given label's posterior under class-conditional
Gaussians of the same representations, `gaussian_candidates`; `cleanlab_on_vote`, `datalab_head_input`:
cleanlab's confident learning on neighbour votes instead of the model's probabilities, ours' vote and
Datalab's own recipe from features, `neighbour_probabilities`),
`cleanlab_in_sample` (find_label_issues on the model's own probabilities), `cleanlab_cv` (on 5-fold
cross-validated probabilities: 5 models retrained, their time counted), and with `--peers`
`trak_self` / `kronfluence_self` (TRAK's and Kronfluence EK-FAC's self-influence of each training
image on the same trained model, each in a process of its own: benchmarks/self_influence_peers.py).
Metrics: `auc` (planted vs the rest), `recall_at_2x` (planted among the first 2 × planted),
`recall_at_1pct`, and for the rows that list: `recall_listed`, `precision_listed`, `listed`;
`seconds`. Each regime's clean twin (same data, no relabels) is audited too: `clean_listed` and the
share (and the share the absolute cut alone lists).

    python -m benchmarks.label_errors [--regimes part_a memorising second_dataset] [--cv REGIME ...] [--work DIR]
    python -m benchmarks.label_errors --regimes ... --peers trak kronfluence --only-peers --work DIR   # add peer rows
    python -m benchmarks.label_errors --look memorising --work DIR   # the clean twin's first suspects, to judge by eye
    python -m benchmarks.label_errors --regimes memorising --seeds 1 2 --cv --out label_errors_seeds.json   # other seeds
    python -m benchmarks.label_errors --look-demo reports/fashion_shortcut/results.json   # after make demo
    python -m benchmarks.label_errors --gaps label_errors_neighbour_cleanlab.json label_errors_seeds.json   # robustness
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from benchmarks.common import RESULTS, environment, in_fresh_process, strongest_score, write_json
from benchmarks.efficacy import auc

SWAP = {"from": "Sneaker", "to": "Sandal", "count": 30}
SQUARE = {"class": "Shirt", "train_share": 0.5, "test_share": 0.1, "size": 4, "colour": [255, 0, 0],
          "position": [1, 1]}
REGIMES = {
    "part_a": {"data": "fashion", "width": 16, "recipe": {"n_train": 20000, "n_test": 2000, "epochs": 3, "seed": 0,
                                                          "square": SQUARE, "mislabel": SWAP, "relabel": {"count": 30}}},
    "memorising": {"data": "fashion", "width": 64, "recipe": {"n_train": 5000, "n_test": 2000, "epochs": 30, "seed": 0,
                                                              "mislabel": SWAP, "relabel": {"count": 30}}},
    "second_dataset": {"data": "digits", "recipe": {"epochs": 40, "seed": 0, "mislabel": {"from": 1, "to": 7, "count": 20},
                                                    "relabel": {"count": 20}}},
    "held_out": {"data": "fashion", "model": "small_vit",
                 "recipe": {"n_train": 3000, "n_test": 2000, "epochs": 30, "seed": 1,
                            "mislabel": {"from": "Coat", "to": "Pullover", "count": 20}, "relabel": {"count": 20}}},
    "held_out_mobilenet": {"data": "fashion", "model": "mobilenet_v3_small",
                           "recipe": {"n_train": 3000, "n_test": 2000, "epochs": 30, "seed": 2,
                                      "mislabel": {"from": "Sneaker", "to": "Sandal", "count": 20},
                                      "relabel": {"count": 20}}},
}
RULE = "no-mislabel-suspects"
FOLDS = 5
SELF_INFLUENCE_DAMPING = 1e-3


def data_module(regime: dict):
    import sample_audits.digits as digits
    import sample_audits.fashion as fashion

    return digits if regime["data"] == "digits" else fashion


def build_model(regime: dict) -> torch.nn.Module:
    from sample_audits import models
    from sample_audits.digits import resnet18

    if regime["data"] == "digits":
        return resnet18()
    return getattr(models, regime["model"])() if "model" in regime else models.small_cnn(width=regime["width"])


def factory(regime: dict) -> dict:
    if regime["data"] == "digits":
        return {"factory": "sample_audits.digits:resnet18"}
    if "model" in regime:
        return {"factory": f"sample_audits.models:{regime['model']}"}
    return {"factory": "sample_audits.models:small_cnn", "kwargs": {"width": regime["width"]}}


def trained(regime: dict, recipe: dict, folder: Path, subset: np.ndarray | None = None, tag: str = "") -> Path:
    """Train (or reuse) the regime's model on the recipe's training set (or `subset` of it)."""
    from benchmarks.efficacy import train_model
    from sample_audits.train import train

    if regime["data"] == "fashion" and subset is None and "model" not in regime:
        return train_model(recipe, folder, regime["width"])
    named = [regime["model"]] if "model" in regime else []      # (older regimes' digests unchanged)
    digest = hashlib.sha256(json.dumps([regime["data"], regime.get("width"), recipe, tag, *named], sort_keys=True)
                            .encode()).hexdigest()[:12]
    path = folder / f"model-{digest}.pt"
    if not path.exists():
        dataset = data_module(regime).train_set(recipe=recipe)
        if subset is not None:
            dataset = type(dataset)(dataset.images[subset], dataset.targets[subset], dataset.classes)
        torch.manual_seed(recipe["seed"])
        start = time.perf_counter()
        model = train(build_model(regime), dataset, recipe["epochs"], recipe["seed"])
        path.with_suffix(".seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
        torch.save(model.state_dict(), path)
    return path


def training_seconds(path: Path) -> float | None:
    """How long the model at `path` took to train, when it was trained (recorded beside it)."""
    record = path.with_suffix(".seconds")
    return float(record.read_text()) if record.is_file() else None


def session_for(regime: dict, recipe: dict, checkpoint: Path, folder: Path):
    """An audit of the trained model with the shipped label_noise pack (the mislabel rule's
    explanations off: the benchmark reads its ranking and its list). `ours`' seconds are the
    pack's: they include `no-single-image-errors` (featurizing and scoring), so they overstate the
    mislabel rule's own time."""
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    module = f"sample_audits.{regime['data']}"
    doc = {"audit": "label-errors", "model": {**factory(regime), "checkpoint": str(checkpoint)},
           "data": {"train": {"factory": f"{module}:train_set", "kwargs": {"recipe": recipe}},
                    "test": {"factory": f"{module}:test_set", "kwargs": {"recipe": recipe}}},
           "settings": {"device": "auto", "cache_dir": str(folder / "cache")},
           "include": [{"pack": "label_noise", "override": {RULE: {"explain": 0}}}]}
    path = folder / f"audit-{checkpoint.stem}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return AuditSession(load_spec(path))


def ranking_metrics(scores: np.ndarray, positive: np.ndarray) -> dict:
    order = np.argsort(-scores, kind="stable")
    planted = int(positive.sum())
    return {"auc": round(auc(positive, scores), 4),
            "recall_at_2x": round(float(positive[order[:2 * planted]].sum()) / planted, 4),
            "recall_at_1pct": round(float(positive[order[:max(1, len(scores) // 100)]].sum()) / planted, 4)}


def listed_metrics(listed: np.ndarray, positive: np.ndarray) -> dict:
    hits = int(positive[listed].sum())
    return {"listed": int(len(listed)), "recall_listed": round(hits / int(positive.sum()), 4),
            "precision_listed": round(hits / len(listed), 4) if len(listed) else None}


def self_influence(features: torch.Tensor, damping: float = SELF_INFLUENCE_DAMPING) -> torch.Tensor:
    """`φ_iᵀ (ΦᵀΦ + λI)⁻¹ φ_i` for every row of `features (n, d)`, λ = damping · mean diagonal (float64)."""
    phi = features.double()
    kernel = phi.T @ phi
    kernel += damping * kernel.diagonal().mean() * torch.eye(len(kernel), dtype=phi.dtype)
    return (phi * torch.linalg.solve(kernel, phi.T).T).sum(1).float()


def head_gradients(hidden: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact last-layer per-example gradients `(n, C·(D+1))` of the loss and of the margin."""
    probs = logits.softmax(1)
    own = probs.gather(1, labels[:, None])
    delta = probs - F.one_hot(labels, probs.shape[1]).float()
    loss_grad = (delta[:, :, None] * torch.cat([hidden, torch.ones(len(hidden), 1)], 1)[:, None, :]).flatten(1)
    return loss_grad, loss_grad / (1 - own).clamp_min(1e-12)


def head_input(model: torch.nn.Module, images: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n, D)` input of the model's last `nn.Linear` and `(n, C)` logits, for every image."""
    from auditor.attribution.neighbours import RecordRepresentation, last_linear

    head = model.get_submodule(last_linear(model))
    hidden, logits = [], []
    with RecordRepresentation(head, use_input=True) as record, torch.no_grad():
        for i in range(0, len(images), 512):
            logits.append(model(images[i:i + 512].to(device)).float().cpu())
            hidden.append(record.take())
    return torch.cat(hidden), torch.cat(logits)


def cleanlab_rows(labels: np.ndarray, probs: np.ndarray, positive: np.ndarray) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    start = time.perf_counter()
    quality = get_label_quality_scores(labels, probs)
    issues = find_label_issues(labels, probs)
    return {**ranking_metrics(-quality, positive), **listed_metrics(np.flatnonzero(issues), positive),
            "seconds": round(time.perf_counter() - start, 2)}


def cross_validated_probs(regime: dict, recipe: dict, folder: Path, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities from `FOLDS` models, each trained on the other folds; and their
    seconds: training each (as recorded when it was trained, in this run or an earlier one) and
    predicting. NaN when a fold model's training time was not recorded."""
    from sklearn.model_selection import StratifiedKFold

    from auditor.data import gather

    dataset = data_module(regime).train_set(recipe=recipe)
    probs = np.zeros((len(labels), int(labels.max()) + 1), dtype=np.float32)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=recipe["seed"]).split(np.zeros(len(labels)), labels)
    seconds = 0.0
    for fold, (keep, held) in enumerate(folds):
        path = trained(regime, recipe, folder, keep, tag=f"fold{fold}")
        recorded = training_seconds(path)
        seconds += float("nan") if recorded is None else recorded
        start = time.perf_counter()
        model = build_model(regime)
        model.load_state_dict(torch.load(path, weights_only=True))
        images, _ = gather(dataset, torch.as_tensor(held))
        with torch.no_grad():
            probs[held] = torch.cat([model.eval()(images[i:i + 512]).softmax(1) for i in range(0, len(held), 512)]).numpy()
        seconds += time.perf_counter() - start
    return probs, seconds


def measure(name: str, regime: dict, folder: Path, cv: bool) -> dict:
    recipe = regime["recipe"]
    planted = data_module(regime).defects(recipe)
    swap, random = list(planted["relabelled_train"]), [int(j) for j in planted["random_relabels"]]
    checkpoint = trained(regime, recipe, folder)
    train_seconds = training_seconds(checkpoint)        # None: trained before its time was recorded
    session = session_for(regime, recipe, checkpoint, folder)
    start = time.perf_counter()
    session.run_all()
    rule_seconds = time.perf_counter() - start
    engine, outcome = session.engine, session.outcomes[RULE]
    labels = engine.train_labels
    n = len(labels)
    positive = _mask(n, swap + random)
    rule = next(r for r in session.spec.rules if r.name == RULE).params
    neighbours = engine.neighbours(rule.neighbours, rule.layer)
    own = neighbours.own_share(labels)
    support = neighbours.suggested(labels)[1]
    losses = engine.train_losses
    ours = strongest_score(neighbours, labels, losses)
    listed = np.array([f.index for f in outcome.failures], dtype=int)
    rows = {"ours": {**ranking_metrics(ours, positive), **listed_metrics(listed, positive),
                     "seconds": round(rule_seconds, 2)},
            "ours_without_class_z": {**ranking_metrics(ours, positive),
                                     **listed_metrics(share_cut_alone(engine, rule), positive), "seconds": 0.0},
            "loss": {**ranking_metrics(losses.numpy(), positive), "seconds": 0.0}}
    layers = engine.representations.layers(rule.layer)
    mid = [found for found in layers if not found[1]]
    if mid and len(layers) > 1:                                          # the mid-depth map's vote alone
        alone = engine.neighbours(rule.neighbours, mid[0][0])
        rows["neighbours_mid_depth"] = {**ranking_metrics(strongest_score(alone, labels, losses), positive),
                                        "seconds": 0.0}
    start = time.perf_counter()
    images = engine.train_batch(torch.arange(n))[0]
    hidden, logits = head_input(engine.target.model, images, engine.device)
    head_seconds = time.perf_counter() - start
    from auditor.attribution.neighbours import nearest_neighbours
    votes = nearest_neighbours(hidden, labels, rule.neighbours, len(engine.classes))
    rows["neighbours_head_input"] = {**ranking_metrics(-votes.own_share(labels).numpy() + 1e-6 * losses.numpy(),
                                                       positive), "seconds": round(head_seconds, 2)}
    loss_grad, margin_grad = head_gradients(hidden, logits, labels)
    for row, features in (("self_influence_loss", loss_grad), ("self_influence_margin", margin_grad)):
        start = time.perf_counter()
        rows[row] = {**ranking_metrics(self_influence(features).numpy(), positive),
                     "seconds": round(head_seconds + time.perf_counter() - start, 2)}
    start = time.perf_counter()
    gradient = torch.cat([block for _, block in engine.index.store.chunks()])
    votes = nearest_neighbours(gradient, labels, rule.neighbours, len(engine.classes))
    rows["neighbours_gradient"] = {**ranking_metrics(-votes.own_share(labels).numpy() + 1e-6 * losses.numpy(), positive),
                                   "seconds": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    leverage = stored_self_influence(engine)
    rows["self_influence_stored"] = {**ranking_metrics(leverage.numpy(), positive),
                                     "seconds": round(time.perf_counter() - start, 2)}
    rows["opponents_own_class"] = {**ranking_metrics(own_class_opposition(engine, gradient).numpy(), positive),
                                   "seconds": 0.0}
    rank = lambda x: np.argsort(np.argsort(x, kind="stable"), kind="stable")  # noqa: E731
    rows["rank_average"] = {**ranking_metrics((rank(ours) + rank(losses.numpy())) / 2.0, positive), "seconds": 0.0}
    for row, score in vote_scores(own.numpy(), support.numpy(), labels.numpy()).items():
        rows[row] = {**ranking_metrics(score + 1e-6 * losses.numpy(), positive), "seconds": 0.0}
    for row, score in later_candidates(engine, rule, neighbours, logits).items():
        rows[row] = {**ranking_metrics(score, positive), "seconds": 0.0}
    start = time.perf_counter()
    for row, score in gaussian_candidates(engine, rule).items():
        rows[row] = {**ranking_metrics(score, positive), "seconds": round(time.perf_counter() - start, 2)}
    y, probs = labels.numpy(), logits.softmax(1).numpy()
    rows["cleanlab_in_sample"] = cleanlab_rows(y, probs, positive)
    for row, (neighbour_probs, seconds) in neighbour_probabilities(neighbours, hidden, labels, len(engine.classes)).items():
        rows[row] = cleanlab_rows(y, neighbour_probs, positive)
        rows[row]["seconds"] = round(rows[row]["seconds"] + seconds, 2)
    if cv:
        cv_probs, cv_seconds = cross_validated_probs(regime, recipe, folder, y)
        rows["cleanlab_cv"] = cleanlab_rows(y, cv_probs, positive)
        total = rows["cleanlab_cv"]["seconds"] + cv_seconds          # NaN: a fold's training time was not recorded
        rows["cleanlab_cv"]["seconds"] = None if math.isnan(total) else round(total, 1)
    fitted = int((logits.argmax(1)[torch.as_tensor(positive)] == labels[torch.as_tensor(positive)]).sum())
    out = {"n_train": n, "planted": {"swap": len(swap), "random": len(random)},
           "train_accuracy": round(float((logits.argmax(1) == labels).float().mean()), 4),
           "planted_fitted": fitted, "train_seconds": train_seconds, "rows": rows,
           "by_kind": {kind: ranking_metrics(ours, mask) | {"loss_auc": round(auc(mask, losses.numpy()), 4),
                                                            "recall_listed": listed_metrics(listed, mask)["recall_listed"]}
                       for kind, mask in (("swap", _mask(n, swap)), ("random", _mask(n, random)))},
           "suggested_correct": suggested_correct(regime, recipe, outcome, set(swap + random)),
           "class_z": class_z_sweep(engine, rule, swap)}
    out |= clean_twin(regime, folder)
    return out


Z_SWEEP = (-3.0, -3.5, -4.0, -4.5, -5.0)


def class_z_sweep(engine, rule, swap: list[int]) -> dict:
    """The planted swap's within-class z-scores (the lowest over the depths) and how many of it,
    and of the training set, the rule lists at other `max_own_z` cuts: is the default on an edge?"""
    from auditor.checks.mislabel_suspects import contradicted

    neighbours = engine.neighbours(rule.neighbours, rule.layer)
    labels = engine.train_labels
    z = contradicted(neighbours, labels, rule)[1][swap]
    listed = {str(t): contradicted(neighbours, labels, dataclasses.replace(rule, max_own_z=t))[0] for t in Z_SWEEP}
    return {"swap_z_range": [round(float(z.min()), 2), round(float(z.max()), 2)] if len(swap) else None,
            "swap_listed": {t: int(found[swap].sum()) for t, found in listed.items()},
            "listed": {t: int(found.sum()) for t, found in listed.items()}}


def share_cut_alone(engine, rule) -> np.ndarray:
    """What the rule lists with its absolute share cut alone (`max_own_z: null`, the rule before
    the class-relative cut)."""
    from auditor.checks.mislabel_suspects import contradicted

    neighbours = engine.neighbours(rule.neighbours, rule.layer)
    found = contradicted(neighbours, engine.train_labels, dataclasses.replace(rule, max_own_z=None))[0]
    return found.nonzero().flatten().numpy()


def vote_scores(own: np.ndarray, support: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate rankings from the same vote as `ours` (higher = more suspect): `vote_sum`
    −own + ½·support (one continuous score, not own share first); `vote_class_relative` the own
    share against its class's median own share (a Shirt among T-shirts is normal, a "Sandal"
    among sneakers is not) + ½·support."""
    median = np.zeros_like(own)
    for c in np.unique(labels):
        median[labels == c] = np.median(own[labels == c])
    return {"vote_sum": -own + 0.5 * support, "vote_class_relative": -(own - median) + 0.5 * support}


def stored_self_influence(engine) -> torch.Tensor:
    """`(n,)` u_iᵀ(UᵀU + λI)⁻¹u_i on the audit's own stored features (all layers, projected,
    unit-norm) with the shipped kernel's factor and damping (`influence: kernel`): DESIGN.md
    §1.4's self-influence as the engine would compute it (the rows above use exact last-layer
    gradients with their norms)."""
    from auditor.attribution.influence import kernel_factor

    store = engine.index.store
    factor = kernel_factor(store.chunks(), store.dim, engine.settings.attribution.damping)
    parts = [(block.double() * torch.cholesky_solve(block.double().T, factor).T).sum(1) for _, block in store.chunks()]
    return torch.cat(parts).float()


def own_class_opposition(engine, gradient: torch.Tensor) -> torch.Tensor:
    """`(n,)` how much each training image opposes the correct test predictions of its own label:
    minus its mean Grad-Cos with them, u_i · mean(u_z) over those z (a Sneaker labelled Sandal
    pushes the Sandal predictions the wrong way). Higher = more suspect."""
    p = engine.predictions
    correct = p.correct.nonzero().flatten()
    features = engine.index.test_features(correct).cpu()
    classes = len(engine.classes)
    labels = p.labels[correct]
    means = torch.zeros(classes, features.shape[1]).index_add_(0, labels, features)
    means /= torch.bincount(labels, minlength=classes).clamp_min(1)[:, None]
    return -(gradient.cpu() * means[engine.train_labels]).sum(1)


def later_candidates(engine, rule, neighbours, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Three candidates tried after the two-depth vote shipped, to lift its recall at 2×
    (higher = more suspect): `trust_score`, the class-conditional neighbour similarity of
    Jiang et al. 2018 (mean cosine to the `neighbours` nearest images of the best other class
    minus that of its own class, averaged over the two depths: a relabelled image deep inside
    another class against a borderline one); `vote_cleaned`, the vote again after one round in
    which the neighbours the rule lists vote with their suggested label (a swapped cluster
    no longer vouches for itself); `vote_and_probability`, −(own share + own-label
    probability)/2 (the model's probability counts where it is informative, on under-fit
    models, and is ~1 for every image of a fitted one)."""
    from auditor.checks.mislabel_suspects import contradicted

    labels, losses, classes = engine.train_labels, engine.train_losses, len(engine.classes)
    trust = []
    for found in engine.representations.layers(rule.layer):
        similar = class_similarity(engine.representations.train(found), labels, rule.neighbours, classes)
        own = similar.gather(1, labels[:, None])[:, 0]
        trust.append(similar.scatter(1, labels[:, None], -float("inf")).amax(1) - own)
    cleaned = cleaned_vote(neighbours, labels, contradicted(neighbours, labels, rule)[0], classes)
    probability = logits.softmax(1).gather(1, labels[:, None])[:, 0]
    return {"trust_score": torch.stack(trust).mean(0).numpy(),
            "vote_cleaned": strongest_score(cleaned, labels, losses),
            "vote_and_probability": (-(neighbours.own_share(labels) + probability) / 2
                                     + 1e-3 * neighbours.suggested(labels)[1]).numpy()}


GAUSSIAN_SHRINKAGE = 0.01


def gaussian_candidates(engine, rule) -> dict[str, np.ndarray]:
    """A parametric reading of the same representations (higher = more suspect): minus the
    log-posterior of the given label under class-conditional Gaussians with one shared covariance
    (linear discriminant analysis on unit-normalised features, the covariance shrunk toward its mean
    variance by `GAUSSIAN_SHRINKAGE`; the generative classifier of Lee et al., "Robust inference via
    generative classifiers for handling noisy labels", ICML 2019). Class means pool thousands of
    images, so a swapped cluster of 30 cannot vouch for itself as it does among 25 neighbours, and
    the score is continuous where the vote ties. `gaussian_head_input`: the head's input alone;
    `gaussian_two_depths`: the two depths' log-posteriors averaged, as ours averages its votes."""
    labels, classes = engine.train_labels, len(engine.classes)
    scores = {}
    for found in engine.representations.layers(rule.layer):
        posterior = gaussian_log_posterior(engine.representations.train(found).cpu(), labels, classes)
        scores[found] = -posterior.gather(1, labels[:, None])[:, 0]
    out = {"gaussian_two_depths": torch.stack(list(scores.values())).mean(0).numpy()}
    heads = [score for (_, use_input), score in scores.items() if use_input]
    if heads:
        out["gaussian_head_input"] = heads[0].numpy()
    return out


def gaussian_log_posterior(features: torch.Tensor, labels: torch.Tensor, classes: int,
                           shrinkage: float = GAUSSIAN_SHRINKAGE) -> torch.Tensor:
    """`(n, C)` log p(c | h) under class means and one shared, shrunk covariance of the unit rows
    (equal class priors), in float64."""
    unit = F.normalize(features.double(), dim=1)
    counts = torch.bincount(labels, minlength=classes).clamp(min=1)              # an empty class: mean 0
    means = unit.new_zeros(classes, unit.shape[1]).index_add_(0, labels, unit) / counts[:, None]
    residual = unit - means[labels]
    covariance = residual.T @ residual / len(unit)
    covariance = ((1 - shrinkage) * covariance
                  + shrinkage * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=unit.dtype))
    factor = torch.linalg.cholesky(covariance)
    parts = []
    for start in range(0, len(unit), 2048):
        offset = unit[start:start + 2048, None, :] - means[None]                    # (b, C, D)
        solved = torch.cholesky_solve(offset.reshape(-1, offset.shape[-1]).T, factor).T.reshape(offset.shape)
        parts.append(torch.log_softmax(-0.5 * (offset * solved).sum(-1), dim=1))
    return torch.cat(parts).float()


DATALAB_K = 10          # cleanlab 2.9 Datalab's neighbours for label issues found from features


def neighbour_probabilities(neighbours, hidden: torch.Tensor, labels: torch.Tensor,
                            classes: int) -> dict[str, tuple[np.ndarray, float]]:
    """Out-of-sample class probabilities read from neighbours, no retraining, each with its seconds,
    for cleanlab's confident learning (its per-class thresholds are a scale-free cut):
    `cleanlab_on_vote`, ours' two-depth vote (each image's 25 nearest other images by cosine);
    `datalab_head_input`, what cleanlab's Datalab does when given features instead of probabilities
    (label shares among the `DATALAB_K` Euclidean-nearest other images), on the head's input.
    Datalab itself needs Hugging Face `datasets`, which the bench extra does not install."""
    start = time.perf_counter()
    loo = leave_one_out_votes(hidden, labels, DATALAB_K, classes)
    return {"cleanlab_on_vote": (neighbours.votes.double().numpy(), 0.0),
            "datalab_head_input": (loo.numpy(), time.perf_counter() - start)}


def leave_one_out_votes(features: torch.Tensor, labels: torch.Tensor, k: int, classes: int) -> torch.Tensor:
    """`(n, C)` label shares among each row's `k` Euclidean-nearest other rows (float64)."""
    x = features.double()
    parts = []
    for start in range(0, len(x), 1024):
        distance = torch.cdist(x[start:start + 1024], x)
        rows = torch.arange(start, min(len(x), start + 1024))
        distance[rows - start, rows] = float("inf")                                   # not itself
        nearest = distance.topk(k, dim=1, largest=False).indices
        parts.append(F.one_hot(labels[nearest], classes).double().mean(1))
    return torch.cat(parts)


def cleaned_vote(neighbours, labels: torch.Tensor, listed: torch.Tensor, classes: int):
    """The same neighbours voting again, each `listed` one with its suggested label instead of
    its own (per representation, then averaged as the rule averages them)."""
    from auditor.attribution.neighbours import Neighbours

    voters = torch.where(listed, neighbours.suggested(labels)[0], labels)
    return Neighbours.averaged([Neighbours(part.indices, part.similarity,
                                           F.one_hot(voters[part.indices], classes).float().mean(1))
                                for part in neighbours.parts or (neighbours,)])


def class_similarity(features: torch.Tensor, labels: torch.Tensor, k: int, classes: int) -> torch.Tensor:
    """`(n, C)` mean cosine of each row to its `k` nearest other rows of each class (in row chunks)."""
    from auditor.attribution.neighbours import SIMILARITY_BUDGET

    unit = F.normalize(features.float(), dim=1)
    n = len(unit)
    out = torch.zeros(n, classes)
    chunk = max(1, SIMILARITY_BUDGET // max(1, n))
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk))
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows)), rows] = -float("inf")
        for c in range(classes):
            members = labels == c
            out[rows, c] = similarity[:, members].topk(min(k, int(members.sum()) - 1), dim=1).values.mean(1)
    return out


def _mask(n: int, indices: list[int]) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return mask


def without_relabels(recipe: dict) -> dict:
    """The recipe of the clean twin: the same data without its planted label errors."""
    return {k: v for k, v in recipe.items() if k not in ("mislabel", "relabel")}


def suggested_correct(regime: dict, recipe: dict, outcome, planted: set[int]) -> float | None:
    """Among the listed planted relabels, the share whose suggested label is their true label."""
    clean = data_module(regime).train_set(recipe=without_relabels(recipe))
    names = clean.classes
    hits = [f.details["suggested"] == names[int(clean.targets[f.index])] for f in outcome.failures if f.index in planted]
    return round(sum(hits) / len(hits), 4) if hits else None


def clean_session(regime: dict, folder: Path):
    """The audit, all rules run, of the same model trained on the same data without relabels."""
    recipe = without_relabels(regime["recipe"])
    session = session_for(regime, recipe, trained(regime, recipe, folder), folder)
    session.run_all()
    return session


def clean_twin(regime: dict, folder: Path) -> dict:
    """The same model trained on the same data without relabels: what the rule lists there."""
    session = clean_session(regime, folder)
    outcome = session.outcomes[RULE]
    failures = outcome.failures
    rule = next(r for r in session.spec.rules if r.name == RULE).params
    alone = share_cut_alone(session.engine, rule)
    return {"clean_listed": len(failures), "clean_share": round(outcome.result.value, 5),
            "clean_share_without_class_z": round(len(alone) / len(session.engine.train_labels), 5),
            "clean_examples": [{"index": f.index, **{k: f.details[k] for k in ("label", "suggested", "own_share")}}
                               for f in failures[:10]],
            "clean_pairs": outcome.result.extra.get("suggested", [])[:8]}


def look(name: str, folder: Path, count: int = 48) -> Path:
    """The clean twin's first `count` listed suspects as one image, for judging by eye whether they
    are label errors."""
    regime = REGIMES[name]
    failures = clean_session(regime, folder).outcomes[RULE].failures[:count]
    images = data_module(regime).train_set(recipe=without_relabels(regime["recipe"])).images
    return contact_sheet([(f.index, f.details) for f in failures], images, set(), RESULTS / f"label_errors_clean_{name}.png")


DEMO = "sample_audits/fashion_shortcut"


def look_demo(report: Path, count: int = 48) -> Path:
    """The first `count` suspects `make demo` listed (its results.json), the planted relabels
    captioned in red: what ranks beside them, by eye."""
    import sample_audits.fashion as fashion

    rules = json.loads(report.read_text())["rules"]
    failures = next(rule for rule in rules if rule["name"] == RULE)["failures"][:count]
    planted = set(fashion.defects(fashion.recipe_of(DEMO))["relabelled_train"])
    images = fashion.train_set(DEMO).images
    return contact_sheet([(f["index"], f) for f in failures], images, planted, RESULTS / "label_errors_demo.png")


def contact_sheet(suspects: list[tuple[int, dict]], images: torch.Tensor, planted: set[int], path: Path,
                  columns: int = 8) -> Path:
    """Suspects as one image: rank, index, given → suggested label, own-label share; planted ones in red."""
    from PIL import Image, ImageDraw

    cell, caption = 112, 28
    sheet = Image.new("RGB", (columns * cell, -(-len(suspects) // columns) * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for rank, (index, details) in enumerate(suspects):
        x, y = rank % columns * cell, rank // columns * (cell + caption)
        tile = Image.fromarray(images[index].permute(1, 2, 0).numpy()).resize((cell - 8, cell - 8), Image.NEAREST)
        sheet.paste(tile, (x + 4, y + caption - 2))
        colour = "red" if index in planted else "black"
        draw.text((x + 4, y), f"{rank} #{index} {details['label'][:9]}", fill=colour)
        draw.text((x + 4, y + 12), f"-> {details['suggested'][:9]} {details['own_share']}", fill="blue")
    sheet.save(path)
    return path


def peer_row(peer: str, name: str, folder: Path) -> dict:
    """A peer library's self-influence row on the regime's trained model (its own process)."""
    regime = REGIMES[name]
    recipe = regime["recipe"]
    trained(regime, recipe, folder)
    planted = data_module(regime).defects(recipe)
    result = in_fresh_process("benchmarks.self_influence_peers", ["--peer", peer, "--regime", name, "--work", str(folder)],
                              folder / f"{peer}-{name}.pt")
    scores = result["scores"].numpy()
    positive = _mask(len(scores), list(planted["relabelled_train"]) + [int(j) for j in planted["random_relabels"]])
    return {**ranking_metrics(scores, positive), "seconds": round(result["seconds"], 1),
            "peak_rss_mb": round(result["peak_mb"]), **({"notes": result["notes"]} if result.get("notes") else {})}


COLUMNS = ("auc", "recall_at_2x", "recall_at_1pct", "listed", "recall_listed", "precision_listed", "seconds")


def markdown(document: dict) -> str:
    """The regimes' tables as RESULTS.md shows them."""
    out = []
    for name, regime in document["regimes"].items():
        planted = regime["planted"]
        out.append(f"**{name}** — {regime['n_train']:,} training images, training accuracy {regime['train_accuracy']}, "
                   f"planted {planted['swap']} swapped + {planted['random']} random, {regime['planted_fitted']} of them "
                   f"fitted; clean twin: {regime['clean_listed']} listed (share {regime['clean_share']}; "
                   f"{regime.get('clean_share_without_class_z')} with the share cut alone)\n")
        out.append("| row | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |")
        out.append("|---" * (len(COLUMNS) + 1) + "|")
        for row, values in regime["rows"].items():
            cells = ["" if values.get(c) is None else str(values[c]) for c in COLUMNS]
            failed = f" (failed: {values['failed']})" if "failed" in values else ""
            out.append(f"| {row}{failed} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def gaps(regimes: dict, metric: str) -> dict[str, tuple[float, float, int]]:
    """Per row: its largest and mean shortfall from the best row of each run on `metric`, and in how
    many runs it was measured; the robust choice is the row whose largest shortfall is smallest."""
    measured = {reg: {row: values[metric] for row, values in regime["rows"].items()
                      if values.get(metric) is not None and row != "ours_without_class_z"}
                for reg, regime in regimes.items()}
    best = {reg: max(values.values()) for reg, values in measured.items()}
    out = {}
    for row in sorted({row for values in measured.values() for row in values}):
        shortfall = [best[reg] - values[row] for reg, values in measured.items() if row in values]
        out[row] = (round(max(shortfall), 4), round(sum(shortfall) / len(shortfall), 4), len(shortfall))
    return dict(sorted(out.items(), key=lambda item: item[1]))


def gaps_table(files: list[str]) -> str:
    """Markdown: each row's shortfall from the best, by AUC and recall at 2×, over the files' runs."""
    regimes = {}
    for name in files:
        regimes.update(json.loads((RESULTS / name).read_text())["regimes"])
    by_auc, by_recall = gaps(regimes, "auc"), gaps(regimes, "recall_at_2x")
    lines = [f"Over {len(regimes)} runs ({', '.join(regimes)}):", "",
             "| row | AUC: largest / mean shortfall | recall at 2×: largest / mean shortfall | runs |", "|---|---|---|---|"]
    for row, (worst, mean, runs) in by_auc.items():
        recall = by_recall.get(row)
        lines.append(f"| {row} | {worst} / {mean} | {'' if recall is None else f'{recall[0]} / {recall[1]}'} | {runs} |")
    return "\n".join(lines)


def regimes(names: list[str], seeds: list[int] | None) -> list[tuple[str, str, dict]]:
    """The regimes to run as (results key, regime name, regime): each as it is or, with `seeds`,
    once per seed (key `NAME@seedN`)."""
    if seeds is None:
        return [(name, name, REGIMES[name]) for name in names]
    return [(f"{name}@seed{seed}", name, {**REGIMES[name], "recipe": {**REGIMES[name]["recipe"], "seed": seed}})
            for name in names for seed in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--work", type=Path, default=None, help="keep models and caches here")
    parser.add_argument("--cv", nargs="*", default=None, choices=list(REGIMES),
                        help="regimes that get cleanlab's cross-validation (5 retrains; default: all)")
    parser.add_argument("--out", default="label_errors.json")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run each regime again with these seeds instead of its own (other planted "
                             "images, another model); results keyed NAME@seedN")
    parser.add_argument("--peers", nargs="*", default=[], choices=["trak", "kronfluence"],
                        help="add the peers' self-influence rows (trak_self, kronfluence_self)")
    parser.add_argument("--only-peers", action="store_true",
                        help="keep each regime's other rows from the results file and add only the peers' rows")
    parser.add_argument("--table", action="store_true", help="print the results file's tables (Markdown) and stop")
    parser.add_argument("--look-demo", type=Path, default=None, metavar="RESULTS_JSON",
                        help="draw the first 48 suspects of `make demo`'s results.json (planted ones in red) "
                             "to results/label_errors_demo.png and stop")
    parser.add_argument("--gaps", nargs="+", default=None, metavar="FILE",
                        help="print each row's shortfall from the best row over these results files' runs, and stop")
    parser.add_argument("--look", choices=list(REGIMES), default=None,
                        help="draw this regime's clean twin's first 48 suspects to results/label_errors_clean_NAME.png and stop")
    args = parser.parse_args()
    if args.seeds is not None and (args.peers or args.only_peers):
        parser.error("--peers runs on each regime's own seed only: drop --seeds")
    if args.look_demo:
        print(look_demo(args.look_demo))
        return
    if args.gaps:
        print(gaps_table(args.gaps))
        return
    path = RESULTS / args.out
    if args.table:
        print(markdown(json.loads(path.read_text())))
        return
    # resolved: the audits name their checkpoints relative to their own folder
    work = (args.work or Path(tempfile.mkdtemp(prefix="auditor-label-errors-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.look:
        print(look(args.look, work))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    document = json.loads(path.read_text()) if path.is_file() else {}
    document.setdefault("regimes", {})
    command = "python -m benchmarks.label_errors " + " ".join(
        ["--regimes", *args.regimes] + (["--cv", *args.cv] if args.cv is not None else [])
        + (["--seeds", *map(str, args.seeds)] if args.seeds is not None else []))
    for name, base, regime in regimes(args.regimes, args.seeds):
        start = time.perf_counter()
        if not args.only_peers:
            kept = {row: value for row, value in document["regimes"].get(name, {}).get("rows", {}).items()
                    if row.endswith("_self") and row.removesuffix("_self") not in args.peers}   # peers' rows stay
            document["regimes"][name] = measure(base, regime, work, cv=args.cv is None or base in args.cv)
            document["regimes"][name]["rows"].update(kept)
            document["regimes"][name]["seconds"] = round(time.perf_counter() - start, 1)
            document["regimes"][name]["recipe"] = regime["recipe"]
            document["environment"] = environment(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            document["command"] = command
            document["regimes"][name]["command"] = command      # the file may merge several runs
        for peer in args.peers:
            try:
                row = peer_row(peer, name, work)
            except subprocess.CalledProcessError as exc:        # its traceback is on stderr above
                row = {"failed": f"the peer's process exited with status {exc.returncode}"}
            document["regimes"][name]["rows"][f"{peer}_self"] = row
            document.setdefault("peer_commands", {})[f"{name}/{peer}"] = (
                f"python -m benchmarks.label_errors --regimes {name} --peers {peer} --only-peers")
            write_json(args.out, document)
        write_json(args.out, document)
        print(json.dumps({name: document["regimes"][name]["rows"]}), flush=True)


if __name__ == "__main__":
    main()
