"""Attribution methods, one module each: gradients, projection, features/store, influence, TFA."""

from auditor.attribution import factored  # noqa: F401  (registers the "factored" projection)
