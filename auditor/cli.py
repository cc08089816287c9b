"""`auditor run AUDIT.yaml`, `auditor validate AUDIT.yaml` and `auditor featurize AUDIT.yaml`.

Exit codes: 0 every rule passed (warnings allowed; inconclusive rules too, unless `--strict`),
1 a rule failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.errors import AuditError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditor", description="Audit a trained vision classifier and its data.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run every rule of an audit and report")
    run.add_argument("audit", type=Path, help="the audit YAML file")
    run.add_argument("--report", type=Path, default=None, help="write results.json (and the report) here")
    run.add_argument("--device", default=None, help="override settings.device (auto, cpu, cuda, cuda:N)")
    run.add_argument("--max-examples", type=int, default=10, help="failing examples shown per rule")
    run.add_argument("--max-panels", type=int, default=8, help="evidence PNGs written per failing rule")
    run.add_argument("--update-baseline", action="store_true",
                     help="record each rule's metric and failing set in AUDIT.baseline.json")
    run.add_argument("--strict", action="store_true",
                     help="a rule that cannot judge (inconclusive) fails the run (exit 1)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or plan notes on stderr")
    run.set_defaults(handler=_run)
    validate = commands.add_parser("validate", help="check an audit YAML without running anything")
    validate.add_argument("audit", type=Path)
    validate.set_defaults(handler=_validate)
    featurize = commands.add_parser(
        "featurize", help="fill the training-feature cache (resumable; shards across ranks under torchrun)")
    featurize.add_argument("audit", type=Path)
    featurize.add_argument("--device", default=None, help="override settings.device")
    featurize.add_argument("--no-progress", action="store_true", help="no progress bar")
    featurize.set_defaults(handler=_featurize)
    return parser


def _run(args: argparse.Namespace) -> int:
    from auditor import progress
    from auditor.files import check_writable
    from auditor.report import (baseline_lines, failure_table, results_document, summary_table, write_report,
                                write_step_summary)
    from auditor.session import FAILED, INCONCLUSIVE, AuditSession
    from auditor.spec import load_spec

    progress.set_quiet(args.quiet)
    session = AuditSession(load_spec(args.audit), device=args.device, update_baseline=args.update_baseline)
    if args.report is not None:
        check_writable(args.report, "--report")
    print(f"audit '{session.spec.name}': {len(session.spec.rules)} rules ({session.spec.path})")
    session.prepare()
    for warning in session.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    outcomes = []
    try:
        for rule in session.spec.rules:
            outcome = session.run_rule(rule)
            outcomes.append(outcome)
            print(f"  {outcome.status.upper():7s} {rule.name}: {outcome.message}")
    except BaseException:
        if args.report is not None and outcomes:      # the rules that finished are not lost
            index = write_report(args.report, session, outcomes, args.max_panels)
            done = "the rule" if len(outcomes) == 1 else f"the {len(outcomes)} rules"
            print(f"\nstopped at rule '{rule.name}'; {done} before it: {index}", file=sys.stderr)
        raise
    print()
    document = results_document(session.spec, outcomes, session.warnings)
    print(summary_table(document["rules"]))
    print(f"all rules: {document['seconds']:.1f} s")
    for outcome, entry in zip(outcomes, document["rules"]):
        if outcome.status != "passed" and outcome.failures:
            print(f"\n{outcome.status.upper()} {outcome.rule.name} "
                  f"({outcome.rule.where.label()}) — {outcome.message}")
            if entry["advice"]:
                print(f"  {entry['advice']}")
            print(failure_table(outcome, args.max_examples))
            for line in baseline_lines(outcome, args.max_examples):
                print(line)
    baseline = session.finish()
    if baseline is not None:
        print(f"\nbaseline written: {baseline}")
    index = None
    if args.report is not None:
        index = write_report(args.report, session, outcomes, args.max_panels)
        print(f"\nreport: {index} (results: {index.with_name('results.json')})")
    write_step_summary(document, index)
    failing = {FAILED, INCONCLUSIVE} if args.strict else {FAILED}
    return EXIT_FAILED if any(o.status in failing for o in outcomes) else EXIT_OK


def _featurize(args: argparse.Namespace) -> int:
    import time

    from auditor import progress
    from auditor.distributed import featurize_sharded, process_group, rank_device, rank_from_env
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    rank = rank_from_env()
    spec = load_spec(args.audit)
    session = AuditSession(spec, device=rank_device(args.device or spec.settings.device, rank))
    engine = session.engine
    start = time.perf_counter()
    with process_group(rank, engine.device), progress.quiet(args.no_progress):
        store, missing = featurize_sharded(engine, rank)
    if rank.is_main:
        cached = store.n_shards - len(missing)
        print(f"features of {store.n} training images ({store.n_shards} shards, {cached} already cached, "
              f"{len(missing)} computed by {rank.world} rank(s)) in {time.perf_counter() - start:.1f} s: "
              f"{store.directory}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from auditor.spec import load_spec

    spec = load_spec(args.audit)
    print(f"{spec.path}: audit '{spec.name}' is valid ({len(spec.rules)} rules)")
    for rule in spec.rules:
        print(f"  {rule.where.label()}: {rule.name} ({rule.check}, on {rule.selection.describe()})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
