"""What an audit will cost, said before it starts: the memory its stages may take above what the
loaded model, data and predictions hold (`memory_plan`), what featurizing the training set will
cost and, after its first shard, how long the rest will take: the engine's words to a user
waiting on a long step."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from auditor.attribution.memory import ACTIVATION_BUDGET_BYTES, GRADIENT_BUDGET_BYTES
from auditor.attribution.neighbours import last_linear
from auditor.attribution.tfa import TFA_BUDGET_BYTES

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


MB = 2**20


def stage_budgets(rules: list) -> dict[str, int]:
    """The chunked stages `rules` will run and each one's memory budget in bytes (a stage sizes its
    chunks from one example's measured cost to stay within it: `auditor.attribution.memory`); each
    rule's parameters say which it needs (`ranks_training`, `draws_tfa`)."""
    budgets = {"activations": ACTIVATION_BUDGET_BYTES}      # predictions, saliency, occlusion
    tfa = any(r.params.draws_tfa() for r in rules)
    if tfa or any(r.params.ranks_training() for r in rules):
        budgets["per-example gradients"] = GRADIENT_BUDGET_BYTES
    if tfa:
        budgets["TFA"] = TFA_BUDGET_BYTES
    return budgets


def memory_plan(in_use: int | None, budgets: dict[str, int], kept: int, device_in_use: int | None = None) -> str:
    """One line: the memory in use now, each stage's budget (stages run one at a time), the maps
    the rules keep, and the peak those add up to. `in_use` None: the platform does not say.
    `device_in_use`: bytes allocated on an accelerator, where the stages then run (their budgets
    count device memory; the kept maps live in host memory)."""
    stages = ", ".join(f"{name} {size / MB:,.0f} MB" for name, size in budgets.items())
    text = f"memory: stages run in chunks within their budgets ({stages}); the maps rules keep ~{kept / MB:,.0f} MB"
    if device_in_use is not None:
        host = "" if in_use is None else f"; host memory: expect a peak under ~{(in_use + kept) / MB:,.0f} MB"
        return (f"{text}; {device_in_use / MB:,.0f} MB allocated on the device with the model loaded: expect a "
                f"device peak under ~{(device_in_use + max(budgets.values())) / MB:,.0f} MB{host}")
    extra = max(budgets.values()) + kept
    if in_use is None:
        return text + f": at most ~{extra / MB:,.0f} MB above the loaded model and data"
    return (f"{text}; {in_use / MB:,.0f} MB in use with the model, data and predictions loaded: "
            f"expect a peak under ~{(in_use + extra) / MB:,.0f} MB")


def stated_peak_mb(text: str) -> int | None:
    """The host peak (MB) that a memory note inside `text` (a run's stderr) states; None without one."""
    found = re.search(r"^memory: .* expect a peak under ~([0-9,]+) MB$", text, re.M)
    return int(found.group(1).replace(",", "")) if found else None


def resident_peak() -> int | None:
    """This process's resident-memory high-water mark in bytes (None where the platform has no `resource`)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def time_estimate(done: int, seconds: float, total: int) -> str:
    """The rest of the featurization, extrapolated from its first shard."""
    rest = (total - done) * seconds / max(1, done)
    when = f"{rest / 60:.1f} min" if rest >= 90 else f"{rest:.0f} s"
    return (f"  first {done:,} images in {seconds:.1f} s ({done / max(seconds, 1e-9):,.0f}/s): "
            f"about {when} for the other {total - done:,}")


def parameter_count(model: torch.nn.Module, prefix: str) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix + "."))
