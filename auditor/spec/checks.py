"""What a rule of each check kind may say: its name, parameter dataclass and `per_example`
flag — torch-free, so `auditor validate` and pytest collection judge a rule without loading
any model. The computations live in `auditor.checks`, one module per kind, registered under
the same names (`auditor.checks.base.CHECKS` accepts exactly `CHECK_KINDS.names`).

A parameter class may define `validate(where)` (its own fields) and `against(settings, where)`
(fields checked against the audit's settings); `where.child(key)` is the line of the rule's `key`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from auditor.registry import SALIENCY_METHODS, Registry
from auditor.spec.binding import Where, bounded, choice

CHECK_KINDS: Registry[type] = Registry("check")
Source = Literal["tfa", "var", "saliency"]
REGIONS = ("border", "top_left", "top_right", "bottom_left", "bottom_right", "centre")


def check_kind(name: str, *, per_example: bool = True, description: str = "") -> Callable[[type], type]:
    """Class decorator: declare a check kind with this parameter dataclass."""
    def declare(params: type) -> type:
        params.check, params.per_example, params.description = name, per_example, description
        return CHECK_KINDS.register(name)(params)
    return declare


class Params:
    """Base of every check's parameters: the kind's name, flags and cross-checks."""

    check: ClassVar[str]
    per_example: ClassVar[bool]
    description: ClassVar[str]

    def against(self, settings: Any, where: Where) -> None:
        """Check parameters against the audit's settings (default: nothing to check)."""

    def proponents_needed(self) -> int:
        """Training images ranked per test example (`k`); checked against the training set's size."""
        return 0

    def ranks_training(self) -> bool:
        """Whether the rule reads the training set's Grad-Cos features (the memory plan's gradient stage)."""
        return False

    def draws_tfa(self) -> bool:
        """Whether the rule draws TFA maps, as its source or as evidence (the memory plan's TFA stage)."""
        return False


def require_top_k(k: int, settings: Any, where: Where) -> None:
    """`k` proponents per example cannot exceed the `top_k` the engine keeps."""
    top_k = settings.attribution.top_k
    if k > top_k:
        raise where.error(f"k={k} exceeds settings.attribution.top_k={top_k}",
                          fix=f"lower k to at most {top_k}, or raise settings.attribution.top_k to {k}")


class UsesInfluence(Params):
    """Parameters of checks that read each example's top-`k` Grad-Cos proponents."""

    def against(self, settings: Any, where: Where) -> None:
        require_top_k(self.k, settings, where.child("k"))

    def proponents_needed(self) -> int:
        return self.k

    def ranks_training(self) -> bool:
        return True


class UsesMaps(Params):
    """Parameters of checks that measure attribution maps from a `source` (and `method`)."""

    def validate(self, where: Where) -> None:
        if self.source == "tfa" and self.method is not None:
            raise where.child("method").error(
                "`method` picks the saliency method of `source: var | saliency`; TFA maps have none",
                fix="remove `method`, or use `source: var` or `source: saliency`")

    def against(self, settings: Any, where: Where) -> None:
        if self.source == "tfa":
            require_top_k(self.k, settings, where.child("k"))

    def proponents_needed(self) -> int:
        return self.k if self.source == "tfa" else 0

    def draws_tfa(self) -> bool:
        return self.source == "tfa"


@check_kind("accuracy", per_example=False, description="share of correct predictions")
@dataclass(frozen=True)
class AccuracyParams(Params):
    min_accuracy: float = bounded(0.0, 1.0, help="required share of correct predictions")
    per_class: bool = False


@check_kind("influence_dominance", description="share of the top-1 proponent among the top-k")
@dataclass(frozen=True)
class DominanceParams(UsesInfluence):
    max_top1_share: float = bounded(0.0, 1.0, help="largest share one training image may carry")
    k: int = bounded(2, 1000, default=5)
    min_gap: float | None = bounded(0.0, 1.0, default=None, help="required score gap top-1 − top-2")


@check_kind("proponent_label_agreement", description="share of top-k proponents labelled as the prediction")
@dataclass(frozen=True)
class AgreementParams(UsesInfluence):
    min_agreement: float = bounded(0.0, 1.0, help="share of proponents that must carry the predicted label")
    k: int = bounded(1, 1000, default=5)


@check_kind("harmful_training_images", per_example=False,
            description="training images that oppose correct predictions or drive errors")
@dataclass(frozen=True)
class HarmfulParams(UsesInfluence):
    mode: Literal["opponents", "proponents"] = "opponents"
    k: int = bounded(1, 1000, default=5)
    min_count: int = bounded(1, None, default=100, help="test examples an image must oppose (opponents) or "
                                                          "support in error (proponents) to be flagged")
    max_count: int = bounded(0, None, default=0, help="flagged training images the rule tolerates")


FLIP_HELP = ("share of a hotspot's errors whose prediction must change when the spot is occluded "
             "for the hotspot to count (the causal confirmation)")
TRANSFER_HELP = ("when the class's own correct predictions need the spot too, the share of other classes' "
                 "images that the spot, pasted onto them, must turn into the class (a mark transfers, a part does not)")


@dataclass(frozen=True)
class HotspotParams(UsesMaps):
    """What the hotspot judge reads (`auditor.checks.hotspots`), shared by both shortcut checks:
    maps from `source`, each map's densest `window`, classes with at least `min_group` maps,
    a `reference_size` of correct predictions per class, and the optional confirmation by filling."""

    source: Source = "tfa"
    method: str | None = choice(SALIENCY_METHODS, default=None)
    window: float = bounded(0.01, 1.0, default=0.15, help="window side as a fraction of the image side")
    max_recurrence: float | None = bounded(0.0, 1.0, default=None,
                                           help="largest excess share of a class's maps peaking at one spot")
    min_group: int = bounded(1, None, default=10, help="classes with fewer maps are not judged for recurrence")
    min_flip_share: float | None = bounded(0.0, 1.0, default=None, help=FLIP_HELP)
    min_transfer_share: float = bounded(0.0, 1.0, default=0.35, help=TRANSFER_HELP)
    reference_size: int = bounded(1, None, default=300, help="correct examples per class in the reference")
    k: int = bounded(1, 1000, default=3)
    sample: int | None = bounded(1, None, default=None, help="measure at most this many selected examples")


@check_kind("saliency_concentration",
            description="attribution mass in the densest window, and hotspots recurring off the object")
@dataclass(frozen=True)
class ConcentrationParams(HotspotParams):
    max_mass: float = bounded(0.0, 1.0, default=1.0, help="largest mass share one window may hold per map")


@check_kind("region_mass", description="attribution mass inside a declared region")
@dataclass(frozen=True)
class RegionParams(UsesMaps):
    max_mass: float = bounded(0.0, 1.0, help="largest mass share the region may hold per map")
    region: str | None = choice(REGIONS, default=None)
    box: tuple[float, ...] | None = None
    thickness: float = bounded(0.01, 0.5, default=0.1, help="border width as a fraction of the image side")
    source: Source = "var"
    method: str | None = choice(SALIENCY_METHODS, default=None)
    k: int = bounded(1, 1000, default=3)
    sample: int | None = bounded(1, None, default=None)

    @property
    def area(self) -> str | tuple[float, ...]:
        """The box if one is given, else the named region (`border` by default)."""
        return self.box if self.box is not None else self.region or "border"

    def validate(self, where: Where) -> None:
        super().validate(where)
        if self.box is not None and self.region is not None:
            raise where.child("box").error("give either `region` or `box`, not both",
                                           fix="remove `region:` to measure the box, or `box:` for the region")
        if self.box is not None and (len(self.box) != 4 or not all(0 <= v <= 1 for v in self.box) or not (
                self.box[0] < self.box[2] and self.box[1] < self.box[3])):
            raise where.child("box").error(f"box {list(self.box)} is not [top, left, bottom, right] in 0..1",
                                           fix="write e.g. `box: [0.0, 0.0, 0.2, 0.2]` (fractions of the side)")


@check_kind("shortcut_carriers", per_example=False,
            description="training images that carry a flagged shortcut hotspot (occlusion of the spot)")
@dataclass(frozen=True)
class CarrierParams(HotspotParams):
    """The hotspot is found by the judge `saliency_concentration` uses (same `source`, `window`,
    `max_recurrence`, `min_group`, `reference_size`); then every training image of the
    hotspot's class is a candidate carrier."""

    source: Source = "var"
    max_recurrence: float = bounded(0.0, 1.0, default=0.35,
                                    help="excess recurrence above which a class's hotspot is followed into the training data")
    min_group: int = bounded(1, None, default=30, help="classes with fewer error maps are not judged")
    max_carrier_share: float = bounded(0.0, 1.0, default=0.0,
                                       help="largest share of the class's training images that may carry the spot")
    min_z: float = bounded(0.0, None, default=5.0, help="robust z-score of the occlusion drop that makes a carrier")
    carrier_reference: int = bounded(10, None, default=1000,
                                     help="training images of other classes whose occlusion drop is the reference")


@check_kind("single_image_errors",
            description="errors driven by one training image: its Grad-Cos far above the next proponent's")
@dataclass(frozen=True)
class SingleImageParams(UsesInfluence):
    """An error is single-image driven when its top-1 proponent stands apart (the gap to the
    top-2 score is a robust z-score above `min_z` against the gaps of the selected examples)
    and explains it nearly alone (its lead, the gap over the top-2's distance to a perfect
    Grad-Cos of 1, is at least `min_lead`)."""

    min_z: float = bounded(0.0, None, default=5.0, help="robust z-score of the top-1 minus top-2 Grad-Cos gap")
    min_lead: float = bounded(0.0, 1.0, default=0.8,
                              help="(top-1 − top-2) / (1 − top-2): share of the way to a perfect match the driver leads")
    k: int = bounded(2, 1000, default=5)

    def draws_tfa(self) -> bool:
        return True                 # each flagged error's map with its driver

    def against(self, settings: Any, where: Where) -> None:
        super().against(settings, where)
        if settings.attribution.influence != "grad_cos":
            raise where.error("`single_image_errors` judges Grad-Cos scores (its lead assumes scores of at most 1), "
                              f"and this audit scores influence with `{settings.attribution.influence}`",
                              fix="remove `settings.attribution.influence` (Grad-Cos, the default) or this rule")


@check_kind("mislabel_suspects", per_example=False,
            description="training images whose neighbours in the model's representation carry another label")
@dataclass(frozen=True)
class MislabelParams(Params):
    """Suspects: training images of which, in one of the model's representations (its mid-depth
    feature map and its head's input; `layer:` names one module instead), at least
    `min_suggested_share` of their `neighbours` nearest training images agree on one other label
    while few carry their own: at most `max_own_share`, or a share `max_own_z` robust standard
    deviations (or more) below its class's median; ranked by the two depths' votes averaged, the
    suggested label the averaged vote's. A model that fits a wrong label hides it from its loss;
    its representations still resemble the true class (benchmarks/label_errors.py). The rule fails
    when suspects are more than `max_share` of the training set."""

    max_own_share: float = bounded(0.0, 1.0, default=0.1,
                                   help="share of an image's neighbours with its own label at or below which it is a suspect")
    max_own_z: float | None = bounded(hi=0.0, default=-4.0,
                                      help="robust z-score of the own-label share within its class at or below "
                                           "which it is a suspect too (null: the share alone)")
    min_suggested_share: float = bounded(0.0, 1.0, default=0.5,
                                         help="share of its neighbours that must agree on one other label")
    neighbours: int = bounded(1, 1000, default=25, help="nearest training images that vote on each image's label")
    layer: str | None = None
    max_share: float = bounded(0.0, 1.0, default=0.0, help="largest share of the training set that may be suspects")
    explain: int = bounded(0, 1000, default=20, help="suspects (strongest disagreement first) explained in full")

    def ranks_training(self) -> bool:
        return self.explain > 0     # an explanation names the test predictions a suspect drives and opposes

    def draws_tfa(self) -> bool:
        return self.explain > 0     # and the TFA map of the strongest of those links

