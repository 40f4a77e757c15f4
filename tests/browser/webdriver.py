"""A small W3C WebDriver client over httpx, enough to drive headless Chromium through chromedriver.

The protocol needed here is a dozen JSON-over-HTTP calls (new session, navigate, find, click, type,
read text, cookies, screenshot), so the tests speak it with httpx, which the project already uses,
instead of adding selenium and its own dependency tree.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def browser_available() -> bool:
    """True when Debian's chromium and chromium-driver are installed."""
    return CHROMIUM.exists() and CHROMEDRIVER.exists() and shutil.which(str(CHROMEDRIVER)) is not None


class WebDriverError(AssertionError):
    """chromedriver answered an error (no such element, timeout ...)."""


class Driver:
    """chromedriver on ``port`` (a process this object starts and stops) and one browser session."""

    def __init__(self, port: int, profile: Path, log: Path) -> None:
        self._log = log.open("ab")
        self._proc = subprocess.Popen(
            [str(CHROMEDRIVER), f"--port={port}"], stdout=self._log, stderr=subprocess.STDOUT
        )
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.session = ""
        try:
            self._wait_ready()
            self.session = self._new_session(profile)
        except BaseException:
            self.quit()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self._http.get("/status").json()["value"]["ready"]:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if self._proc.poll() is not None:
                raise WebDriverError("chromedriver exited at start")
            time.sleep(0.1)
        raise WebDriverError("chromedriver did not become ready")

    def _new_session(self, profile: Path) -> str:
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
        ]
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": str(CHROMIUM), "args": args}}
        value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        return str(value["sessionId"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = self._http.request(method, path, json=body if method == "POST" else None)
        value = answer.json().get("value")
        if answer.status_code != 200:
            error = value.get("error") if isinstance(value, dict) else value
            message = value.get("message", "") if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {error}: {message[:300]}")
        return value

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    # -- the calls the tests use -------------------------------------------------------------------
    def get(self, url: str) -> None:
        """Navigate to ``url`` and wait for the page to load."""
        self._call("POST", self._s("/url"), {"url": url})

    @property
    def url(self) -> str:
        return str(self._call("GET", self._s("/url")))

    @property
    def title(self) -> str:
        return str(self._call("GET", self._s("/title")))

    def find(self, css: str) -> str:
        """The element matching ``css`` (its WebDriver id)."""
        value = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        return str(value[_ELEMENT])

    def find_all(self, css: str) -> list[str]:
        values = self._call("POST", self._s("/elements"), {"using": "css selector", "value": css})
        return [str(v[_ELEMENT]) for v in values]

    def text(self, element: str) -> str:
        return str(self._call("GET", self._s(f"/element/{element}/text")))

    def attribute(self, element: str, name: str) -> str | None:
        value = self._call("GET", self._s(f"/element/{element}/attribute/{name}"))
        return None if value is None else str(value)

    def type(self, element: str, text: str) -> None:
        self._call("POST", self._s(f"/element/{element}/value"), {"text": text})

    def click(self, element: str) -> None:
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def click_and_load(self, element: str, timeout: float = 30.0) -> None:
        """Click ``element`` (a link or a submit button) and wait until the next page has loaded.

        A click returns as soon as it is dispatched; the page it leads to loads afterwards. The current
        document is marked first, so the wait ends only in a new, fully loaded document.
        """
        self.script("document.documentElement.dataset.leaving = '1';")
        self.click(element)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.script(
                    "return document.readyState === 'complete' && !document.documentElement.dataset.leaving;"
                ):
                    return
            except WebDriverError:
                pass  # the document went away in the middle of the check
            time.sleep(0.05)
        raise WebDriverError("the page after the click did not load")

    def script(self, source: str, *args: Any) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": source, "args": list(args)})

    def cookies(self) -> list[dict[str, Any]]:
        return list(self._call("GET", self._s("/cookie")))

    def page_text(self) -> str:
        return self.text(self.find("body"))

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))

    def quit(self) -> None:
        """End the browser session and chromedriver (and so the browser)."""
        try:
            if self.session:
                self._http.delete(self._s(""))
        except httpx.HTTPError:
            pass
        finally:
            self._http.close()
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            self._log.close()


def must_run() -> bool:
    """Under CI the browser test always runs (a missing browser is a failure, not a skip)."""
    return os.environ.get("CI", "").lower() == "true"
