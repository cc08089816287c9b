"""The report as a reviewer sees it: `index.html` rendered by headless Chromium (skipped when no
Chromium is installed: `apt-get install chromium`). Every image must load and the failed rules
must come first."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

import auditor

import fakes

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)

# Appended to a copy of index.html in the report folder (so relative panel links resolve):
# after the page has loaded, the images that did not load and the order of the rule statuses.
PROBE = """<script>window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const order = [...document.querySelectorAll('section h2 span')].map(s => s.textContent);
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images: document.images.length, broken, order});
  document.body.appendChild(out);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("inline_budget", [2_000_000, 0], ids=["inlined", "linked-files"])
def test_every_image_loads_and_failed_rules_come_first_in_chromium(tmp_path, monkeypatch, inline_budget):
    monkeypatch.setattr("auditor.report.html.INLINE_BUDGET", inline_budget)
    rules = [{"name": "accurate-enough", "check": "accuracy", "min_accuracy": 0.0},
             {"name": "no-border", "check": "region_mass", "region": "border", "max_mass": 0.0, "source": "saliency"},
             {"name": "soft", "check": "accuracy", "min_accuracy": 1.0, "severity": "warn"}]
    result = auditor.audit(fakes.linear(), fakes.images(), fakes.images(), rules=rules,
                           settings={"device": "cpu", "cache_dir": str(tmp_path / "cache")})
    index = result.write_report(tmp_path / "report", max_panels=3)
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
    assert found, dom[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["images"] >= 3 and seen["broken"] == []
    assert seen["order"] == ["FAILED", "WARNED", "PASSED"]
