"""The dashboard in headless Chromium (Debian's package, driven by Playwright):
it loads without console errors, lists a client connected with paho-mqtt,
and a message published from its form reaches an MQTT subscriber."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.brokerproc import running_broker
from tests.test_web_e2e import Paho

CHROMIUM = os.environ.get("REACTORAPP_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 10_000

playwright_api = pytest.importorskip("playwright.sync_api")
# Skipped on a developer machine without Chromium; CI installs it, so there a
# missing browser fails the test instead of hiding it.
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_dashboard_shows_clients_and_publishes(tmp_path, browser):
    with running_broker(tmp_path, "--sys-interval", "1") as broker:
        subscriber = Paho(broker, "kitchen-display")
        worker = Paho(broker, "kitchen-worker")
        try:
            subscriber.subscribe("home/#", 1)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
            page.goto(f"http://{broker.host}:{broker.http_port}/", wait_until="load")

            # The paho client is listed (the page polls /api/v1/clients).
            page.locator('#clients tr[data-client-id="kitchen-display"]').wait_for(
                timeout=WAIT_MS)
            assert "home/#" in page.locator('#clients tr[data-client-id="kitchen-display"]') \
                .inner_text()

            # A shared subscription is listed with its member (/api/v1/shared).
            worker.subscribe("$share/screens/home/#", 1)
            shared = page.locator('#shared tr[data-share="$share/screens/home/#"]')
            shared.wait_for(timeout=WAIT_MS)
            assert "mqtt kitchen-worker (ready)" in shared.inner_text()

            # The live view (SSE on '#') is open before publishing.
            page.locator("#watch-status", has_text="Watching #").wait_for(timeout=WAIT_MS)

            page.fill("#publish-topic", "home/kitchen/light")
            page.fill("#publish-payload", "on")
            page.select_option("#publish-qos", "1")
            page.check("#publish-retain")
            page.click("#publish-submit")
            page.locator("#publish-result", has_text="Published message").wait_for(
                timeout=WAIT_MS)

            message = subscriber.message()
            assert (message.topic, message.payload, message.qos) == (
                "home/kitchen/light", b"on", 1)

            # It shows up in the live view and, retained, in the topic tree.
            page.locator("#events li", has_text="home/kitchen/light").wait_for(timeout=WAIT_MS)
            page.locator("#topics .value", has_text="on").first.wait_for(timeout=WAIT_MS)
            page.locator("#topics .level", has_text="$SYS").wait_for(timeout=WAIT_MS)
            # Two samples of /api/v1/stats make a rate for the chart.
            page.locator("#summary-in", has_text=re.compile(r"\d")).wait_for(timeout=WAIT_MS)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            if os.environ.get("REACTORAPP_SCREENSHOT"):
                shutil.copy(tmp_path / "dashboard.png", os.environ["REACTORAPP_SCREENSHOT"])
            assert problems == []
        finally:
            subscriber.close()
            worker.close()
