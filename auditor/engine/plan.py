"""What featurizing the training set will cost, said before it starts, and how long the rest will
take, said after its first shard: the engine's words to a user waiting on a long step."""

from __future__ import annotations

from pathlib import Path

import torch

from auditor.attribution.neighbours import last_linear

LARGE_ON_CPU = 2_000_000        # values per example (whole gradients) above which featurizing on a CPU takes minutes


def featurize_plan(model: torch.nn.Module, *, n_rows: int, parameters: int, layers: tuple[str, ...] | None,
                   chunk: int, held: int, example_bytes: int, dim: int, projection: str, cache_root: Path,
                   on_cpu: bool) -> str:
    """Gradient size, memory per chunk, features on disk, and for a model whose whole per-example
    gradients are formed on the CPU, the cheaper `layers:` choice. `held`: values per example
    while featurizing; `dim`: the features' dimension."""
    per_row = 8 * held + example_bytes
    size = f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters:,}"
    projected = f", projected ({projection}) to {dim:,} dimensions" if dim < parameters else ""
    text = (f"featurizing {n_rows:,} training images: gradients of {size} parameters "
            f"({'layers ' + ', '.join(layers) if layers else 'all trainable'}), "
            f"{chunk} at a time (~{per_row * chunk / 2**20:,.0f} MB with activations){projected}, "
            f"features {4 * n_rows * dim / 2**20:,.0f} MB "
            f"in {cache_root}; an interrupted run resumes from its finished shards")
    head = last_linear(model)
    if on_cpu and held > LARGE_ON_CPU and head and not layers:
        text += (f"\n  this model is large for a CPU: expect minutes; `settings.attribution.layers: [{head}]` "
                 f"(its last layer) featurizes about {parameters / max(1, parameter_count(model, head)):.0f}x less")
    return text


def time_estimate(done: int, seconds: float, total: int) -> str:
    """The rest of the featurization, extrapolated from its first shard."""
    rest = (total - done) * seconds / max(1, done)
    when = f"{rest / 60:.1f} min" if rest >= 90 else f"{rest:.0f} s"
    return (f"  first {done:,} images in {seconds:.1f} s ({done / max(seconds, 1e-9):,.0f}/s): "
            f"about {when} for the other {total - done:,}")


def parameter_count(model: torch.nn.Module, prefix: str) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix + "."))
