"""The demo page's inbox (issue 18) in a real headless Chromium against the real `notify-server dev`: two
tabs of one user, the bell's unseen badge, the Unread / All / Archived tabs, archive and mark-unread —
every change made in one tab shows in the other without a reload. (The browser, the dev server and the
page helpers are tests/test_browser.py's.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_browser import (  # noqa: F401  (fixtures, used by name)
    UI_TIMEOUT_MS,
    DevServer,
    _badge,
    _emit,
    _watched_page,
    browser,
    dev_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

PAYMENT = "We could not charge your card ending in 4242"
CLAIM = "Your claim for Dr. Smith has been rejected."
COMMENT = "Sam commented: Looks good to me!"


def _item(page: Any, text: str) -> Any:
    return page.locator("#list .item", has_text=text)


def _tab(page: Any, name: str) -> None:
    page.click(f"#tabs .tab[data-tab={name}]")


def test_inbox_two_tabs_unseen_badge_archive_and_unread(browser: Any, dev_server: DevServer) -> None:  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1180, "height": 720})
    try:
        page_a, _, _ = _watched_page(context, "A", errors)
        page_a.goto(dev_server.base_url + "/")
        page_a.fill("#signin-user", "inbox-user")
        page_a.click("#signin-form button[type=submit]")
        expect(page_a.locator("#status")).to_have_attribute("data-status", "open")
        page_b, _, _ = _watched_page(context, "B", errors)
        page_b.goto(dev_server.base_url + "/")
        expect(page_b.locator("#status")).to_have_attribute("data-status", "open")
        tabs = (page_a, page_b)

        # New notifications raise the bell's unseen badge and the Unread tab's count, in both tabs.
        assert _emit(page_a, "CLAIM_REJECTED", ["inbox-user"], {"provider_name": "Dr. Smith", "claim_id": "c1"}) == 202
        assert _emit(page_a, "PAYMENT_FAILED", ["inbox-user"], {"last4": "4242"}) == 202
        assert _emit(page_b, "COMMENT_ADDED", ["inbox-user"], {"author_name": "Sam", "excerpt": "Looks good to me!"}) \
            == 202
        for page in tabs:
            expect(page.locator("#list .item")).to_have_count(3)
            expect(_badge(page)).to_have_text("3")
            expect(page.locator("#unread-count")).to_have_text("3")

        # Opening the bell in A clears the badge in both; nothing is read by it.
        page_a.click("#bell")
        for page in tabs:
            expect(_badge(page)).to_be_hidden()
            expect(_badge(page)).to_have_attribute("data-count", "0")
            expect(page.locator("#unread-count")).to_have_text("3")

        # Archiving an unread one in A: out of both inboxes, and out of the unread count.
        _item(page_a, PAYMENT).locator("button.archive").click()
        for page in tabs:
            expect(_item(page, PAYMENT)).to_have_count(0)
            expect(page.locator("#list .item")).to_have_count(2)
            expect(page.locator("#unread-count")).to_have_text("2")

        # B's Archived tab lists it; A looks at its Unread tab.
        _tab(page_b, "archived")
        expect(page_b.locator("#list .item")).to_have_count(1)
        expect(_item(page_b, PAYMENT).locator("button.archive")).to_have_text("Unarchive")
        _tab(page_a, "unread")
        expect(page_a.locator("#list .item")).to_have_count(2)

        # Unarchive in B brings it back: gone from B's Archived tab, back in A's Unread tab.
        _item(page_b, PAYMENT).locator("button.archive").click()
        expect(page_b.locator("#list .item")).to_have_count(0)
        expect(_item(page_a, PAYMENT)).to_have_count(1)
        for page in tabs:
            expect(page.locator("#unread-count")).to_have_text("3")

        # Mark read in A (its button): it leaves A's Unread tab and shows read in B's All tab.
        _tab(page_b, "all")
        expect(page_b.locator("#list .item.unread")).to_have_count(3)
        _item(page_a, CLAIM).locator("button.mark-unread").click()
        expect(_item(page_a, CLAIM)).to_have_count(0)
        expect(page_b.locator("#list .item.unread")).to_have_count(2)
        expect(_item(page_b, CLAIM)).not_to_have_class("item unread")
        # Mark it unread in B: back in A's Unread tab, counted again in both.
        _item(page_b, CLAIM).locator("button.mark-unread").click()
        expect(_item(page_a, CLAIM)).to_have_count(1)
        for page in tabs:
            expect(page.locator("#unread-count")).to_have_text("3")
            expect(_badge(page)).to_be_hidden()  # unread again, but seen: the bell stays quiet

        # A new one rings the bell again in both.
        assert _emit(page_b, "COMMENT_ADDED", ["inbox-user"], {"author_name": "Kim", "excerpt": "Thanks"}) == 202
        for page in tabs:
            expect(_badge(page)).to_have_text("1")
            expect(page.locator("#unread-count")).to_have_text("4")
        expect(_item(page_b, COMMENT)).to_have_count(1)
        assert errors == []
    finally:
        context.close()


def test_client_inbox_calls_and_frames_with_a_scripted_server(browser: Any) -> None:  # noqa: F811
    """notify-client.js's inbox API against a scripted server: each method's request (path, method, body),
    onNotificationsUpdated, unseen beside the count, and one resync after a reconnect whose first count's
    version moved on (states changed while away are not replayed)."""
    import json
    import re
    import time

    from playwright.sync_api import Route, WebSocketRoute

    from tests.test_browser import CLIENT_JS, FAKE_ORIGIN, _frame

    context = browser.new_context()
    sockets: list[WebSocketRoute] = []
    requests: list[tuple[str, str, Any]] = []

    def serve(route: Route) -> None:
        request = route.request
        if request.url.endswith("/static/notify-client.js"):
            route.fulfill(body=CLIENT_JS.read_text(), content_type="text/javascript")
        elif "/api/" in request.url:
            body = json.loads(request.post_data) if request.post_data else None
            requests.append((request.method, request.url.removeprefix(FAKE_ORIGIN), body))
            route.fulfill(body=json.dumps({"items": [], "next_before": None, "updated": 0}),
                          content_type="application/json")
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
                window.log = {counts: [], updates: [], resyncs: []};
                window.client = new NotifyClient({
                    backoffBaseMs: 20, backoffCapMs: 20, since: "n0",
                    onUnreadCount: (count, info) => log.counts.push([count, info.unseen, info.version]),
                    onNotificationsUpdated: (update) => log.updates.push(update),
                    onResync: (info) => log.resyncs.push(info.reason),
                });
                window.client.start();
                await client.markSeen("a");
                await client.markUnread("a");
                await client.archive("a");
                await client.unarchive("a");
                await client.markAllSeen();
                await client.markAllRead({priority: ["URGENT", "HIGH"], read: false});
                await client.archiveAll({eventType: "COMMENT_ADDED"});
                await client.bulk("read", ["a", "b"]);
                await client.counts({eventType: ["A", "B"], priority: "LOW"});
                await client.list({archived: true, seen: false, eventType: "X"});
            }"""
        )
        assert requests == [
            ("POST", "/api/notifications/a/seen", None), ("POST", "/api/notifications/a/unread", None),
            ("POST", "/api/notifications/a/archive", None), ("POST", "/api/notifications/a/unarchive", None),
            ("POST", "/api/notifications/seen-all", None),
            ("POST", "/api/notifications/read-all", {"filter": {"read": False, "priority": ["URGENT", "HIGH"]}}),
            ("POST", "/api/notifications/archive-all", {"filter": {"event_type": ["COMMENT_ADDED"]}}),
            ("POST", "/api/notifications/bulk", {"action": "read", "notification_ids": ["a", "b"]}),
            ("GET", "/api/notifications/counts?event_type=A%2CB&priority=LOW", None),
            ("GET", "/api/notifications?seen=false&event_type=X&archived=true", None),
        ]

        deadline = time.monotonic() + 5
        while not sockets and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        first = sockets[0]
        first.send(_frame("unread_count", {"count": 3, "unseen": 2, "version": 5}))
        first.send(_frame("notifications_updated", {"notification_ids": ["a"], "archived": True}))
        first.send(_frame("unread_count", {"count": 2, "unseen": 1, "version": 6}))
        page.wait_for_function("() => window.log.counts.length === 2")
        first.close(code=1006, reason="dropped")
        while len(sockets) < 2 and time.monotonic() < deadline + 5:
            page.wait_for_timeout(20)
        second = sockets[1]
        assert "since=n0" in second.url  # resumed: the server replays the missed notifications
        second.send(_frame("unread_count", {"count": 2, "unseen": 0, "version": 7}))  # changed while away
        page.wait_for_function("() => window.log.resyncs.length === 1")
        second.send(_frame("unread_count", {"count": 2, "unseen": 0, "version": 8}))
        page.wait_for_timeout(200)

        log = page.evaluate("window.log")
        assert log["counts"] == [[3, 2, 5], [2, 1, 6], [2, 0, 7], [2, 0, 8]]
        assert log["updates"] == [{"notification_ids": ["a"], "archived": True}]
        assert log["resyncs"] == ["reconnect"]  # once, for the count that moved while away
    finally:
        context.close()
