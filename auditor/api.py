"""The Python API: `auditor.audit(model, train, test, rules=...)` audits objects a user already
has (e.g. in their own pytest test) through the same session, checks and report as the YAML
runners; only where the model and data come from differs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.session import FAILED, PASSED, AuditSession, RuleOutcome
from auditor.spec import AuditSpec, Where, python_spec

__all__ = ["AuditFailed", "AuditResult", "audit"]


class AuditFailed(AssertionError):
    """Raised by `AuditResult.assert_passed`: pytest shows its message like a failing YAML rule."""


def audit(model: Any, train: Any, test: Any, rules: Any, *, classes: Any = None, settings: dict | None = None,
          name: str = "audit", device: str | None = None) -> AuditResult:
    """Run `rules` on `model` trained on `train` and evaluated on `test` (torch Datasets of
    `(image, label)`); return the result of every rule.

    `rules`: a built-in pack's name (`"shortcuts"`), a rules file, a rule mapping as in YAML,
    or a list of these. `settings`: the YAML `settings:` mapping (device, batch_size, seed,
    cache_dir, attribution). `classes`: the class names, when the datasets have no `classes`.
    The model is audited in eval mode and given back in the mode and on the device it came in.
    """
    spec = python_spec(name, rules, settings)
    session = AuditSession(spec, device=device, load=_loader(model, train, test, classes, spec))
    with held(model):
        session.prepare()
        session.run_all()
    session.finish()
    return AuditResult(session, model)


def _loader(model: Any, train: Any, test: Any, classes: Any, spec: AuditSpec):
    """The session's target: the user's objects, checked like a YAML audit's (arguments located by name)."""
    where = {part: Where(spec.path, None, f"audit({part}=...)") for part in ("model", "train", "test", "classes")}

    def load(audit_spec: AuditSpec):
        from auditor.target import bind_target

        return bind_target(audit_spec, model, train, test, where, tuple(map(str, classes)) if classes else None)
    return load


@contextmanager
def held(model: Any) -> Iterator[None]:
    """Give `model` back in its training mode and on its device, whatever the audit did with it."""
    training = model.training
    device = next((p.device for p in model.parameters()), None)
    try:
        yield
    finally:
        model.train(training)
        if device is not None:
            model.to(device)


@dataclass
class AuditResult:
    """Every rule's outcome; `passed` unless a rule with `severity: fail` failed (a rule that
    could not judge is `inconclusive`: listed in `message()`, not a failure)."""

    session: AuditSession
    model: Any

    @property
    def outcomes(self) -> dict[str, RuleOutcome]:
        return dict(self.session.outcomes)

    @property
    def passed(self) -> bool:
        return all(o.status != FAILED for o in self.session.outcomes.values())

    @property
    def findings(self) -> dict[str, list]:
        """Each rule that did not hold: its failing items (`Finding`: kind, index, value, path, evidence)."""
        return {name: o.failures for name, o in self.session.outcomes.items() if o.status != PASSED}

    def message(self, max_examples: int = 10) -> str:
        """The rules that did not hold, each as a failing YAML rule reads in pytest."""
        from auditor.report import failure_text

        texts = [failure_text(o, max_examples) for o in self.session.outcomes.values() if o.status != PASSED]
        return "\n\n".join(texts) or f"audit '{self.session.spec.name}': all {len(self.session.outcomes)} rules passed"

    def assert_passed(self, max_examples: int = 10) -> None:
        """Raise `AuditFailed` (an AssertionError) with `message()` when a rule failed."""
        if not self.passed:
            raise AuditFailed(self.message(max_examples))

    def write_report(self, folder: str | Path, max_panels: int = 8) -> Path:
        """Write `index.html`, `results.json` and the panels under `folder`; return `index.html`."""
        from auditor.report import results_document, write_report, write_step_summary

        with held(self.model):
            self.model.eval().to(self.session.engine.device)
            index = write_report(Path(folder), self.session, self.session.outcomes.values(), max_panels)
        write_step_summary(results_document(self.session.spec, self.session.outcomes.values(), self.session.warnings),
                           index)
        return index

    def __repr__(self) -> str:
        counts = {s: sum(o.status == s for o in self.session.outcomes.values())
                  for s in ("passed", "failed", "warned", "inconclusive")}
        return f"AuditResult({self.session.spec.name!r}, passed={self.passed}, {counts})"
