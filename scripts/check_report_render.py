"""Open a report.html in headless Chromium: every <img> must decode (naturalWidth > 0), and a
screenshot is written for a person to look at.

    python scripts/check_report_render.py out/report/report.html [--screenshot shot.png]

Exit 0 when every image rendered, 1 when any is broken, 2 when no Chromium is installed.
Works with stock Chromium (no driver): a copy of the page gets a script that records image
status in the DOM, and `--dump-dom` prints the DOM after the page has loaded.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.src.slice(0, 40), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}));
  const p = document.createElement('pre'); p.id = 'h2t-probe';
  p.textContent = 'H2T-PROBE' + JSON.stringify(imgs) + 'H2T-END'; document.body.appendChild(p);
});</script>"""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def check(html_path: Path, screenshot: Path | None = None, browser: str | None = None) -> list[dict]:
    """Image status as the browser saw it: [{"src", "ok", "w"}] for every <img>."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no chromium binary on PATH")
    page = html_path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        # the probed copy sits beside the original so relative image paths still resolve
        probed = html_path.with_name(f".probe-{Path(tmp).name}.html")
        probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        try:
            dom = _chromium(browser, "--dump-dom", probed.resolve().as_uri()).stdout
        finally:
            probed.unlink()
    found = re.search(r'<pre id="h2t-probe">H2T-PROBE(.*?)H2T-END</pre>', dom, re.S)
    if not found:
        raise RuntimeError("the page did not finish loading in headless Chromium")
    if screenshot is not None:
        _chromium(browser, f"--screenshot={screenshot.resolve()}", "--window-size=1400,2400", html_path.resolve().as_uri())
    return json.loads(html.unescape(found.group(1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("--screenshot", type=Path, default=None)
    args = p.parse_args(argv)
    if find_browser() is None:
        print("no chromium binary found (apt-get install chromium)", file=sys.stderr)
        return 2
    images = check(args.html, args.screenshot)
    broken = [i for i in images if not i["ok"]]
    print(f"{len(images)} images, {len(broken)} broken" + (f": {broken}" if broken else ""))
    return 1 if broken or not images else 0


if __name__ == "__main__":
    sys.exit(main())
