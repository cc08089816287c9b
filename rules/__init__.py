"""The built-in rule packs (`*.yaml` here), installed as `auditor.rules`; an audit includes
one with `include: [{pack: NAME}]`."""
