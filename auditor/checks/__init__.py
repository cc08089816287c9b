"""Rule kinds' computations, one module per kind. Importing this package registers them all
under the names `auditor.spec.checks` declares."""

from auditor.checks import (accuracy, harmful_training_images, influence_dominance,  # noqa: F401  (registers)
                            mislabel_suspects, proponent_label_agreement, region_mass, saliency_concentration,
                            shortcut_carriers, single_image_errors)
from auditor.checks.base import CHECKS, AuditEngine, Check, CheckResult, Evidence, Finding

__all__ = ["CHECKS", "AuditEngine", "Check", "CheckResult", "Evidence", "Finding"]
