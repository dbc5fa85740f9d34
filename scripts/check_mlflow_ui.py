"""Open an MLflow experiment's runs page in headless Chromium, expand nested runs, and print
the run names the page lists; optionally write a screenshot for a person to look at.

    python scripts/check_mlflow_ui.py http://127.0.0.1:5000 EXPERIMENT_ID [--expand NAME ...] [--screenshot shot.png]

Stock Chromium, no driver: the DevTools protocol over `--remote-debugging-pipe` (JSON
messages on fds 3 and 4), so nothing beyond the browser is needed.
Exit 0 when the page listed runs, 1 when it did not, 2 when no Chromium is installed.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from check_report_render import find_browser  # noqa: E402

# Run names as the runs table shows them (one link per run row), and the table's own expander
# button of a named row (ag-grid renders only rows that are on screen: keep the window tall).
ROW_NAMES = """[...document.querySelectorAll('.ag-row a[href*="/runs/"]')].map(a => a.textContent.trim())"""
EXPAND = """(name => {
  const link = [...document.querySelectorAll('.ag-row a[href*="/runs/"]')].find(a => a.textContent.trim() === name);
  const button = link && link.closest('.ag-cell').querySelector('button[data-component-id*="runnamecellrenderer"]');
  if (button) button.click();
  return Boolean(button);
})"""


class Chromium:
    """One headless Chromium with a fresh profile, driven over the DevTools pipe."""

    def __init__(self, browser: str | None = None, width: int = 1600, height: int = 1000):
        browser = browser or find_browser()
        if browser is None:
            raise FileNotFoundError("no chromium binary on PATH (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="h2t-chromium-")
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def pipes_on_3_and_4() -> None:  # the child's fds 3 (commands in) and 4 (answers out)
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             "--no-first-run", f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=pipes_on_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id, self.session = b"", 0, None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": self.session} if self.session else {})}
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buf += chunk

    def evaluate(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"page script failed: {out['exceptionDetails'].get('text')}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        """Poll a page expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def runs_listed(page: Chromium, url: str, expand: list[str] = (), names: list[str] = (), timeout: float = 60) -> list[str]:
    """Open `url` (an experiment's runs page), wait for the first run row, expand each run of
    `expand` in order (waiting for it to be listed) and return the run names listed. With
    `names`, waits until all of them are listed (or the timeout) before returning."""
    page.open(url)
    page.wait_for(f"{ROW_NAMES}.length > 0", timeout)
    for name in expand:  # one click each (a second would fold it again)
        page.wait_for(f"{EXPAND}({json.dumps(name)})", timeout)
    if names:
        page.wait_for(f"{json.dumps(list(names))}.every(n => {ROW_NAMES}.includes(n))", timeout)
    return page.evaluate(ROW_NAMES)


def main(argv: list[str] | None = None) -> int:
    from orchestrator.tracking import runs_page

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("server", help="the MLflow UI, e.g. http://127.0.0.1:5000")
    p.add_argument("experiment_id")
    p.add_argument("--expand", nargs="*", default=[], help="run names to expand, parents first")
    p.add_argument("--screenshot", type=Path, default=None)
    args = p.parse_args(argv)
    if find_browser() is None:
        print("no chromium binary found (apt-get install chromium)", file=sys.stderr)
        return 2
    with Chromium() as page:
        listed = runs_listed(page, runs_page(args.server, args.experiment_id), args.expand)
        time.sleep(1)  # let the last rows paint
        if args.screenshot:
            page.screenshot(args.screenshot)
    print("\n".join(listed) or "(no runs listed)")
    return 0 if listed else 1


if __name__ == "__main__":
    sys.exit(main())
