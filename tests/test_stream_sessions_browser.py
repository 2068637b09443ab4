"""A named event-stream session in headless Chromium (Debian's package,
driven by Playwright): a page with EventSource, the hub killed (SIGKILL)
and started again while QoS 1 messages are published; after EventSource
reconnects by itself, the page has every message, once, in order."""

from __future__ import annotations

from tests.brokerproc import running_broker
from tests.test_dashboard import CHROMIUM, browser, playwright_api, pytestmark  # noqa: F401
from tests.test_stream_sessions_e2e import EventReader, free_port, publish

WAIT_MS = 20_000

OPEN_STREAM = """() => {
    window.received = [];
    window.opened = 0;
    const source = new EventSource(
        "/api/v1/stream?session=page&filter=orders/%23&qos=1&session_expiry=600");
    source.onopen = () => { window.opened += 1; };
    source.onmessage = (event) => { window.received.push(JSON.parse(event.data).payload); };
}"""


def wait_until(page, condition: str) -> None:
    page.wait_for_function(condition, timeout=WAIT_MS)


def open_page(browser, port: int):  # noqa: F811
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/healthz")
    page.evaluate(OPEN_STREAM)
    wait_until(page, "window.opened === 1")
    return page, problems


def test_eventsource_resumes_after_the_hub_was_killed(tmp_path, browser):  # noqa: F811
    port = free_port()
    args = ["--http", f"tcp:{port}:interface=127.0.0.1", "--sys-interval", "0"]
    with running_broker(tmp_path, *args) as broker:
        page, problems = open_page(browser, port)
        publish(broker, [str(i) for i in range(1, 6)])
        wait_until(page, "window.received.length >= 5")
        broker.kill()
    with running_broker(tmp_path, *args) as broker:
        # Published while the page is away: queued by the restored session.
        publish(broker, [str(i) for i in range(6, 11)])
        wait_until(page, "window.opened >= 2")
        publish(broker, ["11", "12"])
        wait_until(page, "window.received.length >= 12")
        assert page.evaluate("window.received") == [str(i) for i in range(1, 13)]
    assert problems == []


def test_eventsource_resumes_after_its_stream_was_cut(tmp_path, browser):  # noqa: F811
    """Another stream takes the session over (the page's is ended), gets
    messages without acknowledging them, and leaves: the page's EventSource
    reconnects and has them all the same, once, in order."""
    port = free_port()
    args = ["--http", f"tcp:{port}:interface=127.0.0.1", "--sys-interval", "0"]
    with running_broker(tmp_path, *args) as broker:
        page, problems = open_page(browser, port)
        publish(broker, [str(i) for i in range(1, 4)])
        wait_until(page, "window.received.length >= 3")
        other = EventReader(broker, "/api/v1/stream?session=page&filter=orders/%23&qos=1")
        publish(broker, [str(i) for i in range(4, 7)])
        # It acknowledged nothing, so it gets the page's three again.
        assert other.take(6) == ["1", "2", "3", "4", "5", "6"]
        other.close()
        publish(broker, [str(i) for i in range(7, 9)])
        wait_until(page, "window.received.length >= 8")
        assert page.evaluate("window.received") == [str(i) for i in range(1, 9)]
        assert page.evaluate("window.opened") >= 2

        # The dashboard lists the session, attached to the page's stream.
        dashboard = browser.new_page()
        dashboard.goto(f"http://127.0.0.1:{port}/", wait_until="load")
        row = dashboard.locator('#stream-sessions tr[data-session="page"]')
        row.wait_for(timeout=WAIT_MS)
        assert "orders/#" in row.inner_text() and "attached" in row.inner_text()
    assert problems == []
