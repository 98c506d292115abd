"""The demo page and notify-client.js in a real headless Chromium against the real `notify-server dev`.

Debian's `chromium` package (installed here with apt-get when missing) driven by Playwright's Python
package; `playwright install` is never run. One browser context = one cookie jar, so two pages in it are
two tabs of the same signed-in user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]  # the first run may apt-get install chromium

REPO_ROOT = Path(__file__).resolve().parent.parent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "artifacts"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "demo.png"
START_TIMEOUT_S = 60
UI_TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    """In CI a missing browser is a failure; on a developer machine, a clear skip."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _ensure_chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if not shutil.which("apt-get"):
        _unavailable(f"{CHROMIUM} is missing and apt-get is not available to install Debian's chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            _unavailable(f"`{' '.join(command)}` failed (needed for {CHROMIUM}): {' | '.join(tail)}")
    if not os.path.exists(CHROMIUM):
        _unavailable(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e .[test])")
    executable = _ensure_chromium()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class DevServer:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, base_url: str) -> None:
        self.process = process
        self.log_path = log_path
        self.base_url = base_url

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"`notify-server dev` exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if "ready" in self.log():
                try:
                    if _get(self.base_url + "/healthz") == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        pytest.fail(f"`notify-server dev` was not ready within {START_TIMEOUT_S} s:\n{self.log()[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture
def dev_server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[DevServer]:
    yield from _dev_server(cli_env, tmp_path)


def _dev_server(cli_env: dict[str, str], tmp_path: Path, **extra_env: str) -> Iterator[DevServer]:
    server = _start_dev(cli_env, tmp_path, _free_port(), "dev.log", **extra_env)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _start_dev(cli_env: dict[str, str], tmp_path: Path, port: int, log_name: str, **extra_env: str) -> DevServer:
    python = REPO_ROOT / ".venv" / "bin" / "python"
    env = {**cli_env, "NOTIFY_DEV_DATA_DIR": str(tmp_path / "dev-data"), "PYTHONUNBUFFERED": "1", **extra_env}
    log_path = tmp_path / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python if python.exists() else sys.executable), "-m", "notify_server", "dev",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    return DevServer(process, log_path, f"http://127.0.0.1:{port}")


def _badge(page: Any) -> Any:
    return page.locator("#badge")


def _one_toast(pages: list[Any], body: str) -> Any:
    """Exactly one of the tabs shows the toast with this body (both tabs are visible here, so the earlier
    claim wins the election; which tab that is, is not fixed). Returns that tab."""
    selector = "#toasts .toast:not(.toast-error) .body"

    def counts() -> list[int]:
        return [page.locator(selector, has_text=body).count() for page in pages]

    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while not any(counts()) and time.monotonic() < deadline:
        pages[0].wait_for_timeout(50)
    pages[0].wait_for_timeout(500)  # a second tab's toast, if the election failed, would be up by now
    found = counts()
    assert sorted(found) == [0] * (len(pages) - 1) + [1], f"toasts per tab {found}: expected exactly one"
    return pages[found.index(1)]


def _emit(page: Any, event_type: str, to: list[str], data: dict[str, str]) -> int:
    """POST /dev/emit from the page (its cookie, its origin); returns the HTTP status."""
    return page.evaluate(
        """async ([event_type, to, data]) => {
            const response = await fetch('/dev/emit', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                       body: JSON.stringify({event_type, to, data})});
            return response.status;
        }""",
        [event_type, to, data],
    )


def test_demo_two_tabs_toast_badge_mark_read_and_unauthorized(browser: Any, dev_server: DevServer) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    base = dev_server.base_url
    console_errors: list[str] = []
    context = browser.new_context(viewport={"width": 1180, "height": 680})
    try:
        page_a, sockets_a, _ = _watched_page(context, "A", console_errors)

        # Tab A: sign in as alice; the socket goes live and the count is 0.
        page_a.goto(base + "/")
        expect(page_a.locator("#signin")).to_be_visible()
        page_a.fill("#signin-user", "alice")
        page_a.click("#signin-form button[type=submit]")
        expect(page_a.locator("#who-name")).to_have_text("alice")
        expect(page_a.locator("#status")).to_have_attribute("data-status", "open")
        expect(_badge(page_a)).to_be_hidden()

        # Tab B: same context, same cookie, already signed in.
        page_b, sockets_b, _ = _watched_page(context, "B", console_errors)
        page_b.goto(base + "/")
        expect(page_b.locator("#who-name")).to_have_text("alice")
        expect(page_b.locator("#status")).to_have_attribute("data-status", "open")

        # Emit through A's form: the templates fill the select, one input per variable.
        expect(page_a.locator("#emit-type option[value=CLAIM_REJECTED]")).to_have_count(1)
        page_a.select_option("#emit-type", "CLAIM_REJECTED")
        page_a.fill("#emit-vars input[data-var=provider_name]", "Dr. Smith")
        page_a.fill("#emit-vars input[data-var=claim_id]", "abc123")
        page_a.fill("#emit-to", "alice")
        page_a.click("#emit-submit")
        expect(page_a.locator("#emit-result")).to_contain_text("queued for alice")

        body = "Your claim for Dr. Smith has been rejected."
        for page in (page_a, page_b):
            item = page.locator("#list .item.unread")
            expect(item).to_have_count(1)
            expect(item.locator(".title")).to_have_text("Claim Rejected")
            expect(item.locator(".body")).to_have_text(body)
            expect(_badge(page)).to_have_text("1")
        _one_toast([page_a, page_b], body)

        # Mark read in A (click the item): the badge drops in B, and B's list follows.
        page_a.click("#list .item.unread")
        expect(page_a.locator("#list .item.unread")).to_have_count(0)
        expect(_badge(page_b)).to_be_hidden()
        expect(_badge(page_b)).to_have_attribute("data-count", "0")
        expect(page_b.locator("#list .item.unread")).to_have_count(0)
        expect(page_b.locator("#list .item")).to_have_count(1)

        # Two more, then the screenshot (list, toast, badge) of the tab that shows the last toast.
        assert _emit(page_b, "COMMENT_ADDED", ["alice"], {"author_name": "Sam", "excerpt": "Looks good to me!"}) == 202
        _one_toast([page_a, page_b], "Sam commented: Looks good to me!")
        assert _emit(page_a, "PAYMENT_FAILED", ["alice", "bob"], {"last4": "4242"}) == 202
        expect(_badge(page_a)).to_have_text("2")
        expect(_badge(page_b)).to_have_text("2")
        toast_page = _one_toast([page_a, page_b], "We could not charge your card ending in 4242. "
                                                  "Please update your payment method.")
        ARTIFACTS.mkdir(exist_ok=True)
        toast_page.bring_to_front()  # a background tab does not run the toast's fade-in
        toast_page.mouse.move(1, 600)
        toast_page.wait_for_timeout(300)
        toast_page.screenshot(path=str(ARTIFACTS / "demo.png"))
        if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # the README's picture changes only on purpose
            shutil.copyfile(ARTIFACTS / "demo.png", DOCS_SCREENSHOT)

        # Notification text is data, never markup.
        hostile = '<img src=x onerror="window.pwned=1"><b>bold</b>'
        assert _emit(page_b, "COMMENT_ADDED", ["alice"], {"author_name": "Eve", "excerpt": hostile}) == 202
        comment = f"Eve commented: {hostile}"
        for page in (page_a, page_b):
            expect(page.locator("#list .item.unread .body", has_text="Eve commented")).to_have_text(comment)
            expect(_badge(page)).to_have_text("3")
        _one_toast([page_a, page_b], comment)
        for page in (page_a, page_b):
            assert page.locator("#list img, #list b, #toasts img, #toasts b").count() == 0
            assert page.evaluate("window.pwned") is None

        # A bad event is answered with a clear 400, shown next to the form.
        page_a.select_option("#emit-type", "CLAIM_REJECTED")
        page_a.fill("#emit-to", " , ")
        page_a.click("#emit-submit")
        expect(page_a.locator("#emit-result.error")).not_to_be_empty()

        # Mark all read in B: A's badge and list follow.
        page_b.click("#mark-all")
        expect(_badge(page_a)).to_be_hidden()
        expect(page_a.locator("#list .item.unread")).to_have_count(0)
        expect(page_a.locator("#list .item")).to_have_count(4)

        # Sign out in A: the session is revoked, so B's socket is closed with 4001 and B stops too.
        page_a.click("#sign-out")
        expect(page_a.locator("#signin")).to_be_visible()
        expect(page_b.locator("#signin")).to_be_visible(timeout=10_000)
        expect(page_b.locator("#status")).to_have_attribute("data-status", "unauthorized")
        connects = (len(sockets_a), len(sockets_b))
        page_b.wait_for_timeout(2000)
        assert (len(sockets_a), len(sockets_b)) == connects, "a socket was reopened after 4001"
        assert connects == (1, 1)
    finally:
        context.close()

    # A NotifyClient without any session: the server closes with 4001, onUnauthorized fires once and
    # the client does not try again.
    stranger = browser.new_context()
    try:
        page, sockets, _ = _watched_page(stranger, "stranger", console_errors)
        page.goto(base + "/")
        expect(page.locator("#signin")).to_be_visible()
        assert sockets == []  # the demo opens no socket before sign-in
        page.evaluate(
            """async () => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.events = [];
                window.client = new NotifyClient({
                    backoffBaseMs: 50,
                    onUnauthorized: (info) => window.events.push(['unauthorized', info.code]),
                    onStatus: (status) => window.events.push(['status', status]),
                });
                window.client.start();
            }"""
        )
        page.wait_for_function(
            "() => window.events.some(e => e[0] === 'unauthorized')", timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(2000)
        events = page.evaluate("window.events")
        assert ["unauthorized", 4001] in events
        assert [e for e in events if e[0] == "unauthorized"] == [["unauthorized", 4001]]
        statuses = [e[1] for e in events if e[0] == "status"]
        assert statuses == ["connecting", "unauthorized"]
        assert page.evaluate("window.client.status") == "unauthorized"
        assert len(sockets) == 1, f"{len(sockets)} WebSocket connects after a 4001 close"

        # Nobody listening (a dropped connection, 1006): exponential backoff with full jitter, capped.
        page.evaluate(
            """async (url) => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.retries = [];
                window.dropped = new NotifyClient({
                    url, backoffBaseMs: 20, backoffCapMs: 160,
                    onStatus: (status, info) => { if (status === 'reconnecting') window.retries.push(info); },
                });
                window.dropped.start();
            }""",
            f"ws://127.0.0.1:{_free_port()}/ws/notifications",
        )
        page.wait_for_function("() => window.retries.length >= 8", timeout=UI_TIMEOUT_MS)
        page.evaluate("window.dropped.stop()")
        retries = page.evaluate("window.retries")
        assert all(r["code"] == 1006 and 0 <= r["delayMs"] <= 160 for r in retries), retries
        assert [r["attempt"] for r in retries[:8]] == list(range(1, 9))
        assert page.evaluate("window.dropped.status") == "stopped"

        # A signed-in client when the server shuts down: 1001, reconnect after a random delay.
        page.evaluate(
            """async () => {
                const response = await fetch('/dev/session', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                              body: JSON.stringify({user_id: 'carol'})});
                if (!response.ok) throw new Error('sign-in failed: ' + response.status);
                const { NotifyClient } = await import('/static/notify-client.js');
                window.closes = [];
                window.counts = [];
                window.carol = new NotifyClient({
                    goingAwayMaxMs: 60000,  // do not come back while this test looks
                    onUnreadCount: (count) => window.counts.push(count),
                    onStatus: (status, info) => { if (status === 'reconnecting') window.closes.push(info); },
                });
                window.carol.start();
            }"""
        )
        try:
            page.wait_for_function("() => window.carol.status === 'open' && window.counts.length > 0",
                                   timeout=UI_TIMEOUT_MS)
        except Exception:
            state = page.evaluate("[window.carol.status, window.counts, window.closes]")
            pytest.fail(f"carol's client did not open: {state}\n{dev_server.log()[-3000:]}")
        assert set(page.evaluate("window.counts")) == {0}
        assert console_errors == []

        # SIGTERM stops the whole dev stack cleanly, closing the socket with 1001 first.
        assert dev_server.stop() == 0, dev_server.log()[-3000:]
        assert "stopped" in dev_server.log()
        page.wait_for_function("() => window.closes.length > 0", timeout=UI_TIMEOUT_MS)
        closes = page.evaluate("window.closes")
        assert closes[0]["code"] == 1001 and 0 <= closes[0]["delayMs"] <= 60000, closes
        page.evaluate("window.carol.stop()")
    finally:
        stranger.close()


CLIENT_JS = REPO_ROOT / "notify_server" / "static" / "notify-client.js"
FAKE_ORIGIN = "http://notify.test"


def _frame(kind: str, data: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "data": data})


def _notification(notification_id: str, created_at: str) -> dict[str, Any]:
    return {"notification_id": notification_id, "title": "T", "body": "B", "priority": "NORMAL",
            "action_url": None, "event_type": "COMMENT_ADDED", "metadata": {}, "created_at": created_at}


def test_client_protocol_with_a_scripted_server(browser: Any) -> None:
    """notify-client.js against a scripted WebSocket (Playwright's routeWebSocket): versions, dedupe,
    resync, `since`, and the reconnect rule of each close code, without any real server."""
    from playwright.sync_api import Route, WebSocketRoute

    context = browser.new_context()
    sockets: list[WebSocketRoute] = []

    def serve(route: Route) -> None:
        if route.request.url.endswith("/static/notify-client.js"):
            route.fulfill(body=CLIENT_JS.read_text(), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>client</title>", content_type="text/html")

    try:
        page = context.new_page()
        page.route(f"{FAKE_ORIGIN}/**", serve)
        page.route_web_socket(re.compile(r"^ws://notify\.test/ws/notifications"), lambda ws: sockets.append(ws))
        page.goto(FAKE_ORIGIN + "/")
        page.evaluate(
            """async () => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.log = {counts: [], notes: [], toasts: [], resyncs: [], statuses: [], unauthorized: 0};
                window.client = new NotifyClient({
                    backoffBaseMs: 40, backoffCapMs: 40, goingAwayMaxMs: 40, tooManyDelayMs: 600,
                    toastWindowMs: 20,
                    onUnreadCount: (c) => log.counts.push(c),
                    onNotification: (n) => log.notes.push(n.notification_id),
                    onToast: (n) => log.toasts.push(n.notification_id),
                    onResync: (info) => log.resyncs.push(info.reason),
                    onUnauthorized: () => { log.unauthorized += 1; },
                    onStatus: (s, info) => log.statuses.push([s, info.code ?? null, info.delayMs ?? null]),
                });
                window.client.start();
            }"""
        )

        def wait_sockets(n: int, timeout_s: float = 5.0) -> WebSocketRoute:
            deadline = time.monotonic() + timeout_s
            while len(sockets) < n and time.monotonic() < deadline:
                page.wait_for_timeout(20)
            assert len(sockets) >= n, f"{len(sockets)} connects, expected {n}"
            return sockets[n - 1]

        def log() -> dict[str, Any]:
            return page.evaluate("window.log")

        first = wait_sockets(1)
        assert "since=" not in first.url  # nothing seen yet
        first.send(_frame("unread_count", {"count": 3, "version": 5}))
        first.send(_frame("unread_count", {"count": 9, "version": 4}))  # stale: dropped
        first.send(_frame("unread_count", {"count": 4}))  # no version: taken
        first.send(_frame("unread_count", {"count": 2, "version": 6}))
        first.send(_frame("notification", _notification("n1", "2026-02-17T10:00:00.000Z")))
        first.send(_frame("notification", _notification("n1", "2026-02-17T10:00:00.000Z")))  # duplicate
        first.send("not json")
        first.send(_frame("notification", _notification("n2", "2026-02-17T10:00:01.000Z")))
        first.send(_frame("resync", {}))
        page.wait_for_function("() => window.log.resyncs.length === 1 && window.log.toasts.length === 2")
        state = log()
        assert state["counts"] == [3, 4, 2]
        assert state["notes"] == ["n1", "n2"]
        assert state["toasts"] == ["n1", "n2"]  # a single tab always wins the election
        assert state["resyncs"] == ["server"]
        assert page.evaluate("window.client.status") == "open"

        # 4008 (too slow): backoff, then a reconnect that asks for what came after n2.
        first.close(code=4008, reason="too slow")
        second = wait_sockets(2)
        assert "since=n2" in second.url
        second.send(_frame("unread_count", {"count": 1, "version": 2}))  # a new connection's first count
        second.send(_frame("notification", _notification("n2", "2026-02-17T10:00:01.000Z")))  # replayed
        second.send(_frame("notification", _notification("n3", "2026-02-17T10:00:02.000Z")))
        page.wait_for_function("() => window.log.notes.length === 3")
        state = log()
        assert state["notes"] == ["n1", "n2", "n3"]
        assert state["counts"][-1] == 1
        assert state["resyncs"] == ["server"]  # reconnected with since: the server replays, no refetch

        # 1001 (server going away): a random delay within goingAwayMaxMs.
        second.close(code=1001, reason="shutting down")
        third = wait_sockets(3)
        assert "since=n3" in third.url
        third.send(_frame("unread_count", {"count": 1}))

        # 4029 (too many connections): no reconnect at once, only after [300, 600] ms.
        page.wait_for_function("() => window.client.status === 'open'")
        closed_at = time.monotonic()
        third.close(code=4029, reason="too many connections")
        page.wait_for_timeout(250)
        assert len(sockets) == 3, "reconnected at once after 4029"
        fourth = wait_sockets(4)
        assert time.monotonic() - closed_at >= 0.3
        delays = {code: delay for status, code, delay in log()["statuses"] if status == "reconnecting"}
        assert 0 <= delays[1001] <= 40 and 0 <= delays[4008] <= 40 and 300 <= delays[4029] <= 600

        # 4001: stop for good.
        fourth.close(code=4001, reason="unauthorized")
        page.wait_for_function("() => window.log.unauthorized === 1")
        page.wait_for_timeout(500)
        assert len(sockets) == 4
        assert page.evaluate("window.client.status") == "unauthorized"
        assert log()["statuses"][-1][0] == "unauthorized"
    finally:
        context.close()


# ---------------------------------------------------------------- getToken(): refresh in band (issue 12)

JWT_SECRET = "browser-test-secret-" + "x" * 32
TOKEN_LIFETIME_S = 3


@pytest.fixture
def jwt_dev_server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[DevServer]:
    yield from _dev_server(cli_env, tmp_path, NOTIFY_AUTH_METHODS="session,jwt", NOTIFY_AUTH_JWT_SECRET=JWT_SECRET)


def test_get_token_refreshes_across_expiry_without_a_visible_disconnect(
    browser: Any, jwt_dev_server: DevServer
) -> None:
    """Tokens that live 3 s; the page's getToken() mints each (as the app's token endpoint would). Across
    three lifetimes the client keeps ONE socket, status stays "open", it sends `refresh` frames before
    each exp, and a notification emitted after the first token expired still arrives; REST works with
    the current token."""
    import jwt

    minted: list[int] = []

    def mint_token(user_id: str) -> str:
        exp = int(time.time()) + TOKEN_LIFETIME_S
        minted.append(exp)
        return jwt.encode({"sub": user_id, "exp": exp}, JWT_SECRET, algorithm="HS256")

    context = browser.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        sockets: list[Any] = []
        sent: list[str] = []
        received: list[str] = []

        def on_socket(ws: Any) -> None:
            sockets.append(ws)
            ws.on("framesent", lambda payload: sent.append(payload if isinstance(payload, str) else ""))
            ws.on("framereceived", lambda payload: received.append(payload if isinstance(payload, str) else ""))

        page.on("websocket", on_socket)
        page.expose_function("mintToken", mint_token)
        page.goto(jwt_dev_server.base_url + "/")
        page.evaluate(
            """async () => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.statuses = [];
                window.notes = [];
                window.client = new NotifyClient({
                    getToken: () => window.mintToken('erin'),
                    onStatus: (status) => window.statuses.push(status),
                    onNotification: (n) => window.notes.push(n.body),
                });
                window.client.start();
            }"""
        )
        page.wait_for_function("() => window.client.status === 'open'", timeout=UI_TIMEOUT_MS)
        first_exp = minted[0]
        page.wait_for_timeout(int((first_exp - time.time() + 2 * TOKEN_LIFETIME_S) * 1000))

        assert time.time() > first_exp + TOKEN_LIFETIME_S  # the first token and a successor have expired
        assert _emit(page, "PAYMENT_FAILED", ["erin"], {"last4": "1111"}) == 202
        page.wait_for_function("() => window.notes.length === 1", timeout=UI_TIMEOUT_MS)
        listed = page.evaluate("async () => (await window.client.list()).items.map(i => i.event_type)")
        statuses = page.evaluate("window.statuses")
        page.evaluate("window.client.stop()")

        assert listed == ["PAYMENT_FAILED"]
        assert statuses == ["connecting", "open"], statuses
        assert len(sockets) == 1, f"{len(sockets)} WebSocket connects: the refresh reconnected"
        refreshes = [json.loads(text) for text in sent if '"refresh"' in text]
        assert len(refreshes) >= 2 and all(r["type"] == "refresh" and r["token"] for r in refreshes)
        assert sum('"refreshed"' in text for text in received) >= 2
        assert errors == []
        log = jwt_dev_server.log()
        assert "authentication refused" not in log and "refresh refused" not in log
        assert not any(r["token"] in log for r in refreshes)  # ?token= and frames are never logged
    finally:
        context.close()


def _fake_jwt(page: Any, seconds: float) -> str:
    """A JWT-shaped credential expiring in `seconds` (the scripted server verifies nothing)."""
    return page.evaluate(
        """(seconds) => {
            const part = (o) => btoa(JSON.stringify(o)).replace(/=+$/, '').replace(/\\+/g, '-').replace(/\\//g, '_');
            return part({alg: 'HS256'}) + '.' + part({sub: 'u', exp: Date.now() / 1000 + seconds}) + '.sig';
        }""",
        seconds,
    )


def test_client_get_token_with_a_scripted_server(browser: Any) -> None:
    """notify-client.js's getToken() against a scripted WebSocket: the first token in ?token=, a refresh
    frame shortly before exp on the same socket, an opaque token's expiry taken from `refreshed`, and after
    a 4001 one reconnect with a fresh token before giving up."""
    from playwright.sync_api import Route, WebSocketRoute

    context = browser.new_context()
    sockets: list[WebSocketRoute] = []
    frames: list[tuple[int, str]] = []

    def serve(route: Route) -> None:
        if route.request.url.endswith("/static/notify-client.js"):
            route.fulfill(body=CLIENT_JS.read_text(), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>client</title>", content_type="text/html")

    def accept(ws: WebSocketRoute) -> None:
        index = len(sockets)
        sockets.append(ws)
        ws.on_message(lambda message: frames.append((index, str(message))))

    try:
        page = context.new_page()
        page.route(f"{FAKE_ORIGIN}/**", serve)
        page.route_web_socket(re.compile(r"^ws://notify\.test/ws/notifications"), accept)
        page.goto(FAKE_ORIGIN + "/")
        tokens = [_fake_jwt(page, 2.0), "opaque-second", _fake_jwt(page, 60), _fake_jwt(page, 60)]
        page.evaluate(
            """async (tokens) => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.given = [];
                window.statuses = [];
                window.unauthorized = 0;
                window.client = new NotifyClient({
                    backoffBaseMs: 20,
                    getToken: async () => { const t = tokens[window.given.length]; window.given.push(t); return t; },
                    onStatus: (s) => window.statuses.push(s),
                    onUnauthorized: () => { window.unauthorized += 1; },
                });
                window.client.start();
            }""",
            tokens,
        )
        deadline = time.monotonic() + 5
        while not sockets and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        first = sockets[0]
        assert f"token={tokens[0]}" in first.url
        first.send(_frame("unread_count", {"count": 0}))

        # 2 s token: refreshed a quarter of its life before exp, on the same socket.
        started = time.monotonic()
        deadline = started + 3
        while not frames and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert frames, "no refresh frame before the token expired"
        assert 1.0 <= time.monotonic() - started <= 2.0
        assert frames[0] == (0, json.dumps({"type": "refresh", "token": "opaque-second"}).replace(" ", ""))
        # The server answers with the opaque credential's expiry: the next refresh is planned from it.
        expires = page.evaluate("new Date(Date.now() + 1600).toISOString()")
        first.send(_frame("refreshed", {"expires_at": expires}))
        deadline = time.monotonic() + 3
        while len(frames) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert frames[1] == (0, json.dumps({"type": "refresh", "token": tokens[2]}).replace(" ", ""))
        assert len(sockets) == 1 and page.evaluate("window.statuses") == ["connecting", "open"]

        # 4001: one more connect with a fresh token, then (4001 again) stop.
        first.close(code=4001, reason="unauthorized")
        deadline = time.monotonic() + 3
        while len(sockets) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert len(sockets) == 2 and f"token={tokens[3]}" in sockets[1].url
        sockets[1].close(code=4001, reason="unauthorized")
        page.wait_for_function("() => window.unauthorized === 1")
        page.wait_for_timeout(300)
        assert len(sockets) == 2
        assert page.evaluate("window.client.status") == "unauthorized"
    finally:
        context.close()


# ------------------------------------------------------- Server-Sent Events where WebSockets are blocked (issue 13)

# Installed before any script of the page runs: `WebSocket` as a proxy that strips the upgrade leaves it to
# a page — it never opens and closes with 1006. `window.__blockWs = false` lets new ones through to the real
# WebSocket; `window.__wsTries` counts the constructions.
BLOCK_WEBSOCKETS = """
(() => {
  const RealWebSocket = window.WebSocket;
  window.__wsTries = 0;
  window.__blockWs = true;
  class BlockedWebSocket extends EventTarget {
    constructor(url, protocols) {
      window.__wsTries += 1;
      if (!window.__blockWs) return new RealWebSocket(url, protocols);
      super();
      this.url = String(url);
      this.readyState = 0;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      setTimeout(() => {
        if (this.readyState === 3) return;
        this.readyState = 3;
        const error = new Event('error');
        this.dispatchEvent(error);
        if (this.onerror) this.onerror(error);
        const close = new CloseEvent('close', {code: 1006, reason: '', wasClean: false});
        this.dispatchEvent(close);
        if (this.onclose) this.onclose(close);
      }, 20);
    }
    send() { throw new DOMException('not open', 'InvalidStateError'); }
    close() { this.readyState = 3; }
  }
  Object.assign(BlockedWebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
  window.WebSocket = BlockedWebSocket;
})();
"""


def _cli(cli_env: dict[str, str], *args: str) -> str:
    python = REPO_ROOT / ".venv" / "bin" / "python"
    result = subprocess.run([str(python if python.exists() else sys.executable), "-m", "notify_server", *args],
                            cwd=REPO_ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _stream_requests(page: Any) -> list[Any]:
    """Every request the page makes to the event stream, in order."""
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request) if "/sse/notifications" in request.url else None)
    return requests


def _watched_page(context: Any, label: str, errors: list[str]) -> tuple[Any, list[Any], list[Any]]:
    """A new tab of `context` whose script errors go to `errors` (as "label: error"); also the WebSockets
    it opens and its requests to the event stream, each in order, as they happen."""
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{label}: {exc}"))
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))  # playwright wants a Python function, not a builtin
    return page, sockets, _stream_requests(page)


def _item_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#list .item", "items => items.map(item => item.dataset.id)")


def _wait_stored(database_url: str, event_id: str, timeout_s: float = 20.0) -> str:
    """The notification_id of the event's row, once a worker has stored it."""
    import psycopg2

    deadline = time.monotonic() + timeout_s
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute("SELECT notification_id::text FROM notifications WHERE event_id = %s", (event_id,))
                row = cur.fetchone()
            if row:
                return str(row[0])
            time.sleep(0.05)
    finally:
        conn.close()
    pytest.fail(f"event {event_id} was not stored within {timeout_s} s")


def _sign_in(page: Any, base: str, user: str) -> None:
    from playwright.sync_api import expect

    page.goto(base + "/")
    page.fill("#signin-user", user)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#who-name")).to_have_text(user)
    expect(page.locator("#status")).to_have_attribute("data-status", "open")


def test_demo_falls_back_to_sse_where_websockets_are_blocked_and_resumes_with_last_event_id(
    browser: Any, dev_server: DevServer, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Tabs whose WebSocket never opens (the page's `WebSocket` replaced) get the notifications, counts
    and toasts over SSE after three failed opens, and the demo says so; a browser without the block stays
    on the WebSocket. SIGKILL of the node drops the stream without a close event: the browser's own
    reconnect sends Last-Event-ID and gets what was stored meanwhile. Both browsers end up with the same
    notifications in the same order. Signing out in one blocked tab ends the other's stream with 4001."""
    from playwright.sync_api import expect

    from tests.processes import Process

    expect.set_options(timeout=UI_TIMEOUT_MS)
    base = dev_server.base_url
    port = int(base.rsplit(":", 1)[1])
    worker = Process(["worker"], cli_env, tmp_path / "worker.log")  # stores events while the node is down
    blocked = browser.new_context(viewport={"width": 1180, "height": 680})
    blocked.add_init_script(BLOCK_WEBSOCKETS)
    unblocked = browser.new_context(viewport={"width": 1180, "height": 680})
    restarted: DevServer | None = None
    errors: list[str] = []
    try:
        page_a, sockets_a, streams_a = _watched_page(blocked, "A", errors)
        _sign_in(page_a, base, "sam")
        expect(page_a.locator("#transport")).to_have_text("SSE (fallback)")
        expect(page_a.locator("#transport")).to_have_attribute("data-transport", "sse")
        assert page_a.evaluate("window.__wsTries") == 3  # fallbackAfter (3) failed opens, then the stream
        assert len(streams_a) == 1 and "token=" not in streams_a[0].url  # same origin: the cookie

        page_c, sockets_c, streams_c = _watched_page(unblocked, "C", errors)
        _sign_in(page_c, base, "sam")
        expect(page_c.locator("#transport")).to_have_text("WebSocket")
        assert len(sockets_c) == 1 and streams_c == []

        # A notification (its text is data, never markup) and the counts, over the stream.
        hostile = '<img src=x onerror="window.pwned=1"><b>hi</b>'
        assert _emit(page_a, "COMMENT_ADDED", ["sam"], {"author_name": "Eve", "excerpt": hostile}) == 202
        for page in (page_a, page_c):
            expect(page.locator("#list .item.unread .body")).to_have_text(f"Eve commented: {hostile}")
            expect(_badge(page)).to_have_text("1")
        expect(page_a.locator("#toasts .toast:not(.toast-error) .body")).to_have_text(f"Eve commented: {hostile}")
        assert page_a.locator("#list img, #list b, #toasts img, #toasts b").count() == 0
        assert page_a.evaluate("window.pwned") is None
        ARTIFACTS.mkdir(exist_ok=True)
        page_a.screenshot(path=str(ARTIFACTS / "demo-sse.png"))
        page_c.click("#list .item.unread")  # read over there: the new count reaches A over SSE
        expect(_badge(page_a)).to_be_hidden()
        expect(_badge(page_a)).to_have_attribute("data-count", "0")
        seen_id = _item_ids(page_a)[0]

        # The node dies without a word; an event is stored while it is down; it comes back on the same port.
        before = len(streams_a)
        dev_server.process.kill()
        dev_server.process.wait(timeout=10)
        expect(page_a.locator("#status")).to_have_attribute("data-status", "reconnecting")
        _cli(cli_env, "emit", "PAYMENT_FAILED", "--to", "sam", "--data", '{"last4": "4242"}', "--event-id", "sse-missed")
        missed_id = _wait_stored(cli_env["NOTIFY_DATABASE_URL"], "sse-missed")
        restarted = _start_dev(cli_env, tmp_path, port, "dev-restarted.log")
        restarted.wait_ready()

        expect(page_a.locator(f'#list .item[data-id="{missed_id}"]')).to_have_count(1)
        expect(page_a.locator("#status")).to_have_attribute("data-status", "open")
        expect(page_a.locator("#transport")).to_have_text("SSE (fallback)")
        expect(_badge(page_a)).to_have_text("1")
        resumed = streams_a[before:]
        assert resumed, "the stream did not reconnect"
        # Every reconnect was the browser's own, carrying the last id it saw (none of the client's own).
        # The browser's own reconnects of the same EventSource (the client's would ask ?since=); the one
        # that got through carried the last id seen (those refused never sent any header).
        assert {r.url for r in resumed} == {streams_a[0].url}
        assert resumed[-1].failure is None and resumed[-1].all_headers().get("last-event-id") == seen_id
        expect(page_c.locator(f'#list .item[data-id="{missed_id}"]')).to_have_count(1)
        expect(page_c.locator("#transport")).to_have_text("WebSocket")  # (it may have tried SSE meanwhile)

        assert _emit(page_c, "COMMENT_ADDED", ["sam"], {"author_name": "Sam", "excerpt": "back"}) == 202
        for page in (page_a, page_c):
            expect(page.locator("#list .item")).to_have_count(3)
            expect(_badge(page)).to_have_text("2")
        assert _item_ids(page_a) == _item_ids(page_c)
        assert sockets_a == [], "a blocked tab opened a real WebSocket"

        # Sign out in A: the session is revoked, B's stream ends with `close` 4001, and B stays stopped.
        page_b, _, streams_b = _watched_page(blocked, "B", errors)
        page_b.goto(base + "/")
        expect(page_b.locator("#status")).to_have_attribute("data-status", "open")
        expect(page_b.locator("#transport")).to_have_text("SSE (fallback)")
        expect(page_b.locator("#list .item")).to_have_count(3)
        page_a.click("#sign-out")
        expect(page_b.locator("#signin")).to_be_visible()
        expect(page_b.locator("#status")).to_have_attribute("data-status", "unauthorized")
        expect(page_b.locator("#transport")).to_be_hidden()
        count = len(streams_b)
        page_b.wait_for_timeout(2000)
        assert len(streams_b) == count == 1, "the stream was reopened after 4001"
        assert errors == []
    finally:
        blocked.close()
        unblocked.close()
        worker.stop()
        if restarted is not None and restarted.process.poll() is None:
            restarted.stop()


def test_client_over_sse_refreshes_get_token_credentials_returns_to_the_websocket_and_stops_at_expiry(
    browser: Any, jwt_dev_server: DevServer, cli_env: dict[str, str]
) -> None:
    """WebSockets blocked: getToken's 3-second JWTs over SSE — before each exp a stream with the fresh
    credential replaces the old one (status stays "open", nothing missed); the WebSocket is tried in the
    background and takes over once it opens; a session that expires ends the stream with 4001 and the
    client stops for good; a refused credential (401, which EventSource does not report) stops it too."""
    import jwt

    minted: list[int] = []

    def mint_token(user_id: str) -> str:
        exp = int(time.time()) + TOKEN_LIFETIME_S
        minted.append(exp)
        return jwt.encode({"sub": user_id, "exp": exp}, JWT_SECRET, algorithm="HS256")

    base = jwt_dev_server.base_url
    context = browser.new_context()
    context.add_init_script(BLOCK_WEBSOCKETS)
    try:
        errors: list[str] = []
        page, sockets, streams = _watched_page(context, "page", errors)
        page.expose_function("mintToken", mint_token)
        page.goto(base + "/")
        page.evaluate(
            """async () => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.statuses = [];
                window.notes = [];
                window.client = new NotifyClient({
                    getToken: () => window.mintToken('erin'),
                    fallbackAfter: 1, backoffBaseMs: 50, wsRetryMs: 1000,
                    onStatus: (status, info) => window.statuses.push([status, info.transport || null]),
                    onNotification: (n) => window.notes.push(n.notification_id),
                });
                window.client.start();
            }"""
        )
        page.wait_for_function("() => window.client.status === 'open'", timeout=UI_TIMEOUT_MS)
        assert page.evaluate("window.client.transport") == "sse"
        first_exp = minted[0]
        page.wait_for_timeout(int((first_exp - time.time() + 2 * TOKEN_LIFETIME_S) * 1000))
        assert time.time() > first_exp + TOKEN_LIFETIME_S  # the first token and a successor have expired
        assert _emit(page, "PAYMENT_FAILED", ["erin"], {"last4": "1111"}) == 202
        page.wait_for_function("() => window.notes.length === 1", timeout=UI_TIMEOUT_MS)

        assert page.evaluate("window.statuses") == [
            ["connecting", "websocket"], ["reconnecting", "websocket"], ["connecting", "sse"], ["open", "sse"],
        ]
        tokens = [re.search(r"[?&]token=([^&]+)", r.url).group(1) for r in streams]
        assert len(set(tokens)) >= 3, f"{len(tokens)} streams: not one per credential"
        assert page.evaluate("window.__wsTries") >= 3  # tried again in the background, still blocked
        assert sockets == []

        # The block goes away: the next background try opens a WebSocket, which replaces the stream.
        page.evaluate("window.__blockWs = false")
        page.wait_for_function("() => window.client.transport === 'websocket'", timeout=UI_TIMEOUT_MS)
        assert _emit(page, "PAYMENT_FAILED", ["erin"], {"last4": "2222"}) == 202
        page.wait_for_function("() => window.notes.length === 2", timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(300)
        notes = page.evaluate("window.notes")
        assert len(set(notes)) == len(notes) == 2
        assert page.evaluate("window.statuses")[4:] == [["open", "websocket"]]
        assert len(sockets) == 1
        page.evaluate("window.client.stop()")

        # A session that expires while its stream is open: `close` 4001, the client stops, no reconnect.
        page.evaluate("window.__blockWs = true")
        token = _cli(cli_env, "session", "create", "--user", "dave", "--ttl-s", "5")
        page.evaluate(
            """async (token) => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.dave = [];
                window.daveClient = new NotifyClient({
                    token, fallbackAfter: 1, backoffBaseMs: 50, wsRetryMs: 0,
                    onStatus: (status, info) => window.dave.push([status, info.transport || null]),
                    onUnauthorized: (info) => window.dave.push(['onUnauthorized', info.code]),
                });
                window.daveClient.start();
            }""",
            token,
        )
        page.wait_for_function("() => window.daveClient.status === 'open'", timeout=UI_TIMEOUT_MS)
        page.wait_for_function("() => window.daveClient.status === 'unauthorized'", timeout=UI_TIMEOUT_MS)
        mine = [r for r in streams if token in r.url]
        page.wait_for_timeout(2000)
        assert [r for r in streams if token in r.url] == mine and len(mine) == 1
        assert page.evaluate("window.dave") == [
            ["connecting", "websocket"], ["reconnecting", "websocket"], ["connecting", "sse"], ["open", "sse"],
            ["unauthorized", "sse"], ["onUnauthorized", 4001],
        ]

        # A credential the server refuses outright: 401, which EventSource cannot tell from a dropped
        # network; the client asks the stream's URL once more with fetch, reads 401 as 4001 and stops.
        page.evaluate(
            """async () => {
                const { NotifyClient } = await import('/static/notify-client.js');
                window.stranger = [];
                window.strangerClient = new NotifyClient({
                    token: 'not-a-session', fallbackAfter: 1, backoffBaseMs: 50,
                    onStatus: (status, info) => window.stranger.push([status, info.code ?? null]),
                });
                window.strangerClient.start();
            }"""
        )
        page.wait_for_function("() => window.strangerClient.status === 'unauthorized'", timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(1000)
        refused = [r.resource_type for r in streams if "not-a-session" in r.url]
        assert refused == ["eventsource", "fetch"], refused
        assert page.evaluate("window.stranger") == [
            ["connecting", None], ["reconnecting", 1006], ["connecting", None], ["unauthorized", 4001],
        ]
        assert errors == []
    finally:
        context.close()


def test_the_demo_page_says_so_when_the_embedded_redis_of_dev_stops(
    browser: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`notify-server dev` with its own Redis (valkey): killed under it, the page shows a banner naming it."""
    from playwright.sync_api import expect

    from notify_server.ops.embedded import redis_pid

    expect.set_options(timeout=UI_TIMEOUT_MS)
    data_dir = tmp_path / "dev-data"
    server = _start_dev(cli_env, tmp_path, _free_port(), "dev.log", NOTIFY_REDIS_URL="")
    context = browser.new_context(viewport={"width": 1180, "height": 680})
    try:
        server.wait_ready()
        page = context.new_page()
        page.goto(server.base_url + "/")
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#dev-problem")).to_be_hidden()

        pid = redis_pid(data_dir / "valkey")
        assert pid is not None, server.log()
        os.kill(pid, signal.SIGKILL)

        expect(page.locator("#dev-problem")).to_be_visible()
        expect(page.locator("#dev-problem")).to_contain_text("the embedded Redis has stopped")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-embedded-stopped.png"))
    finally:
        context.close()
        assert server.stop() == 0, server.log()
    assert "the embedded Redis has stopped" in server.log()
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- issue 19: the preferences panel


def test_demo_preferences_panel_mutes_a_category_and_a_type_and_locks_critical_ones(
    browser: Any, dev_server: DevServer
) -> None:
    """The panel shows a switch per category and per type (critical ones checked and locked); switching
    a category and a type off stops their events reaching this user, a critical one still arrives, and
    notify-client.js's getPreferences / setPreferences speak the same API (400 naming a critical type)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1180, "height": 900})
    try:
        page, _, _ = _watched_page(context, "P", errors)
        _sign_in(page, dev_server.base_url, "pat")

        def switch(key: str) -> Any:
            return page.locator(f'#preferences input[data-pref="{key}"]')

        expect(page.locator("#pref-categories .pref-category")).to_have_count(4)
        expect(switch("channel:in_app")).to_be_checked()
        expect(page.locator('.pref-category[data-category=claims] li[data-type]')).to_have_count(3)
        expect(switch("type:PAYMENT_FAILED")).to_be_checked()
        expect(switch("type:PAYMENT_FAILED")).to_be_disabled()
        expect(page.locator("li[data-type=PAYMENT_FAILED] .locked")).to_have_text("critical")
        expect(page.locator("li[data-type=DOCUMENT_REQUESTED] .note")).to_contain_text("10 min")

        switch("category:claims").uncheck()
        expect(switch("type:CLAIM_REJECTED")).not_to_be_checked()  # the type follows its category
        expect(switch("type:COMMENT_ADDED")).to_be_checked()
        # The reload below must come after the server has this change: wait for its PATCH to answer.
        with page.expect_response(lambda r: r.url.endswith("/api/preferences") and r.request.method == "PATCH"):
            switch("type:COMMENT_ADDED").uncheck()
        expect(switch("category:comments")).to_be_checked()  # one type off, its category stays on
        page.reload()  # stored on the server, not in the page
        expect(switch("category:claims")).not_to_be_checked()
        expect(switch("type:COMMENT_ADDED")).not_to_be_checked()
        expect(page.locator("#status")).to_have_attribute("data-status", "open")

        # Muted ones first: by the time the later ones are listed, the worker has been through them.
        assert _emit(page, "CLAIM_REJECTED", ["pat"], {"provider_name": "Dr. Muted", "claim_id": "c1"}) == 202
        assert _emit(page, "COMMENT_ADDED", ["pat"], {"author_name": "Muted", "excerpt": "x"}) == 202
        assert _emit(page, "APPOINTMENT_REMINDER", ["pat"], {"provider_name": "Dr. On", "time": "9:00",
                                                              "date": "Monday", "appointment_id": "a1"}) == 202
        assert _emit(page, "PAYMENT_FAILED", ["pat"], {"last4": "4242"}) == 202
        expect(page.locator("#list .item")).to_have_count(2)
        page.wait_for_timeout(500)
        types = page.eval_on_selector_all("#list .item .meta span:first-child", "spans => spans.map(s => s.textContent)")
        assert sorted(types) == ["APPOINTMENT_REMINDER", "PAYMENT_FAILED"]
        expect(_badge(page)).to_have_text("2")

        answer = page.evaluate(
            """async () => {
                const { NotifyClient } = await import('/static/notify-client.js');
                const client = new NotifyClient();
                const before = await client.getPreferences();
                let refused = null;
                try {
                    await client.setPreferences({event_types: {PAYMENT_FAILED: {in_app: false}}});
                } catch (error) {
                    refused = [error.status, error.code, error.message];
                }
                const after = await client.setPreferences({categories: {claims: {in_app: null}}});
                return {before: before.categories.claims, refused, after: after.categories.claims};
            }"""
        )
        assert answer["before"] == {"in_app": False, "web_push": True}
        assert answer["refused"][:2] == [400, "bad_request"]
        assert answer["refused"][2].startswith("event_types.PAYMENT_FAILED.in_app")
        assert answer["after"] == {"in_app": True, "web_push": True}
        assert errors == []
    finally:
        context.close()
