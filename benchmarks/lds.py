"""Attribution quality as the field measures it: the linear datamodeling score (LDS), ours against
TRAK, Kronfluence and dattri on the same trained model.

Setting: the sample audits' CNN (width 16) trained `epochs` on the first 5,000 Fashion-MNIST
training images; `--subsets` (≥ 50) copies retrained from scratch on seeded random halves of
them (seed m + 1 each: its initialisation and its shuffle), the same recipe otherwise. For each of
the first `--n-test` test images z the actual output of model m is the margin of its true label,
f_m(z) = logit_y − logsumexp_{c≠y} logit_c; an attribution τ(z, i) predicts it by
g_m(z) = Σ_{i ∈ S_m} τ(z, i). LDS is the Spearman correlation of g and f over the subsets,
averaged over the test images (TRAK, Park et al. 2023, §2; dattri's `lds`). The retrained
margins are cached in the work folder (re-runs take minutes).

Rows (each group in a process of its own: its seconds are featurizing and scoring the 5,000 × 200
matrix from the loaded model, its peak RSS its own):
- `ours`: the shipped option `settings.attribution.influence: kernel` (its default damping, 1) through the
  audit engine from an empty cache: the kernel on the stored unit-norm features (= `kernel_unit_1`).
- `grad_cos`: what every influence rule reads today: cosine of projected loss gradients
  (4,096 dimensions, the audit's default projection, true labels).
- `grad_dot`: the same features unnormalised (one-checkpoint TracIn on projected gradients).
- `kernel_loss_<λ>`, `kernel_margin_<λ>`: the curvature-aware kernel of DESIGN.md §1.4 on the
  same projected features, τ(z, i) = φ_zᵀ(ΦᵀΦ + λI)⁻¹φ_i, with Φ of loss gradients, or of margin
  gradients (φ_f = −φ_ℓ / (1 − p_y), TRAK's choice, with its Q_i = 1 − p_i on the training side);
  λ = damping × mean diagonal of ΦᵀΦ, damping in {1e-4, 1e-3, 1e-2, 1e-1, 1, 10}; dense float64 solve.
- `kernel_unit_<λ>`: the same kernel on the unit-norm features the audit's feature store holds
  (what an `influence: kernel` option could score without storing the norms).
- `trak`: traker 0.3.2, one checkpoint, the same projection dimension.
- `kronfluence`: kronfluence 1.0.1, EK-FAC factors on the training set, pairwise scores of the
  test loss (a positive factor 1 − p_z from the margin's: the same ranks per test image).
- `dattri_tracin`: dattri 0.3.0 `TracInAttributor`, the trained model as its one checkpoint,
  unprojected, unnormalised gradients.
Sign convention: positive τ means training on i raises z's margin (all rows).

    python -m benchmarks.lds [--subsets 50] [--n-test 200] [--epochs 5] [--work DIR] [--rows ours trak ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from auditor.attribution.influence import kernel_queries
from benchmarks.common import RESULTS, environment, in_fresh_process, kronfluence_task, peak_memory_mb, write_json

N_TRAIN = 5000
WIDTH = 16
DAMPINGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
GROUPS = ("ours", "trak", "kronfluence", "dattri_tracin")


def recipe(args: argparse.Namespace) -> dict:
    """The setting: data, epochs, seed, and the CNN's width when it is not the default."""
    rec = {"n_train": N_TRAIN, "n_test": args.n_test, "epochs": args.epochs, "seed": args.seed}
    return rec | ({"width": args.width} if args.width != WIDTH else {})    # (the default's cache keys unchanged)


def digest(document: object) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


def quiet_train(dataset, rec: dict, seed: int) -> torch.nn.Module:
    """The sample CNN trained on `dataset` as `rec` says (its per-epoch lines swallowed)."""
    from sample_audits.models import small_cnn
    from sample_audits.train import train

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        return train(small_cnn(width=rec.get("width", WIDTH)), dataset, rec["epochs"], seed)


def subset_masks(n: int, count: int, seed: int = 0) -> np.ndarray:
    """`(count, n)` boolean masks, each a seeded random half of the training set."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, n), dtype=bool)
    for m in range(count):
        masks[m, rng.permutation(n)[:n // 2]] = True
    return masks


def margins(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(m,)` true-label margin logit_y − logsumexp of the other logits."""
    with torch.no_grad():
        logits = model.eval()(images).double()
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -float("inf")).logsumexp(1)
    return own - others


def data(rec: dict):
    from auditor.data import gather
    from sample_audits.fashion import test_set, train_set

    train, test = train_set(recipe=rec), test_set(recipe=rec)
    return train, gather(test, torch.arange(len(test)))


def trained(rec: dict, work: Path) -> Path:
    """The full model (cached by recipe)."""
    path = work / f"model-{digest(rec)}.pt"
    if not path.exists():
        train, _ = data(rec)
        torch.save(quiet_train(train, rec, rec["seed"]).state_dict(), path)
    return path


def retrained_margins(rec: dict, masks: np.ndarray, work: Path) -> tuple[np.ndarray, float | None]:
    """`(subsets, n_test)` margins of models retrained on each subset (cached per subset), and the
    seconds their training took when it was recorded (None when some were cached without it)."""
    from auditor.data import ImageTensorDataset

    train, (images, labels) = data(rec)
    folder = work / f"retrained-{digest([rec, masks.shape])}"
    folder.mkdir(parents=True, exist_ok=True)
    out, seconds = [], 0.0
    start = time.perf_counter()
    for m, mask in enumerate(masks):
        path = folder / f"{m}.pt"
        if not path.exists():
            keep = torch.as_tensor(np.flatnonzero(mask))
            subset = ImageTensorDataset(train.images[keep], train.targets[keep], train.classes)
            began = time.perf_counter()
            model = quiet_train(subset, rec, rec["seed"] + 1 + m)
            torch.save({"margins": margins(model, images, labels), "seconds": time.perf_counter() - began}, path)
            print(f"  retrained {m + 1}/{len(masks)} ({time.perf_counter() - start:.0f} s)", flush=True)
        saved = torch.load(path, weights_only=True)
        saved = saved if isinstance(saved, dict) else {"margins": saved, "seconds": float("nan")}   # older caches
        out.append(saved["margins"].numpy())
        seconds += saved["seconds"]
    return np.stack(out), (None if np.isnan(seconds) else round(seconds, 1))


def lds(scores: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> float:
    """Mean over test images of Spearman(Σ_{i∈S_m} τ(z, i), f_m(z)) over the subsets m."""
    from scipy.stats import spearmanr

    predicted = masks.astype(np.float64) @ scores.T.astype(np.float64)          # (subsets, n_test)
    rhos = [spearmanr(predicted[:, z], actual[:, z]).statistic for z in range(actual.shape[1])]
    return float(np.nanmean(rhos))


# --- workers: each in a fresh process; they return {row: (n_test, n_train) scores}, seconds each ---

def model_and_tensors(rec: dict, work: Path):
    from auditor.data import gather
    from sample_audits.models import small_cnn

    train, (test_images, test_labels) = data(rec)
    model = small_cnn(width=rec.get("width", WIDTH))
    model.load_state_dict(torch.load(trained(rec, work), weights_only=True))
    images, labels = gather(train, torch.arange(len(train)))
    return model.eval(), images, labels, test_images, test_labels


def audit_engine(rec: dict, work: Path, cache: Path, **attribution):
    from auditor.engine import Engine
    from auditor.spec import load_spec
    from auditor.target import load_target

    doc = {"audit": "lds", "model": {"factory": "sample_audits.models:small_cnn", "kwargs": {"width": rec.get("width", WIDTH)},
                                     "checkpoint": str(trained(rec, work))},
           "data": {"train": {"factory": "sample_audits.fashion:train_set", "kwargs": {"recipe": rec}},
                    "test": {"factory": "sample_audits.fashion:test_set", "kwargs": {"recipe": rec}}},
           "settings": {"device": "cpu", "cache_dir": str(cache),
                        "attribution": {"test_label": "true", **attribution}}}
    path = work / "audit.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Engine(load_target(load_spec(path)))


def projected(engine, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(n, d)` projected loss gradients, before the unit normalisation the store applies."""
    index = engine.index
    parts = [index.featurizer.projector.features(index.gradients, images[i:i + 256], labels[i:i + 256]).float()
             for i in range(0, len(images), 256)]
    return torch.cat(parts)


def kernel_scores(train: torch.Tensor, test: torch.Tensor, damping: float, train_weight: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """`(m, n)` φ_zᵀ(ΦᵀΦ + λI)⁻¹φ_i in float64, λ = damping × mean diagonal of ΦᵀΦ."""
    phi = train.double()
    kernel = phi.T @ phi
    kernel += damping * kernel.diagonal().mean() * torch.eye(len(kernel), dtype=phi.dtype)
    solved = torch.linalg.solve(kernel, test.double().T).T                      # (m, d)
    weighted = phi if train_weight is None else phi * train_weight.double()[:, None]
    return solved @ weighted.T


def worker_ours(rec: dict, work: Path) -> dict:
    """`ours`: the shipped option (`influence: kernel`, default damping) through the engine, cold
    (an empty cache: featurize, sum the kernel, solve, score); the other rows from the same
    projected features, computed here."""
    model, images, labels, test_images, test_labels = model_and_tensors(rec, work)
    with tempfile.TemporaryDirectory(dir=work) as cache:
        engine = audit_engine(rec, work, Path(cache), influence="kernel")
        start = time.perf_counter()
        tests = torch.arange(len(test_images))
        queries = kernel_queries(engine.index.test_features(tests), engine.index.kernel)
        rows = {"ours": (queries @ engine.index.store.matrix().T, time.perf_counter() - start)}
        start = time.perf_counter()                  # the same projector (the influence setting does not change it)
        train, test = projected(engine, images, labels), projected(engine, test_images, test_labels)
        featurize = time.perf_counter() - start
    t = time.perf_counter()
    unit_train, unit_test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    rows["grad_cos"] = (unit_test @ unit_train.T, featurize + time.perf_counter() - t)
    t = time.perf_counter()
    rows["grad_dot"] = (test @ train.T, featurize + time.perf_counter() - t)
    with torch.no_grad():
        own = lambda x, y: model(x).softmax(1).gather(1, y[:, None])[:, 0]  # noqa: E731
        p_train, p_test = own(images, labels), own(test_images, test_labels)
    margin_train = -train / (1 - p_train).clamp_min(1e-12)[:, None]
    margin_test = -test / (1 - p_test).clamp_min(1e-12)[:, None]
    for damping in DAMPINGS:
        t = time.perf_counter()
        rows[f"kernel_loss_{damping:g}"] = (kernel_scores(train, test, damping), featurize + time.perf_counter() - t)
        t = time.perf_counter()
        rows[f"kernel_unit_{damping:g}"] = (kernel_scores(unit_train, unit_test, damping),
                                            featurize + time.perf_counter() - t)
        t = time.perf_counter()
        rows[f"kernel_margin_{damping:g}"] = (kernel_scores(margin_train, margin_test, damping, 1 - p_train),
                                              featurize + time.perf_counter() - t)
    return rows


def worker_trak(rec: dict, work: Path) -> dict:
    model, images, labels, test_images, test_labels = model_and_tensors(rec, work)
    with tempfile.TemporaryDirectory(dir=work) as save_dir:        # TRAK reuses a save_dir's features: start empty
        return {"trak": trak_scores(model, images, labels, test_images, test_labels, Path(save_dir))}


def trak_scores(model, images, labels, test_images, test_labels, save_dir: Path) -> tuple[torch.Tensor, float]:
    from trak import TRAKer

    start = time.perf_counter()
    traker = TRAKer(model=model, task="image_classification", train_set_size=len(images),
                    save_dir=str(save_dir), device="cpu", proj_dim=4096, use_half_precision=False)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    for i in range(0, len(images), 500):
        traker.featurize(batch=(images[i:i + 500], labels[i:i + 500]), num_samples=len(images[i:i + 500]))
    traker.finalize_features()
    traker.start_scoring_checkpoint(exp_name="lds", checkpoint=model.state_dict(), model_id=0,
                                    num_targets=len(test_images))
    traker.score(batch=(test_images, test_labels), num_samples=len(test_images))
    scores = torch.as_tensor(np.asarray(traker.finalize_scores(exp_name="lds"))).T      # (n_test, n_train)
    return scores, time.perf_counter() - start


def worker_kronfluence(rec: dict, work: Path) -> dict:
    from kronfluence.analyzer import Analyzer, prepare_model

    model, images, labels, test_images, test_labels = model_and_tensors(rec, work)
    start = time.perf_counter()
    task = kronfluence_task()
    train = torch.utils.data.TensorDataset(images, labels)
    test = torch.utils.data.TensorDataset(test_images, test_labels)
    analyzer = Analyzer(analysis_name="lds", model=prepare_model(model, task), task=task, cpu=True,
                        output_dir=str(work / "kronfluence"), disable_tqdm=True)
    analyzer.fit_all_factors(factors_name="ekfac", dataset=train, per_device_batch_size=128, overwrite_output_dir=True)
    analyzer.compute_pairwise_scores(scores_name="lds", factors_name="ekfac", query_dataset=test, train_dataset=train,
                                     per_device_query_batch_size=len(test), per_device_train_batch_size=256,
                                     overwrite_output_dir=True)
    scores = analyzer.load_pairwise_scores("lds")["all_modules"]                           # (n_test, n_train)
    return {"kronfluence": (scores, time.perf_counter() - start)}


def worker_dattri_tracin(rec: dict, work: Path) -> dict:
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    model, images, labels, test_images, test_labels = model_and_tensors(rec, work)

    def loss(params, example):
        image, label = example
        logits = torch.func.functional_call(model, params, (image.unsqueeze(0),))
        return F.cross_entropy(logits, label.long().unsqueeze(0))

    loader = lambda x, y: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256)  # noqa: E731
    start = time.perf_counter()
    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = TracInAttributor(task, weight_list=torch.ones(1), normalized_grad=False, device="cpu")
    attributor.projector_kwargs = None  # unprojected (its constructor always sets a default)
    scores = attributor.attribute(loader(images, labels), loader(test_images, test_labels)).T
    return {"dattri_tracin": (scores, time.perf_counter() - start)}


WORKERS = {"ours": worker_ours, "trak": worker_trak, "kronfluence": worker_kronfluence,
           "dattri_tracin": worker_dattri_tracin}


def run_group(group: str, rec: dict, work: Path, threads: int) -> dict:
    """One worker in a fresh process; its rows' scores and seconds, and its peak RSS."""
    return in_fresh_process("benchmarks.lds", ["--worker", group, "--work", str(work), "--threads", str(threads),
                                               "--recipe", json.dumps(rec)], work / f"scores-{group}-{digest(rec)}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=WIDTH, help="the CNN's width (a second model: --width 32)")
    parser.add_argument("--seed", type=int, default=0, help="the full model's seed (the subsets' are seed + 1 + m)")
    parser.add_argument("--results", default="lds.json", help="results file under benchmarks/results/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/auditor-lds"))
    parser.add_argument("--rows", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--worker", choices=GROUPS)
    parser.add_argument("--recipe")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        rows = WORKERS[args.worker](json.loads(args.recipe), args.work)
        torch.save({"rows": {name: (scores.float().numpy(), seconds) for name, (scores, seconds) in rows.items()},
                    "peak_rss_mb": peak_memory_mb(torch.device("cpu"))}, args.out)
        return
    rec = recipe(args)
    trained(rec, args.work)
    masks = subset_masks(N_TRAIN, args.subsets, rec["seed"])
    actual, retrain_seconds = retrained_margins(rec, masks, args.work)
    path = RESULTS / args.results
    document = json.loads(path.read_text()) if path.exists() else {}
    previous = document.get("rows", {})
    rows = {name: row for name, row in previous.items() if name not in expand(args.rows, previous)}
    commands = {**document.get("commands", {}),
                **{group: "python -m benchmarks.lds " + " ".join(sys.argv[1:]) for group in args.rows}}
    for group in args.rows:
        result = run_group(group, rec, args.work, args.threads)
        for name, (scores, seconds) in result["rows"].items():
            rows[name] = {"lds": round(lds(scores, masks, actual), 4), "seconds": round(seconds, 2),
                          "peak_rss_mb": round(result["peak_rss_mb"])}
            print(f"  {name:24s} LDS {rows[name]['lds']:.4f}  {seconds:7.1f} s  peak {result['peak_rss_mb']:.0f} MB",
                  flush=True)
    write_json(args.results, {"rows": rows, "recipe": rec, "width": rec.get("width", WIDTH), "subsets": args.subsets,
                            "retrain_seconds": retrain_seconds, "environment": environment(torch.device("cpu")),
                            "commands": commands})


def expand(groups: list[str], previous: dict) -> set[str]:
    """Row names the `groups` rerun produces (ours makes several)."""
    names = set(groups) - {"ours"}
    if "ours" in groups:
        names |= {"ours", "grad_cos", "grad_dot"} | {n for n in previous if n.startswith("kernel_")}
    return names


if __name__ == "__main__":
    main()
