"""The audit YAML → validated, frozen dataclasses (torch-free; every error names file and line).

- `yaml_source`: safe YAML that remembers lines;  `binding`: YAML mapping → dataclass;
- `selection`: the `on:` field;  `checks`: each check kind's parameters;
- `audit`: the whole file (model, data, settings, includes, rules).
"""

from auditor.spec.audit import (AttributionSettings, AuditSpec, BaselinePolicy, DatasetSpec, ModelSpec, RuleSpec,
                                 Settings, builtin_packs, load_spec, parse_rule, python_spec)
from auditor.spec.binding import Where
from auditor.spec.selection import Selection

__all__ = ["AttributionSettings", "AuditSpec", "BaselinePolicy", "DatasetSpec", "ModelSpec", "RuleSpec", "Selection",
           "Settings", "Where", "builtin_packs", "load_spec", "parse_rule", "python_spec"]
