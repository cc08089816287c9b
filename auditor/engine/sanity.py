"""Is the model fed what it was trained on? Cheap checks before any rule runs, because an audit
believes whatever it is fed: images scaled 0–255 to a model trained on 0–1, or `Normalize` on
one split only, pass an accuracy rule and then mislead every attribution rule.

- the model's accuracy on a sample of its own training images, against its test accuracy (a
  trained model does at least as well on its training data) and against chance;
- train vs test per-channel pixel mean (in units of their pooled standard deviation) and
  standard deviation (as a ratio): `Normalize` on one split changes both;
- float images whose values reach far above 1 (0–255 floats where 0–1 is usual).

Each finding is a warning with its fix (the user may mean it: a model trained on 0–255), never
a silent pass.
"""

from __future__ import annotations

import torch

from auditor.sampling import seeded_draw

SAMPLE = 512                 # images per split looked at
MAX_ACCURACY_GAP = 0.15      # training accuracy this far below test accuracy: fed differently
MAX_MEAN_SHIFT = 0.5         # a channel's train/test mean apart by this many pooled standard deviations
MAX_STD_RATIO = 1.5          # or its standard deviation this many times the other split's
MAX_FLOAT_VALUE = 10.0       # float pixels above this: 0–255 values (normalised data stays within ~±5)
CAUSES = "the usual causes are the scale (0–1 vs 0–255), the normalisation (`Normalize` on one split) and channel order"


def sample(n: int, seed: int) -> torch.Tensor:
    """Up to `SAMPLE` indices of `n`, seeded."""
    return seeded_draw(n, SAMPLE, seed).sort().values


def accuracy_warnings(train_correct: float, test_correct: float, n_classes: int) -> list[str]:
    """The model's accuracy on its own training images vs its test accuracy and chance."""
    found = []
    if train_correct < test_correct - MAX_ACCURACY_GAP:
        found.append(f"the model is right on {train_correct:.0%} of a sample of its own training images but on "
                     f"{test_correct:.0%} of the test images: the training images are probably fed unlike its "
                     f"training ({CAUSES}); fix the `data.train` transform")
    chance = 1.0 / max(n_classes, 1)
    if max(train_correct, test_correct) < 1.5 * chance:
        found.append(f"the model is near chance on both splits ({train_correct:.0%} train, {test_correct:.0%} test, "
                     f"chance {chance:.0%}): it is fed unlike its training ({CAUSES}), or its checkpoint or "
                     "BatchNorm statistics are stale; every rule below judges a broken model")
    return found


def pixel_warnings(train: torch.Tensor, test: torch.Tensor) -> list[str]:
    """Train vs test images `(m, C, H, W)`: per-channel mean shift and an unusual value range."""
    found = []
    dims = (0, 2, 3)
    mean_a, mean_b = train.float().mean(dims), test.float().mean(dims)
    pooled = ((train.float().var(dims) + test.float().var(dims)) / 2).sqrt().clamp_min(1e-6)
    std_a, std_b = train.float().std(dims).clamp_min(1e-6), test.float().std(dims).clamp_min(1e-6)
    shift, ratio = (mean_a - mean_b).abs() / pooled, torch.maximum(std_a / std_b, std_b / std_a)
    worst = int((shift / MAX_MEAN_SHIFT).maximum(ratio / MAX_STD_RATIO).argmax())
    if float(shift[worst]) > MAX_MEAN_SHIFT or float(ratio[worst]) > MAX_STD_RATIO:
        found.append(f"train and test pixels differ: channel {worst} mean {float(mean_a[worst]):.3g} vs "
                     f"{float(mean_b[worst]):.3g} ({float(shift[worst]):.1f} standard deviations apart), standard "
                     f"deviation {float(std_a[worst]):.3g} vs {float(std_b[worst]):.3g}: one split is probably "
                     f"transformed differently ({CAUSES})")
    for name, images in (("training", train), ("test", test)):
        if images.is_floating_point() and float(images.max()) > MAX_FLOAT_VALUE:
            found.append(f"the {name} images reach {float(images.max()):.4g}: float images usually lie in 0–1 "
                         "(ToTensor) or are normalised; scale them as the model was trained (ignore this if it "
                         "was trained on these values)")
    return found
