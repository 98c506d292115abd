/**
 * notify-client.js — browser client for notify-server (plain ES module, no build step, no dependencies).
 *
 *   import { NotifyClient } from "/static/notify-client.js";
 *   const client = new NotifyClient({
 *     onNotification(n) { ... },     // every new notification, in every tab (deduplicated per tab)
 *     onToast(n) { ... },            // once per notification across the tabs of this browser
 *     onUnreadCount(count, info) { ... },  // the server's unread count; info {unseen, version} (stale
 *                                           // versions dropped); both count notifications not archived
 *     onNotificationsUpdated(update) { ... },  // another tab (or this one) changed states:
 *                                           // {notification_ids: [...], read?, seen?, archived?} (only what changed)
 *     onResync(info) { ... },        // refetch your list over REST: info.reason is "server" or "reconnect"
 *     onUnauthorized(info) { ... },  // close code 4001: the client stopped; sign in, then start() again
 *     onStatus(status, info) { ... } // "connecting" | "open" | "reconnecting" | "unauthorized" | "stopped"
 *   });
 *   client.start();
 *
 * Options (all optional):
 *   url                 WebSocket URL. Default: same origin, ws(s)://<host>/ws/notifications.
 *   apiBase             prefix of the REST API. Default: "" (same origin, "/api/notifications/...").
 *   token               session token sent as ?token= (WebSocket) and "Authorization: Bearer" (REST);
 *                       leave unset to use the session_id cookie.
 *   getToken            async () => credential (a session token or a JWT), called before connecting, for
 *                       REST calls, and shortly before the credential expires: the new one is sent on the
 *                       open socket as {"type": "refresh", "token": ...}, so the socket stays up. Also
 *                       called once after a 4001 (a credential that ran out while asleep) before giving up.
 *   refreshBeforeMs     refresh this long before the credential's exp (at most a quarter of the time left).
 *                       Default 30000. exp is read from a JWT, else from the server's "refreshed" frame.
 *   useSince            default true: reconnect with ?since=<last notification_id seen> so the server can
 *                       replay what was missed (harmless when it does not).
 *   since               initial notification_id for ?since= (e.g. the newest one your page rendered).
 *   resyncOnReconnect   "auto" (default): after a reconnect (not the first connect) made without ?since=,
 *                       call onResync({reason: "reconnect"}) so the page refetches what it missed offline;
 *                       with ?since= the server replays the missed ones (or sends "resync" itself).
 *                       true: after every reconnect; false: never.
 *   channelName         BroadcastChannel name for the one-toast-per-browser election. Default "notify-client".
 *   toastWindowMs       how long a tab collects other tabs' claims before toasting. Default 200.
 *   dedupeSize          how many notification ids are remembered for deduplication. Default 500.
 *   backoffBaseMs       exponential backoff base. Default 500.
 *   backoffCapMs        exponential backoff cap. Default 30000.
 *   stableAfterMs       a connection that stayed open this long resets the backoff. Default 10000.
 *   goingAwayMaxMs      1001 (server shutting down): reconnect after a random delay in [0, this]. Default 5000.
 *   tooManyDelayMs      4029 (too many connections): wait a random delay in [this/2, this]. Default 60000.
 *   fallbackAfter       after this many WebSockets in a row failed to open (closed or timed out before their
 *                       first frame, without a close code of the server's), use Server-Sent Events instead;
 *                       and back to the WebSocket after as many failed event streams. 0 = never. Default 3.
 *   wsRetryMs           while on Server-Sent Events, try a WebSocket in the background this often; when one
 *                       opens it replaces the stream without a gap. 0 = not until start(). Default 300000.
 *   sseUrl              event stream URL. Default: /sse/notifications on the host of `url` (else this origin).
 *   connectTimeoutMs    a connection without its first frame this long after opening failed to open.
 *                       Default 15000.
 *
 * Methods:
 *   start(), stop()                            open / close (stop() cancels any pending reconnect)
 *   list({read, seen, archived, eventType, priority, unreadOnly, limit, before})
 *                                              -> {items, next_before}   GET  /api/notifications
 *   counts({eventType, priority})              -> {unread, unseen, total} GET /api/notifications/counts
 *   unreadCount()                              -> number                 GET  /api/notifications/unread-count
 *   markRead(id), markUnread(id), markSeen(id), archive(id), unarchive(id)
 *                                              -> the item               POST /api/notifications/{id}/<action>
 *   markAllRead(filter), markAllSeen(filter), archiveAll(filter)
 *                                              -> {updated}              POST /api/notifications/read-all ...
 *   bulk(action, ids)                          -> {updated}              POST /api/notifications/bulk
 *   (filter: {read, seen, eventType, priority}, optional; eventType and priority: a string or a list)
 *   enablePush({serviceWorkerUrl, scope})      -> subscription JSON      Web Push (notify-sw.js), see docs/client.md
 *   disablePush({scope}), pushEnabled({scope}) -> boolean                DELETE /api/push/subscriptions
 *   getPreferences()                           -> preferences            GET  /api/preferences
 *   setPreferences(patch)                      -> preferences            PATCH /api/preferences
 *     preferences: {channels: {in_app: bool}, categories: {name: {in_app: bool}}, event_types: {TYPE: {in_app:
 *     bool}}, catalog: {TYPE: {category, critical, digest_window_s}}}, each value the effective one (event type >
 *     category > channel > on; critical types always on). patch: the same shape, partially; null clears a switch.
 * REST failures reject with a NotifyApiError (status, code, message from {"error": {code, message}}).
 *
 * Reconnection, by close code:
 *   1001 server shutting down  -> reconnect after a random delay (spreads the herd over other nodes)
 *   4001 unauthorized          -> stop; onUnauthorized() is called; no reconnect until start()
 *                                 (with getToken: first one reconnect with a fresh credential)
 *   4008 too slow              -> reconnect with exponential backoff
 *   4029 too many connections  -> long delay (tooManyDelayMs), then reconnect
 *   anything else (1006, ...)  -> exponential backoff with full jitter: random(0, min(cap, base * 2^n))
 *
 * Server-Sent Events (the fallback, GET /sse/notifications): the same frames as named events, the same
 * close codes in a last `event: close` (data {"code": N}), the same rules above. When a stream drops
 * without one, the browser's EventSource reconnects by itself with Last-Event-ID (the server replays what
 * was missed); if that has not worked within connectTimeoutMs the client takes over with its backoff.
 * `transport` is "websocket" or "sse"; onStatus's info carries it too.
 */

export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_TRY_AGAIN = 1013;
export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_TOO_SLOW = 4008;
export const CLOSE_TOO_MANY_CONNECTIONS = 4029;

const CLOSE_ABNORMAL = 1006; // lost without a close code (never sent by a server)
// Codes the server closes with on purpose: a connection closed with one of them before its first frame
// still reached the server, so it is no sign that this transport is blocked.
const SERVER_CLOSE_CODES = new Set([
  CLOSE_GOING_AWAY, 1011, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED, CLOSE_TOO_SLOW, CLOSE_TOO_MANY_CONNECTIONS,
]);
const WEBSOCKET = "websocket";
const SSE = "sse";
// named events, each the frame of that type
const SSE_EVENTS = ["unread_count", "notification", "notifications_updated", "resync"];

/** What the server's refusal of an event stream means as a close code (EventSource does not tell). */
function closeCodeOfStatus(status) {
  if (status === 401) return CLOSE_UNAUTHORIZED;
  if (status === 429) return CLOSE_TOO_MANY_CONNECTIONS;
  if (status === 503) return CLOSE_TRY_AGAIN;
  return CLOSE_ABNORMAL; // 403, 404, a proxy's page, no answer: this stream does not work from here
}

/** A failed REST call: HTTP status plus the server's {"error": {code, message}} when it sent one. */
export class NotifyApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.name = "NotifyApiError";
    this.status = status;
    this.code = code || "http_error";
  }
}

const noop = () => {};

/** A Set that forgets its oldest entries beyond `max`. */
class BoundedSet {
  constructor(max) {
    this.max = max;
    this.items = new Set();
  }
  has(value) {
    return this.items.has(value);
  }
  add(value) {
    if (this.items.has(value)) return;
    this.items.add(value);
    while (this.items.size > this.max) this.items.delete(this.items.values().next().value);
  }
}

function defaultUrl() {
  const scheme = globalThis.location && location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/notifications`;
}

/** /sse/notifications on the host of the WebSocket URL (https for wss), else on this page's origin. */
function defaultStreamUrl(socketUrl) {
  if (!socketUrl) return `${location.origin}/sse/notifications`;
  const url = new URL(socketUrl, location.href);
  const scheme = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
  return `${scheme}//${url.host}/sse/notifications`;
}

/** The `exp` of a JWT in milliseconds, or null for any other credential (nothing is verified here). */
function jwtExpiryMs(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

/** The query of a filter: read, seen (booleans); eventType, priority (a string "A,B" or a list). */
function filterQuery({ read, seen, eventType, priority } = {}) {
  const query = new URLSearchParams();
  if (read != null) query.set("read", String(Boolean(read)));
  if (seen != null) query.set("seen", String(Boolean(seen)));
  if (eventType != null && eventType.length) query.set("event_type", [].concat(eventType).join(","));
  if (priority != null && priority.length) query.set("priority", [].concat(priority).join(","));
  return query;
}

/** The body of the *-all actions: {filter: {read, seen, event_type, priority}}, or none. */
function filterBody(filter) {
  if (!filter) return undefined;
  const out = {};
  if (filter.read != null) out.read = Boolean(filter.read);
  if (filter.seen != null) out.seen = Boolean(filter.seen);
  if (filter.eventType != null) out.event_type = [].concat(filter.eventType);
  if (filter.priority != null) out.priority = [].concat(filter.priority);
  return { filter: out };
}

function randomId() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** Claim order for the toast election: visible tabs first, then the earliest claim, then the tab id. */
function claimBefore(a, b) {
  if (a.hidden !== b.hidden) return !a.hidden;
  if (a.ts !== b.ts) return a.ts < b.ts;
  return a.tab < b.tab;
}

export class NotifyClient {
  constructor(options = {}) {
    this.options = {
      url: null,
      apiBase: "",
      token: null,
      getToken: null,
      refreshBeforeMs: 30000,
      useSince: true,
      since: null,
      resyncOnReconnect: "auto",
      channelName: "notify-client",
      toastWindowMs: 200,
      dedupeSize: 500,
      backoffBaseMs: 500,
      backoffCapMs: 30000,
      stableAfterMs: 10000,
      goingAwayMaxMs: 5000,
      tooManyDelayMs: 60000,
      fallbackAfter: 3,
      wsRetryMs: 300000,
      sseUrl: null,
      connectTimeoutMs: 15000,
      ...options,
    };
    const o = this.options;
    this.onNotification = o.onNotification || noop;
    this.onToast = o.onToast || noop;
    this.onUnreadCount = o.onUnreadCount || noop;
    this.onNotificationsUpdated = o.onNotificationsUpdated || noop;
    this.onResync = o.onResync || noop;
    this.onUnauthorized = o.onUnauthorized || noop;
    this.onStatus = o.onStatus || noop;

    this.status = "stopped";
    this.tabId = randomId();
    this._conn = null; // the live connection: {kind, socket, since, token, welcomed, openedAt, timer, ...}
    this._candidate = null; // one opened beside it that replaces it at its first frame (see _welcome)
    this._transport = WEBSOCKET; // what the live connection is, or the next connect will be
    this._failedOpens = 0; // connections of this transport in a row that failed to open
    this._wsWorked = false; // a WebSocket opened since start()
    this._quickTry = false; // try the WebSocket again as soon as the fallback stream is up
    this._tryTimer = null; // the next background WebSocket try while on SSE
    this._timer = null;
    this._attempt = 0;
    this._connects = 0;
    this._running = false;
    this._retryable = false;
    this._seen = new BoundedSet(o.dedupeSize);
    this._lastId = o.since || null;
    this._lastAt = 0; // created_at (ms) of _lastId, so a late, older item never moves `since` back
    this._lastVersion = null;
    this._versionBeforeDrop = null; // the newest count version the previous connection got
    this._channel = null;
    this._credential = null; // from getToken(): {token, expMs} (expMs null when unknown)
    this._refreshTimer = null;
    this._connectRun = 0;
    this._retriedUnauthorized = false;
    this._claims = new Map(); // notification_id -> best claim seen {tab, ts, hidden, done}
    this._onOnline = () => {
      if (this._running && this._timer && this._retryable) this._connectNow();
    };
  }

  /** The notification_id that the next connection sends as ?since=. */
  get lastNotificationId() {
    return this._lastId;
  }

  /** "websocket" or "sse": the live connection's transport, or the one the next connect uses. */
  get transport() {
    return this._transport;
  }

  start() {
    if (this._running) return;
    this._running = true;
    this._attempt = 0;
    this._connects = 0;
    // Every start() (every page load) begins with the WebSocket, where there is one.
    this._transport = typeof WebSocket !== "function" && typeof EventSource === "function" ? SSE : WEBSOCKET;
    this._failedOpens = 0;
    this._wsWorked = false;
    this._quickTry = false;
    if (typeof BroadcastChannel === "function" && this.options.channelName) {
      this._channel = new BroadcastChannel(this.options.channelName);
      this._channel.onmessage = (event) => this._onChannelMessage(event.data);
    }
    if (globalThis.addEventListener) addEventListener("online", this._onOnline);
    this._connect();
  }

  stop() {
    this._halt();
    const conn = this._conn;
    this._conn = null;
    if (conn) this._discard(conn, "client stopped");
    if (this.status !== "stopped") this._setStatus("stopped");
  }

  _halt() {
    this._running = false;
    this._clearTimer();
    this._clearRefresh();
    this._clearTry();
    this._dropCandidate();
    if (globalThis.removeEventListener) removeEventListener("online", this._onOnline);
    if (this._channel) {
      this._channel.close();
      this._channel = null;
    }
  }

  // ------------------------------------------------------------------ REST

  async list({ read, seen, archived, eventType, priority, unreadOnly = false, limit, before } = {}) {
    const query = filterQuery({ read, seen, eventType, priority });
    if (archived != null) query.set("archived", String(archived)); // false (default) | true | "all"
    if (unreadOnly) query.set("unread_only", "true");
    if (limit != null) query.set("limit", String(limit));
    if (before) query.set("before", before);
    const qs = query.toString();
    const page = await this._request("GET", `/api/notifications${qs ? "?" + qs : ""}`);
    for (const item of page.items || []) this._seen.add(item.notification_id);
    // The first page of the inbox holds the newest notification (unless archived): a good `since`.
    if (!qs.replace(/(^|&)limit=\d+/, "") && page.items && page.items.length) this._remember(page.items[0]);
    return page;
  }

  /** {unread, unseen, total} of the notifications not archived (of these types and priorities). */
  async counts({ eventType, priority } = {}) {
    const qs = filterQuery({ eventType, priority }).toString();
    return this._request("GET", `/api/notifications/counts${qs ? "?" + qs : ""}`);
  }

  async unreadCount() {
    const body = await this._request("GET", "/api/notifications/unread-count");
    return body.count;
  }

  async markRead(id) {
    return this._act(id, "read");
  }

  async markUnread(id) {
    return this._act(id, "unread");
  }

  async markSeen(id) {
    return this._act(id, "seen");
  }

  async archive(id) {
    return this._act(id, "archive");
  }

  async unarchive(id) {
    return this._act(id, "unarchive");
  }

  /** Every notification not archived (that `filter` matches) read; no filter: all of them. */
  async markAllRead(filter) {
    return this._request("POST", "/api/notifications/read-all", filterBody(filter));
  }

  /** Opening the bell: every notification not archived (that `filter` matches) seen. */
  async markAllSeen(filter) {
    return this._request("POST", "/api/notifications/seen-all", filterBody(filter));
  }

  async archiveAll(filter) {
    return this._request("POST", "/api/notifications/archive-all", filterBody(filter));
  }

  /** One action ("read", "unread", "seen", "archive", "unarchive") on up to 1,000 ids. */
  async bulk(action, ids) {
    return this._request("POST", "/api/notifications/bulk", { action, notification_ids: [...ids] });
  }

  async _act(id, action) {
    return this._request("POST", `/api/notifications/${encodeURIComponent(id)}/${action}`);
  }

  // Preferences
  async getPreferences() {
    return this._request("GET", "/api/preferences");
  }

  async setPreferences(patch) {
    return this._request("PATCH", "/api/preferences", patch);
  }

  async _request(method, path, body, retried = false) {
    const headers = { Accept: "application/json" };
    const token = await this._currentToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(this.options.apiBase + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: this.options.apiBase ? "include" : "same-origin",
      cache: "no-store",
    });
    if (response.status === 401 && this.options.getToken && !retried) {
      this._credential = null; // ran out meanwhile: ask for a fresh one, once
      return this._request(method, path, body, true);
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      answer = null;
    }
    if (!response.ok) {
      const error = (answer && answer.error) || {};
      throw new NotifyApiError(response.status, error.code, error.message || response.statusText);
    }
    return answer;
  }

  // ------------------------------------------------------------- WebSocket

  // ------------------------------------------------- credentials (getToken)

  /** The credential for the next connect or REST call: options.token, or getToken()'s (cached until
   * close to its expiry). */
  async _currentToken() {
    if (!this.options.getToken) return this.options.token;
    const known = this._credential;
    if (known && (known.expMs === null || known.expMs - Date.now() > this._refreshMargin(known))) return known.token;
    return (await this._fetchCredential()).token;
  }

  async _fetchCredential() {
    const token = await this.options.getToken();
    if (typeof token !== "string" || !token) throw new Error("getToken() gave no token");
    this._credential = { token, expMs: jwtExpiryMs(token), obtainedAt: Date.now() };
    return this._credential;
  }

  _refreshMargin(credential) {
    const lifetime = credential.expMs === null ? 0 : credential.expMs - credential.obtainedAt;
    return Math.min(this.options.refreshBeforeMs, Math.max(0, lifetime) / 4);
  }

  /** Arrange the next refresh, shortly before the current credential's exp. */
  _scheduleRefresh() {
    this._clearRefresh();
    const credential = this._credential;
    if (!this.options.getToken || !credential || credential.expMs === null || !this._conn) return;
    const delay = Math.max(0, credential.expMs - Date.now() - this._refreshMargin(credential));
    this._refreshTimer = setTimeout(() => this._refresh(credential), delay);
  }

  async _refresh(previous) {
    this._refreshTimer = null;
    const conn = this._conn;
    let fresh;
    try {
      fresh = await this._fetchCredential();
    } catch (error) {
      console.error("notify-client: getToken failed; retrying", error);
      if (conn && conn === this._conn) this._refreshTimer = setTimeout(() => this._refresh(previous), 1000);
      return;
    }
    if (!conn || conn !== this._conn || !conn.welcomed) return; // the next connect uses it
    if (conn.kind === WEBSOCKET && conn.socket.readyState !== 1 /* OPEN */) return;
    if (fresh.expMs !== null && previous.expMs !== null && fresh.expMs <= previous.expMs) {
      // getToken() handed back the same credential: ask again a little later rather than in a loop.
      const wait = Math.max(500, (previous.expMs - Date.now()) / 2);
      this._refreshTimer = setTimeout(() => this._refresh(previous), wait);
      return;
    }
    if (conn.kind === WEBSOCKET) {
      conn.socket.send(JSON.stringify({ type: "refresh", token: fresh.token }));
      this._scheduleRefresh();
      return;
    }
    // Nothing can be sent on an event stream: open another with the fresh credential (and ?since=). It
    // replaces this one at its first event, so nothing is missed and the status stays "open". If it
    // fails, try again a second later; at exp the server ends this stream with 4001 anyway, and that
    // gets a reconnect with a fresh credential.
    this._openConnection(SSE, fresh.token, {
      candidate: true,
      onFail: () => {
        if (conn === this._conn && !this._refreshTimer) {
          this._refreshTimer = setTimeout(() => this._refresh(previous), 1000);
        }
      },
    });
  }

  _clearRefresh() {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  _withQuery(base, since, token) {
    const url = new URL(base, globalThis.location ? location.href : undefined);
    if (token) url.searchParams.set("token", token);
    if (since) url.searchParams.set("since", since);
    return url.toString();
  }

  _socketUrl(since, token) {
    return this._withQuery(this.options.url || defaultUrl(), since, token);
  }

  _streamUrl(since, token) {
    return this._withQuery(this.options.sseUrl || defaultStreamUrl(this.options.url), since, token);
  }

  _connect() {
    this._timer = null;
    if (!this._running) return;
    const kind = this._transport;
    this._setStatus("connecting", { attempt: this._attempt, transport: kind });
    if (!this.options.getToken) {
      this._openConnection(kind, this.options.token);
      return;
    }
    const run = ++this._connectRun;
    this._currentToken().then(
      (token) => {
        if (this._running && run === this._connectRun) this._openConnection(kind, token);
      },
      (error) => {
        if (!this._running || run !== this._connectRun) return;
        this._retryable = true;
        this._scheduleReconnect(this._backoffDelay(), { error: String(error) });
      },
    );
  }

  _connectNow() {
    this._clearTimer();
    this._connect();
  }

  // ----------------------------------------------------- connections (WebSocket or event stream)

  /**
   * Open a connection of this kind: the live one, or (candidate) one beside it that replaces it at its
   * first frame — a WebSocket tried while on SSE, or an event stream with a refreshed credential. A
   * candidate that fails calls onFail and changes nothing else.
   */
  _openConnection(kind, token, { candidate = false, onFail = null } = {}) {
    const conn = {
      kind, token, candidate, onFail,
      since: this.options.useSince ? this._lastId : null,
      socket: null,
      url: null,
      welcomed: false, // its first frame arrived (the server accepted the credential)
      openedAt: 0,
      timer: null, // connectTimeoutMs
      resumable: false, // sse: an event with an id arrived, so the browser's reconnect sends Last-Event-ID
      retrying: false, // sse: dropped; the browser is reconnecting by itself
    };
    if (candidate) {
      const previous = this._candidate;
      this._candidate = null;
      if (previous) this._failCandidate(previous);
      this._candidate = conn;
    } else {
      this._conn = conn;
    }
    try {
      if (kind === SSE) this._attachStream(conn);
      else this._attachSocket(conn);
    } catch (error) {
      // e.g. a SecurityError: this page may not open it. Counts as a failed open.
      this._onDisconnect(conn, CLOSE_ABNORMAL, String(error));
      return;
    }
    this._armTimer(conn);
  }

  _owns(conn) {
    return conn === this._conn || conn === this._candidate;
  }

  /** A connection whose first frame has not arrived connectTimeoutMs from now failed to open. */
  _armTimer(conn) {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    const ms = this.options.connectTimeoutMs;
    if (!(ms > 0)) return;
    conn.timer = setTimeout(() => {
      conn.timer = null;
      if (!conn.welcomed) this._onDisconnect(conn, CLOSE_ABNORMAL, "no first frame within connectTimeoutMs");
    }, ms);
  }

  _attachSocket(conn) {
    const ws = new WebSocket(this._socketUrl(conn.since, conn.token));
    conn.socket = ws;
    ws.onopen = () => {
      if (this._owns(conn)) conn.openedAt = Date.now();
    };
    ws.onmessage = (event) => {
      if (!this._owns(conn)) return;
      // The server authenticates after the upgrade and then sends unread_count first: the socket is
      // "open" (authenticated) only from its first frame on, never for a socket about to get 4001.
      if (!conn.welcomed) this._welcome(conn, Boolean(conn.since));
      this._onFrame(event.data);
    };
    ws.onclose = (event) => this._onDisconnect(conn, event.code, event.reason);
  }

  _attachStream(conn) {
    const url = this._streamUrl(conn.since, conn.token);
    const crossOrigin = globalThis.location && new URL(url).origin !== location.origin;
    const es = new EventSource(url, { withCredentials: Boolean(crossOrigin) });
    conn.socket = es;
    conn.url = url;
    es.onopen = () => {
      if (this._owns(conn)) conn.openedAt = Date.now();
    };
    for (const type of SSE_EVENTS) {
      es.addEventListener(type, (event) => {
        if (!this._owns(conn)) return;
        if (event.lastEventId) conn.resumable = true;
        if (!conn.welcomed) this._welcome(conn, Boolean(conn.since || conn.resumable));
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (_) {
          return; // not ours
        }
        this._onMessage({ type, data });
      });
    }
    es.addEventListener("close", (event) => {
      // The server ends the stream and says why: the WebSocket's close code. Without es.close() the
      // browser would reconnect by itself (and after 4001 loop on a dead credential).
      es.close();
      let code = CLOSE_ABNORMAL;
      try {
        code = Number(JSON.parse(event.data).code) || CLOSE_ABNORMAL;
      } catch (_) {
        // keep 1006
      }
      this._onDisconnect(conn, code, "stream closed by the server");
    });
    es.onerror = () => this._onStreamError(conn);
  }

  _onStreamError(conn) {
    const es = conn.socket;
    if (!this._owns(conn)) {
      es.close();
      return;
    }
    const reconnecting = es.readyState !== 2; /* not CLOSED: the browser reconnects by itself */
    if (reconnecting && conn.retrying) return; // another failed try of the browser's: its timer runs
    if (reconnecting && conn.welcomed && !conn.candidate) {
      // The stream dropped without a close event (node killed, network): the browser reconnects by
      // itself, sending Last-Event-ID, so the server replays what was missed. It gets connectTimeoutMs.
      const stayedUp = conn.openedAt && Date.now() - conn.openedAt >= this.options.stableAfterMs;
      if (stayedUp) this._attempt = 0;
      conn.welcomed = false;
      conn.retrying = true;
      conn.openedAt = 0;
      this._armTimer(conn);
      this._setStatus("reconnecting", {
        code: CLOSE_ABNORMAL, reason: "stream dropped", delayMs: null, attempt: this._attempt, transport: SSE,
      });
      return;
    }
    es.close();
    if (reconnecting) {
      // Not reachable before this stream ever opened: the client's own backoff (with ?since=) decides.
      this._onDisconnect(conn, CLOSE_ABNORMAL, "event stream unreachable");
    } else {
      this._streamRefused(conn);
    }
  }

  /**
   * The answer to the stream's URL was not a 200 event stream, and EventSource does not say what it
   * was: ask the same URL once with fetch (stopped at its headers) and read the status as a close code.
   */
  async _streamRefused(conn) {
    if (conn.candidate) {
      this._onDisconnect(conn, CLOSE_ABNORMAL, "event stream refused");
      return;
    }
    const url = new URL(conn.url);
    url.searchParams.delete("since");
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    let status = 0;
    try {
      const response = await fetch(url.toString(), {
        headers: { Accept: "text/event-stream" },
        credentials: conn.socket.withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: abort ? abort.signal : undefined,
      });
      status = response.status;
    } catch (_) {
      status = 0;
    } finally {
      if (abort) abort.abort();
    }
    this._onDisconnect(conn, closeCodeOfStatus(status), status ? `HTTP ${status}` : "event stream unreachable");
  }

  /** Close it (if open) and forget it: no handler of it runs any more. */
  _discard(conn, reason) {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    const socket = conn.socket;
    if (!socket) return;
    socket.onopen = null;
    socket.onerror = null;
    if (conn.kind === SSE) {
      socket.close();
      return;
    }
    socket.onmessage = null;
    socket.onclose = null;
    try {
      if (socket.readyState < 2) socket.close(1000, reason);
    } catch (_) {
      // already gone
    }
  }

  _failCandidate(conn) {
    if (conn === this._candidate) this._candidate = null;
    this._discard(conn, "not needed");
    if (conn.onFail) this._safe(conn.onFail);
  }

  /** The connection closed, failed to open, or was refused: its close code decides what comes next. */
  _onDisconnect(conn, code, reason) {
    if (conn.candidate && conn === this._candidate) {
      this._failCandidate(conn);
      return;
    }
    if (conn !== this._conn) return;
    this._conn = null;
    this._discard(conn, "closed");
    this._clearTry();
    this._dropCandidate();
    const failedOpen = !conn.welcomed && !SERVER_CLOSE_CODES.has(code);
    this._onClose(conn, code, reason, failedOpen);
  }

  /** Its first frame: the server accepted the credential; a candidate takes the live one's place. */
  _welcome(conn, resumed) {
    conn.welcomed = true;
    conn.retrying = false;
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = null;
    const replacing = conn === this._candidate;
    if (replacing) {
      // Both were registered with the server while the old one was still open, and the new one asked
      // ?since=: nothing is missed, duplicates are dropped by id.
      const old = this._conn;
      this._candidate = null;
      this._conn = conn;
      conn.candidate = false;
      if (old) this._discard(old, "replaced");
    }
    const announce = this.status !== "open" || this._transport !== conn.kind;
    this._transport = conn.kind;
    this._failedOpens = 0;
    if (conn.kind === WEBSOCKET) {
      this._wsWorked = true;
      this._clearTry();
    } else if (!this._tryTimer && !this._candidate) {
      this._scheduleTry();
    }
    this._connects += 1;
    this._retriedUnauthorized = false;
    this._scheduleRefresh();
    // The first count of a connection is read fresh: always taken. Kept aside: a reconnect whose first
    // count is newer than the last one the previous connection got missed a change (see _onMessage).
    if (this._lastVersion !== null) this._versionBeforeDrop = this._lastVersion;
    conn.checkMissed = this._connects > 1 && resumed && !replacing && this.options.resyncOnReconnect !== false;
    this._lastVersion = null;
    if (announce) this._setStatus("open", { transport: conn.kind });
    const resync = this.options.resyncOnReconnect;
    if (!replacing && this._connects > 1 && (resync === true || (resync === "auto" && !resumed))) {
      this._safe(this.onResync, { reason: "reconnect" });
    }
  }

  // ------------------------------------------------- fallback to Server-Sent Events and back

  /** One more connection of this transport failed to open; after fallbackAfter in a row, try the other. */
  _countFailedOpen(kind) {
    if (kind !== this._transport) return;
    this._failedOpens += 1;
    const limit = this.options.fallbackAfter;
    if (!(limit > 0) || this._failedOpens < limit) return;
    const other = kind === WEBSOCKET ? SSE : WEBSOCKET;
    if (other === SSE ? typeof EventSource !== "function" : typeof WebSocket !== "function") return;
    this._failedOpens = 0;
    this._transport = other;
    // WebSockets that worked before and then failed were more likely a server outage than a block:
    // try the WebSocket again as soon as the event stream is up.
    if (other === SSE) this._quickTry = this._wsWorked;
  }

  /** While on SSE: a WebSocket in the background after wsRetryMs (at once after a likely outage). */
  _scheduleTry() {
    this._clearTry();
    const every = this.options.wsRetryMs;
    if (!(every > 0) || typeof WebSocket !== "function") return;
    const delay = this._quickTry ? 0 : every;
    this._quickTry = false;
    this._tryTimer = setTimeout(() => this._tryWebSocket(), delay);
  }

  async _tryWebSocket() {
    this._tryTimer = null;
    const conn = this._conn;
    if (!this._running || !conn || conn.kind !== SSE) return;
    if (!conn.welcomed || this._candidate) {
      this._scheduleTry(); // not now: the stream is reconnecting, or a refresh is under way
      return;
    }
    let token = this.options.token;
    if (this.options.getToken) {
      try {
        token = await this._currentToken();
      } catch (_) {
        this._scheduleTry();
        return;
      }
      if (!this._running || conn !== this._conn || this._candidate) return;
    }
    this._openConnection(WEBSOCKET, token, {
      candidate: true,
      onFail: () => {
        if (this._running && this._conn && this._conn.kind === SSE) this._scheduleTry();
      },
    });
  }

  _clearTry() {
    if (this._tryTimer) clearTimeout(this._tryTimer);
    this._tryTimer = null;
  }

  _dropCandidate() {
    const candidate = this._candidate;
    this._candidate = null;
    if (candidate) this._discard(candidate, "not needed");
  }

  _onClose(conn, code, reason, failedOpen) {
    this._clearRefresh();
    if (!this._running) return;
    const stayedUp = conn.openedAt && Date.now() - conn.openedAt >= this.options.stableAfterMs;
    if (stayedUp) this._attempt = 0;
    const info = { code, reason, transport: conn.kind };
    if (code === CLOSE_UNAUTHORIZED && this.options.getToken && !this._retriedUnauthorized) {
      // The credential may have run out while the page slept (timers do not fire then): one more try
      // with a fresh one from getToken() before giving up.
      this._retriedUnauthorized = true;
      this._credential = null;
      this._retryable = true;
      this._scheduleReconnect(0, info);
      return;
    }
    if (code === CLOSE_UNAUTHORIZED) {
      this._halt();
      this._setStatus("unauthorized", info);
      this._safe(this.onUnauthorized, info);
      return;
    }
    if (failedOpen) this._countFailedOpen(conn.kind);
    let delay;
    this._retryable = true;
    if (code === CLOSE_GOING_AWAY) {
      delay = Math.random() * this.options.goingAwayMaxMs;
    } else if (code === CLOSE_TOO_MANY_CONNECTIONS) {
      const longest = this.options.tooManyDelayMs;
      delay = longest / 2 + Math.random() * (longest / 2);
      this._retryable = false; // going online again is no reason to retry sooner
    } else {
      delay = this._backoffDelay(); // 4008 and every other code (1006 = dropped, ...)
    }
    this._scheduleReconnect(delay, info);
  }

  /** Full jitter: random(0, min(cap, base * 2^attempt)); the attempt count grows until a stable connection. */
  _backoffDelay() {
    const { backoffBaseMs, backoffCapMs } = this.options;
    const ceiling = Math.min(backoffCapMs, backoffBaseMs * 2 ** Math.min(this._attempt, 30));
    this._attempt += 1;
    return Math.random() * ceiling;
  }

  _scheduleReconnect(delay, info) {
    this._clearTimer();
    const delayMs = Math.round(delay);
    this._setStatus("reconnecting", { ...info, delayMs, attempt: this._attempt });
    this._timer = setTimeout(() => this._connect(), delayMs);
  }

  _clearTimer() {
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
  }

  _setStatus(status, info = {}) {
    this.status = status;
    this._safe(this.onStatus, status, info);
  }

  _safe(callback, ...args) {
    try {
      callback(...args);
    } catch (error) {
      console.error("notify-client: callback failed", error);
    }
  }

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      return; // not ours
    }
    this._onMessage(frame);
  }

  /** One frame {type, data}, from a WebSocket or an event stream. */
  _onMessage(frame) {
    if (!frame || typeof frame !== "object") return;
    const data = frame.data || {};
    if (frame.type === "notification") {
      this._onNotification(data);
    } else if (frame.type === "unread_count") {
      if (typeof data.version === "number") {
        if (this._lastVersion !== null && data.version < this._lastVersion) return; // stale
        const first = this._lastVersion === null;
        this._lastVersion = data.version;
        const conn = this._conn;
        if (first && conn && conn.checkMissed) {
          conn.checkMissed = false;
          // A reconnect with ?since= gets the notifications it missed replayed, but not the states changed
          // meanwhile (read, seen, archived in another tab): a count version that moved on says something
          // changed while away, so the page refetches (once) rather than trusting its list.
          const before = this._versionBeforeDrop;
          if (before !== null && data.version > before) this._safe(this.onResync, { reason: "reconnect" });
        }
      }
      this._safe(this.onUnreadCount, data.count, { unseen: data.unseen, version: data.version });
    } else if (frame.type === "notifications_updated") {
      if (Array.isArray(data.notification_ids)) this._safe(this.onNotificationsUpdated, data);
    } else if (frame.type === "resync") {
      this._safe(this.onResync, { reason: "server" });
    } else if (frame.type === "refreshed") {
      // The server moved this socket onto the refreshed credential; an opaque one (not a JWT) learns
      // its expiry here.
      const credential = this._credential;
      const expMs = data.expires_at ? Date.parse(data.expires_at) : null;
      if (credential && credential.expMs === null && expMs) {
        credential.expMs = expMs;
        this._scheduleRefresh();
      }
    }
  }

  _onNotification(n) {
    const id = n.notification_id;
    if (!id || this._seen.has(id)) return;
    this._seen.add(id);
    this._remember(n);
    this._safe(this.onNotification, n);
    this._electToast(n);
  }

  _remember(n) {
    const at = Date.parse(n.created_at) || 0;
    if (!this._lastId || at >= this._lastAt) {
      this._lastId = n.notification_id;
      this._lastAt = at;
    }
  }

  // ------------------------------------------- one toast per browser (BroadcastChannel)

  /**
   * Every tab that receives the notification posts a claim {tab, ts, hidden}; after toastWindowMs the
   * tab whose claim orders first (visible before hidden, then earliest, then lowest tab id) toasts and
   * announces "done", so tabs that get the frame later (e.g. replayed on reconnect) stay quiet.
   */
  _electToast(n) {
    const id = n.notification_id;
    if (!this._channel) {
      this._safe(this.onToast, n);
      return;
    }
    const known = this._claims.get(id);
    if (known && known.done) return; // another tab already toasted it
    const mine = {
      tab: this.tabId,
      ts: Date.now(),
      hidden: typeof document !== "undefined" && document.visibilityState === "hidden",
    };
    if (!known || claimBefore(mine, known)) this._setClaim(id, { ...mine, done: false });
    this._post({ type: "claim", id, ...mine });
    setTimeout(() => {
      const best = this._claims.get(id);
      if (!this._channel || !best || best.done || best.tab !== this.tabId) return;
      best.done = true;
      this._post({ type: "done", id, tab: this.tabId });
      this._safe(this.onToast, n);
    }, this.options.toastWindowMs);
  }

  _onChannelMessage(message) {
    if (!message || typeof message.id !== "string") return;
    const known = this._claims.get(message.id);
    if (message.type === "claim") {
      const theirs = { tab: String(message.tab), ts: Number(message.ts), hidden: !!message.hidden };
      if (!known) this._setClaim(message.id, { ...theirs, done: false });
      else if (!known.done && claimBefore(theirs, known)) this._setClaim(message.id, { ...theirs, done: false });
    } else if (message.type === "done") {
      this._setClaim(message.id, { tab: String(message.tab), ts: 0, hidden: false, done: true });
    }
  }

  _setClaim(id, claim) {
    this._claims.delete(id);
    this._claims.set(id, claim);
    while (this._claims.size > this.options.dedupeSize) this._claims.delete(this._claims.keys().next().value);
  }

  _post(message) {
    try {
      this._channel.postMessage(message);
    } catch (_) {
      // channel closed by stop(); nothing to tell
    }
  }

  // This browser's push subscription, for when no tab is open

  /** Ask for permission to show notifications, register the service worker, subscribe this browser with
   * the server's VAPID key and give the subscription to the server (POST /api/push/subscriptions).
   * Resolves to the subscription's JSON. Rejects with a NotifyApiError: code "unsupported" (no Push API
   * here), "permission_denied", or the server's. Options: serviceWorkerUrl (default
   * "/static/notify-sw.js", from this page's origin), scope (default "/"). */
  async enablePush({ serviceWorkerUrl = "/static/notify-sw.js", scope = "/" } = {}) {
    if (!pushSupported()) throw new NotifyApiError(0, "unsupported", "this browser has no Web Push");
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      throw new NotifyApiError(0, "permission_denied", `notifications are ${permission} for this site`);
    }
    const { public_key: publicKey } = await this._request("GET", "/api/push/vapid-public-key");
    const registration = await whenActive(await navigator.serviceWorker.register(serviceWorkerUrl, { scope }));
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameKey(subscription.options.applicationServerKey, publicKey)) {
      await subscription.unsubscribe(); // made with another server key: the push services would refuse it
      subscription = null;
    }
    if (!subscription) {
      subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: base64UrlToBytes(publicKey),
      });
    }
    const json = subscription.toJSON();
    await this._request("POST", "/api/push/subscriptions", json);
    return json;
  }

  /** Tell the server to stop pushing to this browser, then unsubscribe it. Resolves to false when it
   * had no subscription. */
  async disablePush({ scope = "/" } = {}) {
    if (!pushSupported()) return false;
    const registration = await navigator.serviceWorker.getRegistration(scope);
    const subscription = registration ? await registration.pushManager.getSubscription() : null;
    if (!subscription) return false;
    await this._request("DELETE", "/api/push/subscriptions", { endpoint: subscription.endpoint });
    await subscription.unsubscribe();
    return true;
  }

  /** Whether this browser is subscribed (under this scope). */
  async pushEnabled({ scope = "/" } = {}) {
    if (!pushSupported()) return false;
    const registration = await navigator.serviceWorker.getRegistration(scope);
    return Boolean(registration && (await registration.pushManager.getSubscription()));
  }

}

// ---------------------------------------------------------------- web push: helpers

export function pushSupported() {
  return typeof navigator !== "undefined" && "serviceWorker" in navigator && typeof PushManager !== "undefined" &&
    typeof Notification !== "undefined";
}

/** Call `callback({url, notification_id})` when the user clicks a push notification and the service
 * worker focused this tab instead of opening a new one (navigate there, or show the item). Returns a
 * function that stops listening. */
export function onPushClick(callback) {
  if (!pushSupported()) return () => {};
  const listener = (event) => {
    const message = event.data;
    if (message && message.type === "notify-push-click") callback({ url: message.url, notification_id: message.notification_id });
  };
  navigator.serviceWorker.addEventListener("message", listener);
  return () => navigator.serviceWorker.removeEventListener("message", listener);
}

function base64UrlToBytes(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function sameKey(buffer, publicKey) {
  if (!buffer) return false;
  const expected = base64UrlToBytes(publicKey);
  const actual = new Uint8Array(buffer);
  return actual.length === expected.length && actual.every((byte, i) => byte === expected[i]);
}

/** The registration once its service worker is active (subscribe() needs an active one). */
function whenActive(registration) {
  if (registration.active) return Promise.resolve(registration);
  const worker = registration.installing || registration.waiting;
  return new Promise((resolve, reject) => {
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve(registration);
      else if (worker.state === "redundant") reject(new NotifyApiError(0, "unsupported", "the service worker failed to install"));
    });
  });
}

export default NotifyClient;
