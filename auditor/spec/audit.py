"""The audit YAML schema: parse and validate a file into frozen dataclasses.

    audit: NAME
    model: {factory: module:function | arch: torchvision.models.NAME, num_classes, checkpoint}
    data:  {train: DATASET, test: DATASET, classes: [...]}
    settings: {device, batch_size, seed, cache_dir, attribution: {...}}
    include: [{pack: shortcuts}, path/to/own_rules.yaml, ...]
    rules: [{name, check, on, severity, max_failures | mostly, tags, baseline, ...check parameters}]

Every error is a `SpecError` naming the file, the line and the field. Nothing here imports
torch: a rule's parameters are judged by its kind's dataclass (`auditor.spec.checks`),
including what depends on the settings (`k` against `top_k`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from auditor.registry import GRADIENT_COMPUTERS, PROJECTIONS, SALIENCY_METHODS
from auditor.spec.binding import Where, bounded, build, choice, expect_mapping, unknown_key_error, where_field
from auditor.spec.checks import CHECK_KINDS
from auditor.spec.selection import Selection, parse_selection
from auditor.spec.yaml_source import LocatedDict, LocatedList, as_located, load_yaml
from auditor.suggest import did_you_mean

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TAG_PATTERN = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: a `module:function` factory or a torchvision architecture."""

    factory: str | None = None
    arch: str | None = None
    num_classes: int | None = bounded(1, default=None)
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_key: str | None = None       # the entry of a checkpoint dict that holds the weights
    where: Where | None = where_field()


@dataclass(frozen=True)
class TransformSpec:
    """Preprocessing for `image_folder` data."""

    resize: int | None = bounded(1, default=None)
    grayscale: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FashionMnistSpec:
    """Fashion-MNIST read from disk (Debian's `dataset-fashion-mnist` by default)."""

    split: Literal["train", "test"] = "train"
    root: str | None = None
    channels: Literal[1, 3] = 1


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: exactly one of `factory`, `image_folder`, `fashion_mnist`."""

    factory: str | None = None
    kwargs: dict = field(default_factory=dict)
    image_folder: str | None = None
    transform: TransformSpec | None = None
    fashion_mnist: FashionMnistSpec | None = None
    limit: int | None = bounded(1, default=None, help="use only the first N examples")
    where: Where | None = where_field()


@dataclass(frozen=True)
class DataSpec:
    train: DatasetSpec
    test: DatasetSpec
    classes: tuple[str, ...] | None = None
    skip_unreadable: bool = False         # leave out images that cannot be read, listing them, instead of failing
    where: Where | None = where_field()


@dataclass(frozen=True)
class AttributionSettings:
    """Settings shared by the attribution engines (DESIGN.md §1)."""

    layers: tuple[str, ...] | None = None
    projection_dim: int = bounded(1, default=4096, help="gradient dimension kept after projection")
    projection: str = choice(PROJECTIONS, default="factored")
    precision: Literal["float32", "bfloat16", "float16"] = "float32"   # autocast while featurizing (GPU)
    gradient_computer: str = choice(("auto", *GRADIENT_COMPUTERS.names), default="auto")
    shard_size: int | None = bounded(1, default=None, help="training examples per cache shard (default: 1/32 of "
                                     "the training set, 64 to 64 MB of features: an interrupt loses little)")
    test_label: Literal["predicted", "true"] = "predicted"
    influence: Literal["grad_cos", "kernel"] = "grad_cos"      # how proponents are scored (DESIGN.md §1.4)
    damping: float = bounded(0.0, default=1.0, help="`influence: kernel`: λ = damping × the mean diagonal of ΦᵀΦ")
    top_k: int = bounded(1, 1000, default=5)
    chunk_size: int | None = bounded(1, default=None, help="examples per per-example-gradient chunk "
                                     "(default: as many as fit in 512 MB of gradients, at most batch_size)")
    score_chunk: int = bounded(1, default=8192, help="training rows scored per chunk")
    smoothgrad_samples: int = bounded(0, 1024, default=16)
    smoothgrad_sigma: float = bounded(0.0, default=0.1, help="fraction of the input range")
    saliency: str = choice(SALIENCY_METHODS, default="gradient")
    ig_steps: int = bounded(1, 1024, default=32)
    var_temperature: float = bounded(0.0, default=10.0)
    var_tau: float = bounded(-1.0, 1.0, default=0.01)
    var_top_k: int = bounded(1, default=2)
    grad_cam_layer: str | None = None


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    batch_size: int = bounded(1, default=256)
    seed: int = 0
    cache_dir: str = ".auditor_cache"
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    where: Where | None = where_field()


@dataclass(frozen=True)
class BaselinePolicy:
    """A rule's `baseline:` key: how far it may regress against the stored baseline."""

    max_increase: float | None = bounded(0.0, default=None,
                                         help="largest change of the metric in its failing direction")
    no_new_failures: bool = False

    def validate(self, where: Where) -> None:
        if self.max_increase is None and not self.no_new_failures:
            raise where.error("a baseline policy needs `max_increase` or `no_new_failures: true`",
                              fix="e.g. `baseline: {max_increase: 0.02, no_new_failures: true}`")


@dataclass(frozen=True)
class RuleCommon:
    """Keys every rule accepts, whatever its check."""

    name: str
    check: str
    on: Any = "all"
    severity: Literal["fail", "warn"] = "fail"
    max_failures: int | None = bounded(0, default=None)
    mostly: float | None = bounded(0.0, 1.0, default=None, help="share of examples that must pass")
    tags: tuple[str, ...] = ()
    allow_empty: bool = False
    description: str = ""
    baseline: BaselinePolicy | None = None


@dataclass(frozen=True)
class RuleSpec:
    """A validated rule: its check's typed parameters plus the common keys."""

    name: str
    check: str
    params: Any
    selection: Selection
    severity: str
    max_failures: int | None
    mostly: float | None
    tags: tuple[str, ...]
    allow_empty: bool
    description: str
    where: Where
    baseline: BaselinePolicy | None = None

    @property
    def per_example(self) -> bool:
        """True when the check judges examples one by one (the tolerance then applies)."""
        return self.params.per_example

    def tolerance(self) -> str:
        if self.mostly is not None:
            return f"mostly {self.mostly:g}"
        return f"max_failures {self.max_failures or 0}"


@dataclass(frozen=True)
class AuditSpec:
    """A validated audit. `model` and `data` are None when they are Python objects given to
    `auditor.audit`; `path` is then a label (`NAME.audit` in the working directory)."""

    name: str
    path: Path
    model: ModelSpec | None
    data: DataSpec | None
    settings: Settings
    rules: tuple[RuleSpec, ...]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def with_device(self, device: str | None) -> AuditSpec:
        """A copy whose settings use `device` (a command-line override), if given."""
        if not device:
            return self
        return replace(self, settings=replace(self.settings, device=device))


TOP_KEYS = ("audit", "model", "data", "settings", "include", "rules")
PACK_KEYS = ("include", "rules")


def load_spec(path: str | Path) -> AuditSpec:
    """Read and validate the audit YAML at `path` (includes resolved, rules checked)."""
    path = Path(path).resolve()
    doc = _document(path)
    top = Where(path, doc.line, "")
    for key in doc:
        if key not in TOP_KEYS:
            raise unknown_key_error(key, TOP_KEYS, top.child(key, doc.line_of(key)))
    for key in ("audit", "model", "data"):
        if key not in doc:
            raise top.error(f"missing required key '{key}'", fix=f"add a top-level `{key}:` section")
    name = doc["audit"]
    if not isinstance(name, str) or not name.strip():
        raise top.child("audit", doc.line_of("audit")).error("expected a non-empty audit name")
    model = _model(doc["model"], top.child("model", doc.line_of("model")))
    data = build(DataSpec, doc["data"], top.child("data", doc.line_of("data")))
    for dataset in (data.train, data.test):
        _check_dataset(dataset)
    settings = build(Settings, doc.get("settings"), top.child("settings", doc.line_of("settings")))
    rules = _collect_rules(doc, path, settings, stack=(path,), seen=set())
    _check_unique_names(rules)
    return AuditSpec(name=name, path=path, model=model, data=data, settings=settings, rules=tuple(rules))


def python_spec(name: str, rules: Any, settings: Any = None) -> AuditSpec:
    """The audit of `auditor.audit(...)`: its rules and settings validated exactly as a YAML
    file's, located by their place in the arguments (`NAME.audit: rules[0].min_acuracy`).

    `rules` is a built-in pack's name, a rules file's path, one rule mapping, or a list of these.
    """
    path = Path(f"{name}.audit")
    top = Where(path, None, "")
    settings = build(Settings, settings, top.child("settings"))
    entries = list(rules) if isinstance(rules, (list, tuple)) else [rules]
    collected: list[RuleSpec] = []
    seen: set[Path] = set()
    for i, entry in enumerate(entries):
        here = top.child("rules").child(i) if isinstance(rules, (list, tuple)) else top.child("rules")
        if isinstance(entry, (str, Path)):
            entry = {"pack": str(entry)} if str(entry) in builtin_packs() else str(entry)
        if isinstance(entry, str) or (isinstance(entry, dict) and "pack" in entry):
            collected += _included_rules(entry, here, Path("."), settings, (path,), seen)
        elif isinstance(entry, dict):
            collected.append(parse_rule(entry, here, settings))
        else:
            raise here.error(f"expected a pack name, a rules file or a rule mapping, got {entry!r}",
                             fix="e.g. rules='shortcuts' or rules=[{'name': ..., 'check': ...}]")
    if not collected:
        raise top.child("rules").error("no rules given", fix="name a pack (rules='shortcuts') or give rule mappings")
    _check_unique_names(collected)
    return AuditSpec(name=name, path=path, model=None, data=None, settings=settings, rules=tuple(collected))


def _document(path: Path) -> LocatedDict:
    doc = load_yaml(path)
    where = Where(path, 1, "")
    if doc is None:
        raise where.error("the file is empty", fix="write an audit: see README.md for an example")
    return expect_mapping(doc, where)


def _model(raw: Any, where: Where) -> ModelSpec:
    model = build(ModelSpec, raw, where)
    if (model.factory is None) == (model.arch is None):
        raise where.error("give exactly one of `factory` or `arch`",
                          fix="e.g. `factory: mypkg.model:load` or `arch: torchvision.models.resnet18`")
    if model.factory is not None and not FACTORY_PATTERN.match(model.factory):
        raise where.within(raw).child("factory").error(
            f"'{model.factory}' is not of the form module:function", fix="e.g. `mypkg.models:build`")
    if model.arch is not None and model.num_classes is None:
        raise where.error("`arch` needs `num_classes`", fix="add e.g. `num_classes: 10`")
    return model


def _check_dataset(dataset: DatasetSpec) -> None:
    where = dataset.where
    sources = [k for k in ("factory", "image_folder", "fashion_mnist") if getattr(dataset, k) is not None]
    if len(sources) != 1:
        raise where.error(f"give exactly one data source, got {sources or 'none'}",
                          fix="use one of `factory: module:function`, `image_folder: PATH`, `fashion_mnist: {split: train}`")
    if dataset.factory is not None and not FACTORY_PATTERN.match(dataset.factory):
        raise where.error(f"'{dataset.factory}' is not of the form module:function",
                          fix="e.g. `mypkg.data:train_set`")


def _collect_rules(doc: LocatedDict, path: Path, settings: Settings, stack: tuple[Path, ...],
                   seen: set[Path], override: Override | None = None) -> list[RuleSpec]:
    """Rules of `doc`'s includes (depth first, each file once), then its own rules, with the
    including file's `override:` (if any) applied to them."""
    top = Where(path, doc.line, "")
    rules: list[RuleSpec] = []
    includes = doc.get("include") or []
    inc_where = top.child("include", doc.line_of("include"))
    if not isinstance(includes, list):
        raise inc_where.error("expected a list of rule packs", fix="write `include: [{pack: shortcuts}, my_rules.yaml]`")
    for i, entry in enumerate(includes):
        here = inc_where.child(i, includes.line_of(i) if isinstance(includes, LocatedList) else None)
        rules += _included_rules(entry, here, path.parent, settings, stack, seen)
    raw_rules = doc.get("rules") or []
    rules_where = top.child("rules", doc.line_of("rules"))
    if not isinstance(raw_rules, list):
        raise rules_where.error("expected a list of rules", fix="start each rule with `- name: ...`")
    for i, raw in enumerate(raw_rules):
        line = raw_rules.line_of(i) if isinstance(raw_rules, LocatedList) else rules_where.line
        where = rules_where.child(i, line)
        if override is not None:
            raw, where = override.apply(raw, where)
        rules.append(parse_rule(raw, where, settings))
    if override is not None:
        override.check_used([rule.name for rule in rules])
    return rules


def _included_rules(entry: Any, here: Where, base: Path, settings: Settings, stack: tuple[Path, ...],
                    seen: set[Path]) -> list[RuleSpec]:
    """The rules of one include entry (a pack or a rules file), none if it was included before."""
    target, pack_override = _resolve_include(entry, base, here)
    if target in stack:
        chain = " -> ".join(p.name for p in (*stack, target))
        raise here.error(f"include cycle: {chain}", fix="remove one of the includes")
    if target in seen:
        return []
    seen.add(target)
    pack = _document(target)
    pack_where = Where(target, pack.line, "")
    for key in pack:
        if key not in PACK_KEYS:
            raise unknown_key_error(key, PACK_KEYS, pack_where.child(key, pack.line_of(key)))
    return _collect_rules(pack, target, settings, (*stack, target), seen, pack_override)


@dataclass(frozen=True)
class Override:
    """`{pack: NAME, override: {RULE: {key: value}}}`: a pack's rules tuned without copying the
    pack. An overridden rule is validated whole and located at the override (the audit file)."""

    rules: LocatedDict
    where: Where

    @classmethod
    def parse(cls, raw: Any, where: Where) -> Override:
        rules = expect_mapping(as_located(raw, where.line) if isinstance(raw, dict) else raw, where)   # API: plain dicts
        for name, change in rules.items():
            expect_mapping(change, where.child(str(name), rules.line_of(name)))
            if "name" in change or "check" in change:
                key = "name" if "name" in change else "check"
                raise where.child(str(name), change.line_of(key)).error(
                    f"an override cannot change a rule's `{key}`", fix="add a rule of your own instead")
        return cls(rules, where)

    def apply(self, raw: Any, where: Where) -> tuple[Any, Where]:
        """The pack rule `raw` with this override's keys for it (and their lines), or unchanged."""
        name = raw.get("name") if isinstance(raw, dict) else None
        if name not in self.rules:
            return raw, where
        change = self.rules[name]
        merged = LocatedDict({**raw, **change})
        merged.line = change.line
        merged.key_lines = {**{k: change.line for k in raw}, **change.key_lines}
        return merged, Where(self.where.path, change.line, f"{self.where.field}.{name}")

    def check_used(self, names: list[str]) -> None:
        for name in self.rules:
            if name not in names:
                raise self.where.child(str(name), self.rules.line_of(name)).error(
                    f"the pack has no rule '{name}'", fix=did_you_mean(str(name), names, "its rules"))


def builtin_packs() -> dict[str, Path]:
    """The rule packs shipped as `auditor.rules` (top-level `rules/` in the repository), by name."""
    folder = resources.files("auditor.rules")
    return {entry.name.removesuffix(".yaml"): Path(str(entry)) for entry in folder.iterdir()
            if entry.name.endswith(".yaml")}


def _resolve_include(entry: Any, base: Path, where: Where) -> tuple[Path, Override | None]:
    """`{pack: NAME}` (optionally with `override:`) names a built-in pack; a string is a path
    relative to the including file."""
    if isinstance(entry, dict):
        mapping = expect_mapping(entry, where)
        if not set(mapping) <= {"pack", "override"} or not isinstance(mapping.get("pack"), str):
            raise where.error(f"an include mapping is `{{pack: NAME}}` or `{{pack: NAME, override: ...}}`, "
                              f"got {dict(mapping)}",
                              fix="write e.g. `- {pack: shortcuts}`, or a path to your own rules file")
        packs = builtin_packs()
        name = mapping["pack"]
        if name not in packs:
            raise where.child("pack", mapping.line_of("pack")).error(
                f"unknown rule pack '{name}'", fix=did_you_mean(name, sorted(packs), "built-in packs"))
        override = None
        if "override" in mapping:
            override = Override.parse(mapping["override"], where.child("override", mapping.line_of("override")))
        return packs[name].resolve(), override
    if not isinstance(entry, str):
        raise where.error(f"expected a path or `{{pack: NAME}}`, got {entry!r}")
    candidate = base / entry
    if candidate.is_file():
        return candidate.resolve(), None
    packs = builtin_packs()
    stem = Path(entry).stem
    fix = (f"the built-in pack is included as `{{pack: {stem}}}`" if stem in packs
           else "fix the path (relative to this file), or name a built-in pack: "
                + ", ".join(f"{{pack: {name}}}" for name in sorted(packs)))
    raise where.error(f"include '{entry}' not found in {base}", fix=fix)


def parse_rule(raw: Any, where: Where, settings: Settings | None = None) -> RuleSpec:
    """Validate one rule mapping: common keys, then the parameters of its check, then those
    parameters against the audit's `settings` (defaults when not given)."""
    mapping = expect_mapping(raw, where)
    at = where.within(mapping).child  # the line of one of the rule's keys
    check_name = mapping.get("check")
    if not isinstance(check_name, str):
        raise where.error("a rule needs `check: NAME`", fix=f"available checks: {', '.join(CHECK_KINDS.names)}")
    params_cls = CHECK_KINDS.get(check_name, at("check"))
    common_keys = [name for name in RuleCommon.__dataclass_fields__]
    param_keys = list(params_cls.__dataclass_fields__)
    common = build(RuleCommon, mapping, where, exclude=param_keys)
    params = build(params_cls, _subset(mapping, param_keys), where, exclude=common_keys)
    params.against(settings or Settings(), where.within(mapping))
    for tag in common.tags:
        if not TAG_PATTERN.match(tag):
            raise at("tags").error(
                f"tag '{tag}' is not a valid marker name", fix="use letters, digits and underscores")
    if common.max_failures is not None and common.mostly is not None:
        raise at("mostly").error("give either `max_failures` or `mostly`, not both")
    if not params_cls.per_example and (common.max_failures is not None or common.mostly is not None):
        key = "mostly" if common.mostly is not None else "max_failures"
        raise at(key).error(
            f"check '{check_name}' judges an aggregate metric; `{key}` does not apply",
            fix=f"remove `{key}` and set the check's own threshold")
    if not common.name.strip():
        raise at("name").error("rule name must not be empty")
    selection = parse_selection(common.on, at("on"))
    return RuleSpec(name=common.name, check=check_name, params=params, selection=selection,
                    severity=common.severity, max_failures=common.max_failures, mostly=common.mostly,
                    tags=common.tags, allow_empty=common.allow_empty, description=common.description,
                    where=Where(where.path, mapping.line, f"rules[{common.name}]"), baseline=common.baseline)


def _subset(mapping: LocatedDict, keys: list[str]) -> LocatedDict:
    subset = LocatedDict({k: v for k, v in mapping.items() if k in keys})
    subset.line = mapping.line
    subset.key_lines = {k: line for k, line in mapping.key_lines.items() if k in keys}
    return subset


def _duplicate_fix(name: str, places: list[Where]) -> str:
    """Redefining a built-in pack's rule is meant as an override: say how."""
    packs = {path.resolve(): pack for pack, path in builtin_packs().items()}
    pack = next((packs[Path(w.path).resolve()] for w in places if w.path and Path(w.path).resolve() in packs), None)
    if pack is None:
        return "give each rule a unique name"
    return (f"to change the '{pack}' pack's rule, tune it in place: `include: [{{pack: {pack}, override: "
            f"{{{name}: {{key: value}}}}}}]`; or give your own rule another name")


def _check_unique_names(rules: list[RuleSpec]) -> None:
    first: dict[str, RuleSpec] = {}
    for rule in rules:
        if rule.name in first:
            other = first[rule.name].where
            raise rule.where.error(f"duplicate rule name '{rule.name}' (also at {other.label()})",
                                   fix=_duplicate_fix(rule.name, [first[rule.name].where, rule.where]))
        first[rule.name] = rule
