"""`index.html` (offline, self-contained up to an inline-image budget) and the Markdown summary.

Every user-provided string — audit, rule and class names, paths, messages — is escaped.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

INLINE_BUDGET = 2_000_000   # bytes of PNG inlined as data URIs; later images are linked files
TABLE_ROWS = 50

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
.passed{color:#1a7f37}.failed{color:#cf222e}.warned{color:#9a6700}.inconclusive{color:#6e7781}
section{border-top:1px solid #ddd;margin-top:1.5em}img{margin:4px;border:1px solid #eee;max-width:100%}
code{background:#f4f4f4;padding:0 3px}
.advice{background:#fff8c5;border-left:4px solid #9a6700;padding:4px 8px}
.legend{font-size:13px;color:#555}.bar{display:inline-block;width:90px;height:10px;vertical-align:middle;
border:1px solid #ccc;margin:0 4px}
.signed{background:linear-gradient(90deg,#00f,#fff,#f00)}.heat{background:linear-gradient(90deg,#000,#f00,#ff0,#fff)}
.box{display:inline-block;width:10px;height:10px;border:2px solid #00dcff;vertical-align:middle;margin:0 4px}
"""
SIGNED_LEGEND = ("<span class='bar signed'></span>signed map: blue pixels speak against the prediction, "
                 "red for it, white neither")
HEAT_LEGEND = "<span class='bar heat'></span>attribution: black none → yellow/white most"
BOX_LEGEND = "<span class='box'></span>the window or region the check measured"


def render_index(document: dict[str, Any], panels: dict[str, list[Path]], folder: Path) -> str:
    """The HTML report for a `results.json` document; `panels[rule]` are PNGs under `folder`."""
    budget = [INLINE_BUDGET]
    status = "passed" if document["passed"] else "failed"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>audit {escape(document['audit'])}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>audit <code>{escape(document['audit'])}</code>: <span class='{status}'>{status.upper()}</span></h1>",
             f"<p>{escape(document['file'])} · {escape(document['created'])} · "
             f"<a href='results.json'>results.json</a> (full failing lists)</p>",
             *(f"<p class='advice'>data warning: {escape(w)}</p>" for w in document.get("warnings", [])),
             _summary(by_urgency(document["rules"]))]
    for rule in by_urgency(document["rules"]):
        parts.append(_section(rule, panels.get(rule["name"], []), folder, budget))
    parts.append("</body></html>")
    return "\n".join(parts)


def by_urgency(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failed rules first, then warned, inconclusive, passed; the audit file's order within each."""
    order = {"failed": 0, "warned": 1, "inconclusive": 2}
    return sorted(rules, key=lambda rule: order.get(rule["status"], 3))


def _summary(rules: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><a href='#{_anchor(r['name'])}'>{escape(r['name'])}</a></td>"
        f"<td class='{escape(r['status'])}'>{escape(r['status'].upper())}</td><td>{escape(r['check'])}</td>"
        f"<td>{escape(r['selection'])}</td><td>{_number(r['value'])}</td>"
        f"<td>{escape(str(r['comparison'] or ''))} {_number(r['threshold'])}</td><td>{r['n_failures']}</td>"
        f"<td>{r.get('seconds', 0):.1f}</td></tr>"
        for r in rules)
    total = sum(r.get("seconds", 0) for r in rules)
    return ("<table><tr><th>rule</th><th>status</th><th>check</th><th>on</th><th>value</th><th>threshold</th>"
            f"<th>failing</th><th>seconds</th></tr>{rows}</table><p>all rules: {total:.1f} s</p>")


def _section(rule: dict[str, Any], panels: list[Path], folder: Path, budget: list[int]) -> str:
    head = (f"<section id='{_anchor(rule['name'])}'><h2>{escape(rule['name'])} "
            f"<span class='{escape(rule['status'])}'>{escape(rule['status'].upper())}</span></h2>"
            f"<p><code>{escape(rule['check'])}</code> on <code>{escape(rule['selection'])}</code> "
            f"({escape(Path(rule['file']).name)}:{rule['line']})</p><p>{escape(rule['message'])}</p>")
    advice = f"<p class='advice'>{escape(rule['advice'])}</p>" if rule.get("advice") else ""
    return (head + advice + _baseline(rule.get("baseline")) + _legend(rule["failures"])
            + "".join(_image(p, folder, budget) for p in panels) + _failures(rule["failures"]) + "</section>")


def _legend(failures: list[dict[str, Any]]) -> str:
    """How to read the panels' maps: the colour scales used by this rule's evidence, and the box."""
    sources = {f["evidence"]["source"] for f in failures if f.get("evidence")}
    if not sources:
        return ""
    parts = ([SIGNED_LEGEND] if "tfa" in sources else []) + ([HEAT_LEGEND] if sources - {"tfa"} else [])
    if any(f["evidence"].get("window") or f["evidence"].get("region") for f in failures if f.get("evidence")):
        parts.append(BOX_LEGEND)
    return "<p class='legend'>" + " · ".join(parts) + "</p>"


def _baseline(diff: dict[str, Any] | None) -> str:
    """The rule's diff against its baseline: the metric's change, new and fixed failures."""
    if not diff:
        return ""
    lines = [f"baseline {_number(diff['baseline_value'])} → {_number(diff['value'])}"
             + (f" ({escape(diff['note'])})" if diff["note"] else "")]
    lines += [f"<span class='failed'>regression</span>: {escape(reason)}" for reason in diff["regressions"]]
    for label, key in (("new failures", "new_failures"), ("fixed", "fixed_failures")):
        items = diff[key]
        if items:
            shown = ", ".join(f"{escape(i['kind'])} {i['index']}" for i in items[:TABLE_ROWS])
            more = f" … and {len(items) - TABLE_ROWS} more in results.json" if len(items) > TABLE_ROWS else ""
            lines.append(f"{label} ({len(items)}): {shown}{more}")
    return "<p class='baseline'>" + "<br>".join(lines) + "</p>"


def _failures(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return ""
    keys = list(dict.fromkeys(k for f in failures[:TABLE_ROWS] for k in f))
    rows = "".join("<tr>" + "".join(f"<td>{_cell_html(k, f.get(k))}</td>" for k in keys) + "</tr>"
                   for f in failures[:TABLE_ROWS])
    more = (f"<p>… and {len(failures) - TABLE_ROWS} more in results.json</p>"
            if len(failures) > TABLE_ROWS else "")
    return "<table><tr>" + "".join(f"<th>{escape(k)}</th>" for k in keys) + f"</tr>{rows}</table>{more}"


def _image(path: Path, folder: Path, budget: list[int]) -> str:
    """Inline the PNG while the budget lasts (the report then works as one file); else link it."""
    name = escape(path.relative_to(folder).as_posix())
    data = path.read_bytes()
    if len(data) <= budget[0]:
        budget[0] -= len(data)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return f"<a href='{name}'><img src='{src}' alt='{name}'></a>"
    return f"<a href='{name}'><img src='{name}' alt='{name}' loading='lazy'></a>"


def markdown_summary(document: dict[str, Any], index: Path | None, max_items: int = 5) -> str:
    """A GitHub step summary: one table row per rule, then each rule that did not hold with
    what to fix and its first failing items, and where the full report is."""
    status = "✅ passed" if document["passed"] else "❌ failed"
    lines = [f"### audit `{_md(document['audit'])}`: {status}", "",
             "| rule | status | check | value | threshold | failing | seconds |", "|---|---|---|---|---|---|---|"]
    for r in document["rules"]:
        lines.append(f"| {_md(r['name'])} | {r['status']} | {r['check']} | {_number(r['value'])} | "
                     f"{r['comparison'] or ''} {_number(r['threshold'])} | {r['n_failures']} | {r.get('seconds', 0):.1f} |")
    lines.append(f"\nall rules: {document.get('seconds', 0):.1f} s")
    for r in by_urgency(document["rules"]):
        if r["status"] == "passed":
            continue
        lines += ["", f"**{_md(r['name'])}** ({r['status']}): {_md(r.get('advice') or r['message'])}"]
        lines += [f"- {_item(f)}" for f in r["failures"][:max_items]]
        if len(r["failures"]) > max_items:
            lines.append(f"- … and {len(r['failures']) - max_items} more")
    if index is not None:
        lines += ["", f"Report: `{_md(str(index))}`"]
    return "\n".join(lines) + "\n"


def _item(failure: dict[str, Any]) -> str:
    """`test #12 (Bag → Shirt) path/to/file.png`: one failing item in a line."""
    label, predicted = failure.get("label"), failure.get("predicted")
    labels = (f" ({label} → {predicted})" if isinstance(label, str) and isinstance(predicted, str)
              else f" ({label})" if isinstance(label, str) else "")
    path = f" `{_md(failure['path'])}`" if failure.get("path") else ""
    return f"{failure['kind']} #{failure['index']}{_md(labels)}{path}"


def _anchor(name: str) -> str:
    return "rule-" + "".join(c if c.isalnum() else "-" for c in name)


def _cell_html(key: str, value: Any) -> str:
    """A failure table cell: panels as links, evidence as its source, the rest as escaped text."""
    if key == "panel" and value:
        return f"<a href='{escape(value)}'>{escape(Path(value).name)}</a>"
    if key == "evidence" and isinstance(value, dict):
        method = f" ({value['method']})" if value.get("method") else ""
        return escape(f"{value['source']}{method}")
    return escape(_cell(value))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value[:10])) + (" …" if len(value) > 10 else "")
    return "" if value is None else str(value)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, (int, float)) else escape(str(value))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")
