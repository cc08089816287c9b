"""An audit session: one audit's rules run against one shared engine; used by the CLI and the
pytest plugin. Creating a session imports no torch: the engine and the checks load when the
first rule runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.baseline import BaselineBook, BaselineDiff
from auditor.errors import AuditError, CannotJudge
from auditor.progress import note
from auditor.spec import AuditSpec, RuleSpec
from auditor.suggest import did_you_mean

if TYPE_CHECKING:
    from auditor.checks import CheckResult
    from auditor.engine import Engine
    from auditor.target import Target

PASSED, FAILED, WARNED, INCONCLUSIVE = "passed", "failed", "warned", "inconclusive"


@dataclass
class RuleOutcome:
    """A rule's verdict: `status` is passed / failed / warned / inconclusive (the rule could not
    judge: the message says why), with the check's numbers."""

    rule: RuleSpec
    status: str
    result: CheckResult | None
    message: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    baseline: BaselineDiff | None = None

    @property
    def failures(self) -> list:
        return self.result.failures if self.result else []

    def summary(self) -> str:
        """One line: metric, comparison, threshold, failing count, tolerance."""
        if self.result is None:
            return self.message
        r = self.result
        text = f"{r.metric} = {r.value:.4g} (required {r.comparison} {r.threshold:g})"
        if self.rule.per_example:
            text += f"; {len(r.failures)} of {r.n_selected} examples fail ({self.rule.tolerance()})"
        if self.baseline is not None:
            text += f"; {self.baseline.summary()}"
        return text


class AuditSession:
    """One audit: its spec, a lazily built engine, and the outcome of every rule run so far.

    `update_baseline` records every rule that runs into the audit's baseline file (`finish`).
    `load` builds the target from the spec: `load_target` (the YAML's model and data) by
    default; the Python API passes the user's own objects this way.
    """

    def __init__(self, spec: AuditSpec, device: str | None = None, update_baseline: bool = False,
                 load: Callable[[AuditSpec], Target] | None = None) -> None:
        self.spec = spec.with_device(device)
        self.outcomes: dict[str, RuleOutcome] = {}
        self.baseline = BaselineBook(spec.path, spec.name, update=update_baseline)
        self._load = load
        self._engine = None
        self.warnings: list[str] = []      # what `prepare` found suspicious about what the model is fed

    @property
    def engine(self) -> Engine:
        """Model, data and the attribution caches, loaded on first use (torch imports here)."""
        if self._engine is None:
            from auditor.engine import Engine
            from auditor.target import load_target

            self._engine = Engine((self._load or load_target)(self.spec))
        return self._engine

    def prepare(self) -> None:
        """Load the model and data and predict the test set: where model and data errors surface
        (raised as `AuditError`), before any rule runs; and everything the loaded model and data
        decide about the rules (a `k` above the training-set size, a class in `on:` the data lacks,
        a module in `layers:` the model lacks), before anything expensive."""
        engine = self.engine
        n_train = len(engine.target.train)
        for rule in self.spec.rules:
            k = rule.params.proponents_needed()
            if k > n_train:
                raise rule.where.child("k").error(
                    f"k={k} proponents per example, but the training set has {n_train} images",
                    fix=f"use k of at most {n_train} (or audit the full training set)")
        _ = engine.predictions
        self.warnings = engine.sanity()
        for rule in self.spec.rules:
            engine.select(rule.selection)           # class names and indices against the data
        if self.spec.settings.attribution.layers is not None:
            _ = engine.index.parameter_names        # module names against the model
        modules = dict(engine.target.model.named_modules())
        for rule in self.spec.rules:
            layer = getattr(rule.params, "layer", None)
            if isinstance(layer, str) and layer not in modules:
                raise rule.where.child("layer").error(
                    f"the model has no module named '{layer}'",
                    fix=did_you_mean(layer, [m for m in modules if m], "module names"))
        note(engine.memory_note(self.spec.rules))       # before anything expensive

    def run_rule(self, rule: RuleSpec) -> RuleOutcome:
        """Evaluate one rule (errors in the user's input propagate as `AuditError`; a rule that
        cannot run on this model is `inconclusive`, and the next rules still run)."""
        start = time.perf_counter()
        try:
            outcome = self._evaluate(rule)
        except CannotJudge as exc:
            outcome = RuleOutcome(rule, INCONCLUSIVE, None, f"cannot judge: {self._placed(exc, rule)}")
        outcome.seconds = time.perf_counter() - start
        self.outcomes[rule.name] = outcome
        return outcome

    def run_all(self) -> list[RuleOutcome]:
        return [self.run_rule(rule) for rule in self.spec.rules]

    def finish(self) -> Path | None:
        """Write the baseline entries this run recorded; the baseline file, or None if untouched."""
        return self.baseline.save()

    def _placed(self, exc: AuditError, rule: RuleSpec) -> AuditError:
        """`exc` at the line it is about: the model's for a `model` field, else the rule's."""
        if exc.path is not None:
            return exc
        model = (exc.field or "").startswith("model") and self.spec.model is not None
        where = self.spec.model.where if model else rule.where
        return type(exc)(exc.message, path=where.path, line=where.line, field=exc.field, fix=exc.fix)

    def _evaluate(self, rule: RuleSpec) -> RuleOutcome:
        from auditor.checks import CHECKS

        engine = self.engine
        indices = engine.select(rule.selection)
        if len(indices) == 0:
            return _empty(rule, None, f"selection `on: {rule.selection.describe()}` matched no test example",
                          "an empty selection cannot pass")
        check = CHECKS.get(rule.check)(rule.params)
        result = check.evaluate(engine, indices)
        result.failures = [with_path(f, engine) for f in result.failures]
        if result.n_selected == 0:
            return _empty(rule, result, result.extra.get("note", "the check had nothing to measure"),
                          "an empty measurement cannot pass")
        if result.inconclusive:
            return RuleOutcome(rule, INCONCLUSIVE, result, f"cannot judge: {result.inconclusive}")
        passed = judge(rule, len(result.failures), result.n_selected) if rule.per_example else True
        if result.passed is not None:
            passed = passed and result.passed
        diff = self.baseline.check(rule, result)
        if diff is not None and diff.regressed:
            passed = False
        outcome = RuleOutcome(rule, PASSED if passed else _not_held(rule), result, "", baseline=diff)
        outcome.message = outcome.summary()
        return outcome


def with_path(finding: Any, engine: Engine) -> Any:
    """`finding` with its image's file, when the dataset knows it (ImageFolder, `paths`)."""
    path = engine.image_path(finding.kind, finding.index)
    return replace(finding, path=path) if path else finding


def _not_held(rule: RuleSpec) -> str:
    """The status of a rule that did not hold: failed, or warned under `severity: warn`."""
    return WARNED if rule.severity == "warn" else FAILED


def _empty(rule: RuleSpec, result: CheckResult | None, what: str, why: str) -> RuleOutcome:
    """Nothing was measured: a pass only when the rule says `allow_empty: true`."""
    if rule.allow_empty:
        return RuleOutcome(rule, PASSED, result, f"{what} (allowed by allow_empty)")
    return RuleOutcome(rule, _not_held(rule), result,
                       f"{what}; {why}. Set `allow_empty: true` if that is expected")


def judge(rule: RuleSpec, n_failures: int, n_selected: int) -> bool:
    """Apply the rule's tolerance to a per-example check's failure count."""
    if rule.mostly is not None:
        return (n_selected - n_failures) / n_selected >= rule.mostly
    return n_failures <= (rule.max_failures or 0)
