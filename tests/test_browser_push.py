"""Web Push in a real headless Chromium against the real `notify-server dev` (issue 20).

What headless Chromium cannot do here, and what stands in for it:
- `pushManager.subscribe()` needs the browser's push service (Google's FCM for Chromium), which this
  machine cannot reach; headless Chromium refuses at once ("AbortError: Registration failed -
  permission denied", with the notifications permission granted). The test checks that refusal, then
  replaces `PushManager.prototype.subscribe` / `getSubscription` in the page with what the browser does:
  a P-256 key pair and a 16-byte auth secret made by WebCrypto, and an endpoint — on the test's push
  service (tests/pushservice.py) instead of FCM. Everything else is real: the demo's button, enablePush()
  (permission, the server's VAPID key, the service worker's registration, the POST), the server's
  checks, the worker's encryption and VAPID header, and the push service's verification and decryption
  with the private key the page made.
- A push service delivers to the browser over its own channel: the test hands the decrypted message to
  the service worker through the DevTools protocol (`ServiceWorker.deliverPushMessage`), as Chromium does
  after decrypting, and reads the notification notify-sw.js shows (`registration.getNotifications()`).
- A click on a system notification cannot be made headless: the test dispatches `notificationclick` in
  the service worker. Outside a real click the browser refuses `focus()` and `openWindow()`; so what is
  proven is that the open tab is found and told (`onPushClick`), not that it comes to the front, and
  the no-tab branch (`openWindow(action_url)`) is not run here.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.pushservice import PushService
from tests.test_browser import UI_TIMEOUT_MS, _dev_server, _free_port, _watched_page, browser  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

PAYLOAD_KEYS = {"notification_id", "title", "body", "priority", "action_url", "event_type", "metadata", "created_at"}

# What the browser does in subscribe(), minus the push service: keys made by WebCrypto, kept (with the
# endpoint) in localStorage so that getSubscription() finds them again after a reload.
FAKE_PUSH_MANAGER = """
(() => {
  const ENDPOINT_BASE = %s;
  const STORE = "__test_push_subscription";
  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const fromB64url = (text) =>
    Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  const realSubscribe = PushManager.prototype.subscribe;
  window.__realSubscribe = async (options) => {
    const registration = await navigator.serviceWorker.getRegistration("/");
    return realSubscribe.call(registration.pushManager, options);
  };
  function revive(saved) {
    return {
      endpoint: saved.endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey: fromB64url(saved.applicationServerKey).buffer },
      toJSON: () => ({ endpoint: saved.endpoint, expirationTime: null,
                       keys: { p256dh: saved.p256dh, auth: saved.auth } }),
      unsubscribe: async () => { localStorage.removeItem(STORE); return true; },
    };
  }
  PushManager.prototype.subscribe = async function (options) {
    if (!options || options.userVisibleOnly !== true) throw new DOMException("userVisibleOnly", "NotAllowedError");
    const keys = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const saved = {
      endpoint: ENDPOINT_BASE + "/push/" + b64url(crypto.getRandomValues(new Uint8Array(12))),
      p256dh: b64url(await crypto.subtle.exportKey("raw", keys.publicKey)),
      auth: b64url(crypto.getRandomValues(new Uint8Array(16))),
      applicationServerKey: b64url(options.applicationServerKey),
      privateJwk: await crypto.subtle.exportKey("jwk", keys.privateKey),
    };
    localStorage.setItem(STORE, JSON.stringify(saved));
    return revive(saved);
  };
  PushManager.prototype.getSubscription = async function () {
    const saved = localStorage.getItem(STORE);
    return saved ? revive(JSON.parse(saved)) : null;
  };
  window.__testPushSubscription = () => JSON.parse(localStorage.getItem(STORE) || "null");
})();
"""


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ThreadedPushService:
    """tests/pushservice.py on a loop of its own thread (the browser test is synchronous)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.service: PushService | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._running: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def start(self, vapid_public_key: str) -> PushService:
        ready = threading.Event()

        async def run() -> None:
            self._stop = asyncio.Event()
            async with PushService(vapid_public_key).running(self.port) as service:
                self.service = service
                ready.set()
                await self._stop.wait()

        self._running = asyncio.run_coroutine_threadsafe(run(), self._loop)
        assert ready.wait(10), "the push service did not start"
        assert self.service is not None
        return self.service

    def call(self, action: Any) -> Any:
        """Run `action()` on the service's loop (its state belongs to that thread)."""

        async def run() -> Any:
            return action()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._running.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def push_port() -> int:
    return _free_port()


@pytest.fixture
def push_dev_server(cli_env: dict[str, str], tmp_path: Path, push_port: int) -> Iterator[Any]:
    """`notify-server dev` (which turns web push on with a key of its own) allowing the test's push service."""
    yield from _dev_server(cli_env, tmp_path, NOTIFY_WEB_PUSH_ALLOWED_HOSTS=f"http://127.0.0.1:{push_port}")


def _sign_in(page: Any, base: str, user: str) -> None:
    from playwright.sync_api import expect

    page.goto(base + "/")
    page.fill("#signin-user", user)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#who-name")).to_have_text(user)
    expect(page.locator("#status")).to_have_attribute("data-status", "open")


def _wait(page: Any, condition: Any, what: str, timeout_s: float = 20.0) -> Any:
    """Until condition() is true; waits through the page (Playwright delivers events meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        page.wait_for_timeout(50)
    raise AssertionError(f"timed out waiting for {what}")


def _subscriptions_of(database_url: str, user_id: str) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM push_subscriptions WHERE user_id = %s", (user_id,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_enable_push_subscribes_and_an_away_user_gets_the_notification_from_the_service_worker(
    browser: Any, push_dev_server: Any, push_port: int, cli_env: dict[str, str],  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    base = push_dev_server.base_url
    database_url = cli_env["NOTIFY_DATABASE_URL"]
    errors: list[str] = []
    pushes = ThreadedPushService(push_port)
    alice_context = browser.new_context()
    bob_context = browser.new_context()
    try:
        alice_context.grant_permissions(["notifications"], origin=base)
        alice_context.add_init_script(FAKE_PUSH_MANAGER % repr(f"http://127.0.0.1:{push_port}"))
        page, _, _ = _watched_page(alice_context, "alice", errors)
        _sign_in(page, base, "alice")
        public_key = page.evaluate("async () => (await (await fetch('/api/push/vapid-public-key')).json()).public_key")
        service = pushes.start(public_key)

        # The real subscribe first: headless Chromium has no push service to register with.
        real = page.evaluate("""async (key) => {
            await navigator.serviceWorker.register('/static/notify-sw.js', {scope: '/'});
            await navigator.serviceWorker.ready;
            const applicationServerKey = Uint8Array.from(atob(key.replace(/-/g, '+').replace(/_/g, '/')),
                                                         (c) => c.charCodeAt(0));
            try {
                const subscription = await window.__realSubscribe({userVisibleOnly: true, applicationServerKey});
                return {subscription: subscription.toJSON()};
            } catch (error) {
                return {error: `${error.name}: ${error.message}`};
            }
        }""", public_key)
        if "error" in real:
            assert real["error"].startswith("AbortError"), real
        else:  # a browser that can reach its push service: an https endpoint of its own
            assert real["subscription"]["endpoint"].startswith("https://"), real

        # The demo's button: enablePush() end to end (its subscribe made as the browser would, above).
        button = page.locator("#push")
        expect(button).to_have_text("Enable push")
        button.click()
        expect(button).to_have_text("Disable push")
        registration = page.evaluate("""async () => {
            const registration = await navigator.serviceWorker.getRegistration('/');
            return {scope: registration.scope, script: registration.active && registration.active.scriptURL};
        }""")
        assert registration == {"scope": base + "/", "script": base + "/static/notify-sw.js"}
        saved = page.evaluate("() => window.__testPushSubscription()")
        assert saved["applicationServerKey"] == public_key  # subscribed with the server's VAPID key
        assert saved["endpoint"].startswith(f"http://127.0.0.1:{push_port}/push/")
        assert len(_b64url_decode(saved["p256dh"])) == 65 and _b64url_decode(saved["p256dh"])[0] == 4
        assert len(_b64url_decode(saved["auth"])) == 16
        assert _subscriptions_of(database_url, "alice") == 1
        jwk = saved["privateJwk"]
        private_key = ec.derive_private_key(int.from_bytes(_b64url_decode(jwk["d"]), "big"), ec.SECP256R1())
        pushes.call(lambda: service.adopt(saved["endpoint"], private_key, _b64url_decode(saved["auth"])))

        # Alice closes her tab (away); Bob's event reaches her as a push, verified and decrypted.
        page.close()
        bob, _, _ = _watched_page(bob_context, "bob", errors)
        _sign_in(bob, base, "bob")
        status = bob.evaluate("""async () => (await fetch('/dev/emit', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({event_type: 'CLAIM_REJECTED', to: ['alice'],
                                  data: {provider_name: 'Dr. Smith', claim_id: 'abc123'}})})).status""")
        assert status == 202
        delivered = _wait(bob, lambda: pushes.call(lambda: list(service.delivered)), "the push")
        assert pushes.call(lambda: list(service.refused)) == []
        message = delivered[0].message
        assert message["type"] == "notification" and set(message["data"]) == PAYLOAD_KEYS
        assert message["data"]["title"] == "Claim Rejected"

        # Chromium hands the decrypted message to the service worker, which shows it.
        page, _, _ = _watched_page(alice_context, "alice again", errors)
        page.goto(base + "/")
        expect(page.locator("#push")).to_have_text("Disable push")
        cdp = alice_context.new_cdp_session(page)
        registrations: list[dict[str, Any]] = []
        cdp.on("ServiceWorker.workerRegistrationUpdated", lambda event: registrations.extend(event["registrations"]))
        cdp.send("ServiceWorker.enable")
        _wait(page, lambda: registrations, "the service worker registration")
        cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": base, "registrationId": registrations[0]["registrationId"],
            "data": orjson.dumps(message).decode()})
        shown = _wait(page, lambda: page.evaluate("""async () => {
            const registration = await navigator.serviceWorker.getRegistration('/');
            return (await registration.getNotifications()).map((n) => ({title: n.title, body: n.body, tag: n.tag,
                                                                         data: n.data}));
        }"""), "the notification")
        assert shown == [{"title": "Claim Rejected", "body": "Your claim for Dr. Smith has been rejected.",
                          "tag": message["data"]["notification_id"],
                          "data": {"notification_id": message["data"]["notification_id"],
                                   "action_url": "/claims/abc123"}}]

        # A click with a tab open: the tab is found and told where the notification leads.
        page.evaluate("""() => { window.__clicks = [];
            navigator.serviceWorker.addEventListener('message', (event) => window.__clicks.push(event.data)); }""")
        (worker,) = alice_context.service_workers
        worker.evaluate("""async () => {
            const [notification] = await self.registration.getNotifications();
            self.dispatchEvent(new NotificationEvent('notificationclick', {notification}));
        }""")
        clicks = _wait(page, lambda: page.evaluate("() => window.__clicks"), "the click message")
        assert clicks == [{"type": "notify-push-click", "url": base + "/claims/abc123",
                           "notification_id": message["data"]["notification_id"]}]

        # Disable: the server forgets the subscription, the browser drops it.
        page.locator("#push").click()
        expect(page.locator("#push")).to_have_text("Enable push")
        assert page.evaluate("() => window.__testPushSubscription()") is None
        assert _subscriptions_of(database_url, "alice") == 0
        assert errors == []
    finally:
        alice_context.close()
        bob_context.close()
        pushes.close()
