"""Self-influence of every training image by a peer library, on a label-errors regime's trained
model, in a process of its own (`benchmarks/label_errors.py --peers` runs it):

- `trak`: traker 0.3.2, one checkpoint, projection 2048 (`BasicProjector` on the CPU). TRAK's
  score of a target z on training image i is φ(z)ᵀ(ΦᵀΦ)⁻¹φ_i · Q_i (φ: projected gradients of the
  margin, Q_i = 1 − p_i); with the training image as its own target that is
  `grads_i · features_i · out_to_loss_i` from its finalized store (`features` = Φ(ΦᵀΦ)⁻¹). The
  worker checks it against TRAK's own scoring of the first 64 training images as targets.
- `kronfluence`: kronfluence 1.0.1 EK-FAC factors on the training set (cross-entropy, sampled
  labels for the Fisher, as its examples), `compute_self_scores` on the loss.

    python -m benchmarks.self_influence_peers --peer trak --regime memorising --work DIR --out FILE
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import kronfluence_task, peak_memory_mb

PROJECTION_DIM = 2048
GRADIENT_BYTES = 2**30      # per-example gradients held per batch: fewer batches, fewer regenerated projections
CHECKED_TARGETS = 64


def batch_size(model: torch.nn.Module) -> int:
    """Examples per batch whose per-example gradients fit `GRADIENT_BYTES` (32 to 1024)."""
    return max(32, min(1024, GRADIENT_BYTES // (4 * sum(p.numel() for p in model.parameters()))))


def regime_model_and_data(name: str, work: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The regime's trained model (eval mode) and its whole training set as tensors."""
    from auditor.data import gather
    from benchmarks.label_errors import REGIMES, build_model, data_module, trained

    regime = REGIMES[name]
    model = build_model(regime)
    model.load_state_dict(torch.load(trained(regime, regime["recipe"], work), weights_only=True))
    dataset = data_module(regime).train_set(recipe=regime["recipe"])
    images, labels = gather(dataset, torch.arange(len(dataset)))
    return model.eval(), images, labels


def trak_self(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, work: Path) -> np.ndarray:
    from trak import TRAKer

    n, batch = len(images), batch_size(model)
    traker = TRAKer(model=model, task="image_classification", train_set_size=n, save_dir=str(work),
                    device="cpu", proj_dim=PROJECTION_DIM, use_half_precision=False)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    for i in range(0, n, batch):
        traker.featurize(batch=(images[i:i + batch], labels[i:i + batch]), num_samples=len(images[i:i + batch]))
    traker.finalize_features(del_grads=False)
    store = traker.saver.current_store
    grads, features = torch.as_tensor(np.asarray(store["grads"])), torch.as_tensor(np.asarray(store["features"]))
    out_to_loss = torch.as_tensor(np.asarray(store["out_to_loss"])).flatten()
    scores = ((grads.double() * features.double()).sum(1) * out_to_loss.double()).numpy()
    traker.start_scoring_checkpoint(exp_name="self", checkpoint=model.state_dict(), model_id=0,
                                    num_targets=CHECKED_TARGETS)
    traker.score(batch=(images[:CHECKED_TARGETS], labels[:CHECKED_TARGETS]), num_samples=CHECKED_TARGETS)
    public = np.asarray(traker.finalize_scores(exp_name="self"))          # (n_train, targets)
    diagonal = public[np.arange(CHECKED_TARGETS), np.arange(CHECKED_TARGETS)]
    assert np.allclose(diagonal, scores[:CHECKED_TARGETS], rtol=1e-3, atol=1e-6 * np.abs(diagonal).max()), \
        "self-influence from the store differs from TRAK's own scoring"
    return scores


def kronfluence_self(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, work: Path) -> np.ndarray:
    from kronfluence.analyzer import Analyzer, prepare_model

    task = kronfluence_task()
    dataset = torch.utils.data.TensorDataset(images, labels)
    analyzer = Analyzer(analysis_name="self", model=prepare_model(model, task), task=task, cpu=True,
                        output_dir=str(work), disable_tqdm=True)
    try:
        analyzer.fit_all_factors(factors_name="ekfac", dataset=dataset, per_device_batch_size=128,
                                 overwrite_output_dir=True)
    except torch.linalg.LinAlgError:      # eigh of a float32 covariance did not converge: float64 ones
        from kronfluence.arguments import FactorArguments

        NOTES.append("EK-FAC refitted with float64 covariances (float32: eigh did not converge)")
        analyzer.fit_all_factors(factors_name="ekfac", dataset=dataset, per_device_batch_size=128,
                                 overwrite_output_dir=True,
                                 factor_args=FactorArguments(activation_covariance_dtype=torch.float64,
                                                             gradient_covariance_dtype=torch.float64))
    analyzer.compute_self_scores(scores_name="self", factors_name="ekfac", train_dataset=dataset,
                                 per_device_train_batch_size=batch_size(model) // 4 or 1, overwrite_output_dir=True)
    return analyzer.load_self_scores("self")["all_modules"].double().numpy()


PEERS = {"trak": trak_self, "kronfluence": kronfluence_self}
NOTES: list[str] = []        # what a peer needed beyond its defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=list(PEERS), required=True)
    parser.add_argument("--regime", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, images, labels = regime_model_and_data(args.regime, args.work)
    folder = args.work / f"{args.peer}-{args.regime}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scores = PEERS[args.peer](model, images, labels, folder)
    torch.save({"scores": torch.as_tensor(scores), "seconds": time.perf_counter() - start,
                "peak_mb": peak_memory_mb(torch.device("cpu")), "notes": NOTES}, args.out)


if __name__ == "__main__":
    main()
