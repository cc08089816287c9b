"""auditor: pytest-style audits of trained PyTorch vision classifiers and their datasets."""

from auditor.api import AuditFailed, AuditResult, audit
from auditor.errors import AttributionError, AuditError, SpecError, TargetError
from auditor.spec import AuditSpec, RuleSpec, load_spec

__version__ = "0.1.0"

__all__ = ["AttributionError", "AuditError", "AuditFailed", "AuditResult", "AuditSpec", "RuleSpec", "SpecError", "TargetError",
           "__version__", "audit", "load_spec"]
