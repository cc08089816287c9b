"""pytest plugin: each `audit_*.yaml` / `*.audit.yaml` file becomes one test item per rule.

A thin router: hooks hand off to `AuditSession` (session.py); state lives in `config.stash`;
torch is imported only when an audit file is collected.
"""

from __future__ import annotations

import re
import shutil
import tempfile

import warnings
from pathlib import Path
from typing import Any

import pytest

SESSIONS = pytest.StashKey[dict]()
REPORTS = pytest.StashKey[list]()
BASELINES = pytest.StashKey[list]()
LOAD_ERRORS = pytest.StashKey[dict]()      # audit file → the rule whose setup reported its load error
RESULTS = pytest.StashKey[dict]()          # audit file → {"audit", "folder", "rules": [entry...]}, from reports
WARNED = pytest.StashKey[set]()            # audit files whose data warnings were issued


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
    group.addoption("--audit-strict", dest="audit_strict", action="store_true", default=False,
                    help="a rule that cannot judge (inconclusive) fails instead of being skipped")


def pytest_configure(config: pytest.Config) -> None:
    if config.option.audit_report:
        from auditor.errors import AuditError
        from auditor.files import check_writable

        try:
            check_writable(config.option.audit_report, "--audit-report")
        except AuditError as error:
            raise pytest.UsageError(str(error)) from None
    if config.option.audit_update_baseline and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--audit-update-baseline writes one file per audit: run it without -n")
    if config.option.verbose < 0:          # pytest -q: no progress bars or plan notes
        from auditor import progress

        progress.set_quiet(True)
    config.stash[SESSIONS] = {}
    config.stash[RESULTS] = {}
    config.pluginmanager.register(ResultGatherer(config), "auditor-results")
    config.stash[REPORTS] = []
    config.stash[BASELINES] = []
    config.stash[LOAD_ERRORS] = {}
    config.stash[WARNED] = set()


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
        text = path.read_text(encoding="utf-8-sig", errors="replace")     # a BOM (Windows editors) is not text
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
        self.panel_scratch: Path | None = None      # panels written only for pytest-html (removed once inlined)

    def setup(self) -> None:
        """Load the audit's model and data once per file: a failure there is ONE error for the
        audit (its first item), the other rules are skipped with a pointer to it."""
        from auditor.errors import AuditError

        failed = self.config.stash[LOAD_ERRORS].get(str(self.path))
        if failed is not None:
            pytest.skip(f"not run: the audit's model or data failed to load (error at rule '{failed}')")
        try:
            self.audit.prepare()
            self._warn_once()
            return
        except AuditError as error:
            message = f"audit error: {error}"
        self.config.stash[LOAD_ERRORS][str(self.path)] = self.rule.name
        pytest.fail(message, pytrace=False)

    def _warn_once(self) -> None:
        """What `prepare` found suspicious about the data: one pytest warning per audit file."""
        warned = self.config.stash[WARNED]
        if str(self.path) in warned:
            return
        warned.add(str(self.path))
        model = self.audit.spec.model
        for warning in self.audit.warnings:
            warnings.warn_explicit(AuditWarning(f"audit '{self.audit.spec.name}': {warning}"), AuditWarning,
                                   filename=str(self.path), lineno=model.where.line if model and model.where else 1)

    def runtest(self) -> None:
        from auditor.report import rule_entry

        outcome = self.audit.run_rule(self.rule)
        self.user_properties.append(("audit_status", outcome.status))
        if outcome.result is not None:
            r = outcome.result
            self.user_properties += [("audit_metric", r.metric), ("audit_value", r.value),
                                     ("audit_threshold", r.threshold), ("audit_n_selected", r.n_selected),
                                     ("audit_n_failures", len(r.failures))]
        panels = []
        if outcome.status != "passed" and outcome.failures and (self.config.option.audit_report or _html(self.config)):
            panels = self._write_panels(outcome)
        # What the report needs from this item, as plain values: it travels on the test report
        # (to the pytest-xdist controller too), which writes index.html from all items.
        self.audit_result = {"audit": self.audit.spec.name, "file": str(self.path), "order": self.audit_order,
                             "folder": str(report_folder(self.config, self.audit)) if self.config.option.audit_report
                             else None, "entry": rule_entry(outcome), "panels": [str(p) for p in panels],
                             "warnings": list(self.audit.warnings)}
        if outcome.status == "failed" or (outcome.status == "inconclusive" and self.config.option.audit_strict):
            raise RuleFailed(outcome)
        if outcome.status == "inconclusive":
            pytest.skip(f"inconclusive (rule '{self.rule.name}', {self.rule.where.label()}): {outcome.message}")
        if outcome.status == "warned":
            warnings.warn_explicit(
                AuditWarning(f"rule '{self.rule.name}' did not hold (severity: warn): {outcome.message}"),
                AuditWarning, filename=str(self.rule.where.path), lineno=self.rule.where.line)

    @property
    def audit_order(self) -> int:
        return self.audit.spec.rules.index(self.rule)

    def _write_panels(self, outcome: Any) -> list[Path]:
        """Write the rule's evidence PNGs now, so the item (and pytest-html) can show them: in the
        report folder, or a temporary one when only pytest-html asked for them."""
        from auditor.report.panels import write_panels

        if self.config.option.audit_report:
            folder = report_folder(self.config, self.audit) / "panels"
        else:                   # inlined into pytest-html's report by pytest_runtest_makereport, then removed
            folder = self.panel_scratch = Path(tempfile.mkdtemp(prefix="audit-panels-"))
        paths = write_panels(self.audit.engine, outcome, folder, self.config.option.audit_max_panels)
        if self.config.option.audit_report:
            self.user_properties.append(("audit_panels", [str(p) for p in paths]))
        return paths

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        from auditor.errors import AuditError
        from auditor.report import failure_text

        if isinstance(excinfo.value, RuleFailed):
            return failure_text(excinfo.value.outcome, self.config.option.audit_max_examples,
                                self.audit_result["entry"]["advice"])
        if isinstance(excinfo.value, AuditError):
            return f"audit error: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.rule.where.line - 1, f"audit rule: {self.rule.name}"


class ResultGatherer:
    """Gathers each rule's result from its test report: in this process, or from xdist workers."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = getattr(report, "audit_result", None)
        if report.when != "call" or not result:
            return
        audits = self.config.stash[RESULTS]
        audit = audits.setdefault(result["file"], {"audit": result["audit"], "folder": result["folder"], "rules": [],
                                                   "warnings": result.get("warnings", [])})
        audit["rules"].append(result)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    audits = config.stash.get(RESULTS, {})
    if not audits:
        return
    from auditor.report import summary_table

    for file, audit in audits.items():
        terminalreporter.section(f"audit {audit['audit']} ({Path(file).name})")
        terminalreporter.write_line(summary_table(r["entry"] for r in _ordered(audit)))
    for index in config.stash.get(REPORTS, []):
        terminalreporter.write_line(f"audit report: {index}")
    for baseline in config.stash.get(BASELINES, []):
        terminalreporter.write_line(f"audit baseline written: {baseline}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    for audit in [s for s in config.stash.get(SESSIONS, {}).values() if s.outcomes]:
        written = audit.finish()
        if written is not None:
            config.stash[BASELINES].append(written)
    if hasattr(config, "workerinput") or not config.stash.get(RESULTS, {}):
        return          # an xdist worker: its results travel to the controller, which writes the report
    from auditor.report import audit_document, render_report, write_step_summary

    for file, audit in config.stash[RESULTS].items():
        rules = _ordered(audit)
        document = audit_document(audit["audit"], file, [r["entry"] for r in rules], audit["warnings"])
        index = None
        if audit["folder"]:
            index = render_report(Path(audit["folder"]), document,
                                  {r["entry"]["name"]: [Path(p) for p in r["panels"]] for r in rules})
            config.stash[REPORTS].append(index)
        write_step_summary(document, index)


def _ordered(audit: dict) -> list[dict]:
    """An audit's rule results in the order of its file (xdist workers finish in any order)."""
    return sorted(audit["rules"], key=lambda r: r["order"])


def _html(config: pytest.Config) -> bool:
    """True when pytest-html writes a report in this run."""
    return bool(getattr(config.option, "htmlpath", None))


def report_folder(config: pytest.Config, audit: Any) -> Path:
    """`--audit-report DIR` itself for one audit file; `DIR/<file stem>` for several: one
    folder per audit file, so two audits with the same `audit:` name never share one."""
    root = Path(config.option.audit_report)
    return root if len(config.stash[SESSIONS]) == 1 else root / audit.spec.path.stem


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Put the rule's result on its report, and its panels as pytest-html extras (inlined PNGs)."""
    outcome = yield
    if call.when != "call" or not isinstance(item, RuleItem) or not hasattr(item, "audit_result"):
        return
    report = outcome.get_result()
    report.audit_result = item.audit_result
    if item.audit_result["panels"] and _html(item.config):
        import base64

        from pytest_html import extras

        report.extras = getattr(report, "extras", []) + [
            extras.png(base64.b64encode(Path(p).read_bytes()).decode("ascii"), name=Path(p).name)
            for p in item.audit_result["panels"]]
    scratch = item.panel_scratch
    if scratch is not None:                     # the PNGs now live in the report; nothing points at the files
        shutil.rmtree(scratch, ignore_errors=True)
        report.audit_result = {**item.audit_result, "panels": []}
