"""`python -m auditor ...` (as `torchrun -m auditor featurize AUDIT.yaml` needs)."""

import sys

from auditor.cli import main

sys.exit(main())
