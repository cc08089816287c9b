"""pytest plugin: each `audit_*.yaml` / `*.audit.yaml` file becomes one test item per rule.

A thin router: hooks hand off to `AuditSession` (session.py); state lives in `config.stash`;
torch is imported only when an audit file is collected.
"""

from __future__ import annotations

import re

import warnings
from pathlib import Path
from typing import Any

import pytest

SESSIONS = pytest.StashKey[dict]()
REPORTS = pytest.StashKey[list]()
BASELINES = pytest.StashKey[list]()
LOAD_ERRORS = pytest.StashKey[dict]()      # audit file → the rule whose setup reported its load error


class AuditWarning(UserWarning):
    """A rule with `severity: warn` did not hold."""


class RuleFailed(Exception):
    """Raised by a rule item whose rule failed; formatted by `RuleItem.repr_failure`."""

    def __init__(self, outcome: Any) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("auditor", "model and dataset audits")
    group.addoption("--audit-report", dest="audit_report", default=None, metavar="DIR",
                    help="write results.json (and report files) for each audit under DIR")
    group.addoption("--audit-device", dest="audit_device", default=None, metavar="DEVICE",
                    help="override the audits' settings.device (auto, cpu, cuda, cuda:N)")
    group.addoption("--audit-max-examples", dest="audit_max_examples", type=int, default=10, metavar="N",
                    help="failing examples shown per rule in the terminal (default 10)")
    group.addoption("--audit-max-panels", dest="audit_max_panels", type=int, default=8, metavar="N",
                    help="evidence PNGs written per failing rule with --audit-report (default 8)")
    group.addoption("--audit-update-baseline", dest="audit_update_baseline", action="store_true", default=False,
                    help="record each rule that runs (metric and failing set) in AUDIT.baseline.json")


def pytest_configure(config: pytest.Config) -> None:
    if config.option.audit_report:
        from auditor.errors import AuditError
        from auditor.files import check_writable

        try:
            check_writable(config.option.audit_report, "--audit-report")
        except AuditError as error:
            raise pytest.UsageError(str(error)) from None
    config.stash[SESSIONS] = {}
    config.stash[REPORTS] = []
    config.stash[BASELINES] = []
    config.stash[LOAD_ERRORS] = {}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    name = file_path.name
    if file_path.suffix in (".yaml", ".yml") and (name.startswith("audit_") or name.endswith(".audit.yaml")):
        if declares_audit(file_path):
            return AuditFile.from_parent(parent, path=file_path)
    return None


def declares_audit(path: Path) -> bool:
    """True when the file has a top-level `audit:` key: an unrelated `audit_*.yaml` in a
    repository is not collected (and cannot abort the session); an audit file with mistakes is."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True          # unreadable: collect it, so that the error is reported
    return re.search(r"^audit\s*:", text, flags=re.MULTILINE) is not None


class AuditFile(pytest.File):
    """An audit YAML file; parsing it yields one `RuleItem` per rule (includes resolved)."""

    def collect(self):
        from auditor.session import AuditSession
        from auditor.spec import load_spec

        spec = load_spec(self.path)
        session = AuditSession(spec, device=self.config.option.audit_device,
                               update_baseline=self.config.option.audit_update_baseline)
        self.config.stash[SESSIONS][str(self.path)] = session
        for rule in spec.rules:
            item = RuleItem.from_parent(self, name=rule.name, rule=rule, audit=session)
            for tag in rule.tags:
                self.config.addinivalue_line("markers", f"{tag}: audit rules tagged '{tag}'")
                item.add_marker(tag)
            yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        from auditor.errors import AuditError

        if isinstance(excinfo.value, AuditError):
            return f"invalid audit: {excinfo.value}"
        return super().repr_failure(excinfo)


class RuleItem(pytest.Item):
    """One rule of an audit. Items of one file share the file's `AuditSession` (one engine)."""

    def __init__(self, *, rule: Any, audit: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule = rule
        self.audit = audit

    def setup(self) -> None:
        """Load the audit's model and data once per file: a failure there is ONE error for the
        audit (its first item), the other rules are skipped with a pointer to it."""
        from auditor.errors import AuditError

        failed = self.config.stash[LOAD_ERRORS].get(str(self.path))
        if failed is not None:
            pytest.skip(f"not run: the audit's model or data failed to load (error at rule '{failed}')")
        try:
            self.audit.prepare()
            return
        except AuditError as error:
            message = f"audit error: {error}"
        self.config.stash[LOAD_ERRORS][str(self.path)] = self.rule.name
        pytest.fail(message, pytrace=False)

    def runtest(self) -> None:
        outcome = self.audit.run_rule(self.rule)
        self.user_properties.append(("audit_status", outcome.status))
        if outcome.result is not None:
            r = outcome.result
            self.user_properties += [("audit_metric", r.metric), ("audit_value", r.value),
                                     ("audit_threshold", r.threshold), ("audit_n_selected", r.n_selected),
                                     ("audit_n_failures", len(r.failures))]
        if outcome.status != "passed" and outcome.failures and self.config.option.audit_report:
            self._attach_panels(outcome)
        if outcome.status == "failed":
            raise RuleFailed(outcome)
        if outcome.status == "warned":
            warnings.warn_explicit(
                AuditWarning(f"rule '{self.rule.name}' did not hold (severity: warn): {outcome.message}"),
                AuditWarning, filename=str(self.rule.where.path), lineno=self.rule.where.line)

    def _attach_panels(self, outcome: Any) -> None:
        """Write the rule's evidence PNGs now, so the item (and pytest-html) can show them."""
        from auditor.report.panels import write_panels

        folder = report_folder(self.config, self.audit) / "panels"
        paths = write_panels(self.audit.engine, outcome, folder, self.config.option.audit_max_panels)
        self.audit.panels[self.rule.name] = paths
        self.user_properties.append(("audit_panels", [str(p) for p in paths]))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        from auditor.errors import AuditError
        from auditor.report import failure_text

        if isinstance(excinfo.value, RuleFailed):
            return failure_text(excinfo.value.outcome, self.config.option.audit_max_examples)
        if isinstance(excinfo.value, AuditError):
            return f"audit error: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.rule.where.line - 1, f"audit rule: {self.rule.name}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    sessions = [s for s in config.stash.get(SESSIONS, {}).values() if s.outcomes]
    if not sessions:
        return
    from auditor.report import summary_table

    for session in sessions:
        terminalreporter.section(f"audit {session.spec.name}")
        terminalreporter.write_line(summary_table(session.outcomes.values()))
    for index in config.stash.get(REPORTS, []):
        terminalreporter.write_line(f"audit report: {index}")
    for baseline in config.stash.get(BASELINES, []):
        terminalreporter.write_line(f"audit baseline written: {baseline}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    report_dir = session.config.option.audit_report
    sessions = [s for s in session.config.stash.get(SESSIONS, {}).values() if s.outcomes]
    for audit in sessions:
        written = audit.finish()
        if written is not None:
            session.config.stash[BASELINES].append(written)
    if not sessions:
        return
    from auditor.report import write_report, write_step_summary

    for audit in sessions:
        index = None
        if report_dir:
            index = write_report(report_folder(session.config, audit), audit, audit.outcomes.values(),
                                 session.config.option.audit_max_panels, panels=audit.panels)
            session.config.stash[REPORTS].append(index)
        write_step_summary(audit, audit.outcomes.values(), index)


def report_folder(config: pytest.Config, audit: Any) -> Path:
    """`--audit-report DIR` itself for one audit file; `DIR/<file stem>` for several: one
    folder per audit file, so two audits with the same `audit:` name never share one."""
    root = Path(config.option.audit_report)
    return root if len(config.stash[SESSIONS]) == 1 else root / audit.spec.path.stem


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach a failing rule's panels to its report as pytest-html extras, when that plugin is present."""
    outcome = yield
    if call.when != "call" or not isinstance(item, RuleItem):
        return
    paths = item.audit.panels.get(item.rule.name)
    if not paths:
        return
    try:
        from pytest_html import extras
    except ImportError:
        return
    report = outcome.get_result()
    report.extras = getattr(report, "extras", []) + [extras.png(str(p)) for p in paths]
