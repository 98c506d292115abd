/**
 * notify-sw.js — the Web Push service worker of notify-server (plain script, no build step).
 *
 * Register it from a page of your app's origin (a service worker must come from the page's own origin;
 * copy this file there when notify-server is on another one). notify-client.js's enablePush() does:
 *
 *   navigator.serviceWorker.register("/static/notify-sw.js", { scope: "/" })
 *
 * notify-server serves it with `Service-Worker-Allowed: /`, so the scope may be the whole origin.
 *
 * A push carries the WebSocket frame {"type": "notification", "data": {the eight keys}}, encrypted by
 * the server for this browser (RFC 8291) and decrypted by the browser before this script sees it.
 * - push: shows the notification (title, body; its tag is the notification id, so a message delivered
 *   twice replaces itself; URGENT stays until the user acts).
 * - notificationclick: when a tab of this origin is open, focuses it (the one already at action_url if
 *   any) and posts it {type: "notify-push-click", url, notification_id} — the page decides whether to
 *   navigate (notify-client.js: onPushClick); when none is open, opens action_url in a new window.
 */

/* eslint-env serviceworker */

const FALLBACK_TITLE = "New notification";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

/** The notification data of a push message, or null when it is not a notification frame. */
function notificationOf(event) {
  if (!event.data) return null;
  try {
    const frame = event.data.json();
    return frame && frame.type === "notification" && frame.data && typeof frame.data === "object" ? frame.data : null;
  } catch (_) {
    return null;
  }
}

self.addEventListener("push", (event) => {
  const data = notificationOf(event);
  // A subscription made with userVisibleOnly must show something for every push (or the browser shows
  // its own "updated in the background"): a message we cannot read still gets a plain notification.
  const title = data && data.title ? String(data.title) : FALLBACK_TITLE;
  const options = {
    body: data && data.body ? String(data.body) : "",
    tag: data && data.notification_id ? String(data.notification_id) : undefined,
    requireInteraction: Boolean(data && data.priority === "URGENT"),
    timestamp: data && data.created_at ? Date.parse(data.created_at) || Date.now() : Date.now(),
    data: {
      notification_id: data ? data.notification_id : null,
      action_url: data && data.action_url ? String(data.action_url) : null,
    },
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

/** The absolute URL a click leads to: action_url resolved against this origin, or the origin's root. */
function targetOf(notification) {
  const actionUrl = notification.data && notification.data.action_url;
  try {
    return new URL(actionUrl || "/", self.location.origin).href;
  } catch (_) {
    return new URL("/", self.location.origin).href;
  }
}

async function focusOrOpen(url, notificationId) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const ours = windows.filter((client) => new URL(client.url).origin === self.location.origin);
  const tab = ours.find((client) => client.url === url) || ours[0];
  if (tab) {
    let focused = tab;
    try {
      focused = (await tab.focus()) || tab;
    } catch (_) {
      // the browser refused the focus (it allows it only while handling a real click): tell the tab anyway
    }
    focused.postMessage({ type: "notify-push-click", url, notification_id: notificationId });
    return focused;
  }
  return self.clients.openWindow(url);
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  event.waitUntil(focusOrOpen(targetOf(event.notification), data.notification_id || null));
});
