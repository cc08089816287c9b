"""Rule kinds. Importing this package registers every built-in check."""

from auditor.checks import accuracy, concentration, influence  # noqa: F401  (registers)
from auditor.checks.base import Check, CheckResult, Finding
from auditor.checks.registry import CHECKS, get_check, register

__all__ = ["CHECKS", "Check", "CheckResult", "Finding", "get_check", "register"]
