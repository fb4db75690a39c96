// The chatbus chat client: one page, no framework, no build step, nothing fetched but this
// server's public API (contract: /work/shared/spec/API.md, the README's "API").
//
// Flow: the sign-in view lists users (GET /api/users) or creates one (POST /api/user), then opens
// a session (POST /api/session/:user_id). The session lives in sessionStorage, so every tab can
// be a different user and a reload keeps it. The chat view shows the contacts (refreshed every
// few seconds, for who is online), one conversation per contact, and a composer.
//
// Delivery: Server-Sent Events from the last cursor seen (`/api/stream/:session/:unix/:nano`);
// the browser's EventSource resumes by itself with Last-Event-ID. When EventSource is missing or
// fails several times in a row, the page long-polls `/api/messages/:session/:unix/:nano?wait=25s`
// instead. Both report lost messages (`event: gap`, `meta.gap`), which the page shows.
//
// Admin routes answer 401 with `WWW-Authenticate: Bearer` when the server has an admin token:
// the page then asks for it and sends `Authorization: Bearer …` on admin calls only.
"use strict";

(() => {
  const STORE_KEY = "chatbus.demo";
  const CONTACTS_EVERY_MS = 3000;
  const LONG_POLL_WAIT = "25s";
  // Consecutive EventSource failures (without a message or an open in between) before the page
  // stops trying it and long-polls instead.
  const SSE_FAILURES_BEFORE_FALLBACK = 3;

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- state

  const state = {
    token: null,        // the admin token, when the server asked for one
    session: null,      // the session's uuid
    me: null,           // the session's user
    cursor: null,       // {unix, nano} of the newest message seen
    contacts: new Map(), // user id -> {user, is_online, is_typing}
    strangers: new Map(), // user id -> true: someone who wrote but is not a contact
    messages: new Map(), // other user's id -> [Message], oldest first
    seen: new Set(),    // message uuids already shown
    unread: new Map(),  // other user's id -> count
    open: null,         // the other user's id whose conversation is shown
    transport: null,    // the running delivery: {stop()}
    contactsTimer: null,
  };

  function save() {
    const keep = { token: state.token, session: state.session, me: state.me };
    sessionStorage.setItem(STORE_KEY, JSON.stringify(keep));
  }

  function restore() {
    try {
      const kept = JSON.parse(sessionStorage.getItem(STORE_KEY) || "{}");
      state.token = kept.token || null;
      state.session = kept.session || null;
      state.me = kept.me || null;
    } catch {
      sessionStorage.removeItem(STORE_KEY);
    }
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, message, res) {
      super(message);
      this.status = status;
      this.res = res;
    }
  }

  let tokenWanted = null; // a promise resolved with the token the user enters

  function askForToken(why) {
    if (!tokenWanted) {
      tokenWanted = new Promise((resolve) => {
        showTokenPanel(why, (token) => {
          tokenWanted = null;
          resolve(token);
        });
      });
    }
    return tokenWanted;
  }

  // One call. Answers `response` (or the envelope's meta for plain successes); throws ApiError
  // with the envelope's message otherwise. `admin` calls carry the token and, on a 401 asking
  // for a bearer token, ask the user for it and try again.
  async function call(method, path, { body, admin = false, noPrompt = false, signal } = {}) {
    for (;;) {
      const headers = {};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (admin && state.token) headers.Authorization = `Bearer ${state.token}`;
      const res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
      let env = null;
      try {
        env = await res.json();
      } catch {
        // Not enveloped (a proxy's error page): the status says enough.
      }
      const challenge = (res.headers.get("WWW-Authenticate") || "").toLowerCase();
      if (res.status === 401 && admin && !noPrompt && challenge.startsWith("bearer")) {
        const wrong = state.token !== null;
        state.token = null;
        save();
        state.token = await askForToken(wrong ? "That token was refused; try again." : "");
        save();
        continue;
      }
      if (!res.ok) {
        const message = (env && env.meta && env.meta.message) || `${res.status} ${res.statusText}`;
        throw new ApiError(res.status, message, res);
      }
      return { value: env ? env.response : undefined, meta: env ? env.meta : {} };
    }
  }

  // ---------------------------------------------------------------- notices

  function showError(text) {
    $("error-text").textContent = text;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
  }

  function showGap() {
    $("gap-text").textContent =
      "Some messages were lost before this page received them: the server no longer holds them " +
      "(pushed out of the mailbox or expired). Everything after this point is complete.";
    $("gap").hidden = false;
  }

  function setLink(kind, text) {
    const link = $("link");
    link.dataset.state = kind;
    link.textContent = text;
  }

  function announce(text) {
    // Re-set so that the same text twice is announced twice.
    const region = $("announce");
    region.textContent = "";
    window.setTimeout(() => {
      region.textContent = text;
    }, 50);
  }

  function showTokenPanel(why, done) {
    const panel = $("token-panel");
    panel.hidden = false;
    if (why) showError(why);
    const input = $("token");
    input.value = "";
    input.focus();
    const form = $("token-form");
    form.onsubmit = (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      panel.hidden = true;
      form.onsubmit = null;
      clearError();
      done(token);
    };
  }

  // ---------------------------------------------------------------- names and times

  function nameOf(user) {
    return user.display_name || user.uuid;
  }

  function nameOfId(id) {
    if (state.me && id === state.me.id) return nameOf(state.me);
    const c = state.contacts.get(id);
    if (c) return nameOf(c.user);
    const stranger = state.strangers.get(id);
    return stranger ? nameOf(stranger) : `User #${id}`;
  }

  // RFC 3339 with up to 9 fractional digits; Date wants at most 3.
  function parseTime(t) {
    return new Date(t.replace(/(\.\d{3})\d*/, "$1"));
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function cursorOf(message) {
    const m = /^(-?\d+)-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$/.exec(message.created_utc);
    if (!m) return null;
    const unix = Math.floor(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) / 1000);
    const nano = Number((m[7] || "").padEnd(9, "0"));
    return { unix, nano };
  }

  // An event id is the message's cursor, `<unix>.<nano>`.
  function parseEventId(id) {
    const m = /^(-?\d+)\.(\d{9})$/.exec(id || "");
    return m ? { unix: Number(m[1]), nano: Number(m[2]) } : null;
  }

  function later(a, b) {
    if (!a) return b;
    if (!b) return a;
    return a.unix > b.unix || (a.unix === b.unix && a.nano > b.nano) ? a : b;
  }

  // ---------------------------------------------------------------- sign-in view

  async function showSignIn() {
    stopChat();
    $("chat").hidden = true;
    $("me").hidden = true;
    $("sign-in").hidden = false;
    setLink("off", "Not connected");
    await loadUsers();
  }

  async function loadUsers() {
    const select = $("pick-user");
    try {
      const { value: users } = await call("GET", "/api/users?limit=500", { admin: true });
      select.replaceChildren();
      if (users.length === 0) {
        select.append(new Option("No users yet — create one", ""));
        select.disabled = true;
        $("pick-open").disabled = true;
      } else {
        select.disabled = false;
        $("pick-open").disabled = false;
        for (const u of users) {
          select.append(new Option(`${nameOf(u)} (${u.uuid}, #${u.id})`, String(u.id)));
        }
      }
    } catch (e) {
      showError(`Could not list users: ${e.message}`);
    }
  }

  async function openSession(userId) {
    const { value: session } = await call("POST", `/api/session/${userId}`, { admin: true });
    state.session = session.uuid;
    state.me = session.user;
    save();
    clearError();
    startChat();
  }

  async function onPick(e) {
    e.preventDefault();
    const id = $("pick-user").value;
    if (!id) return;
    try {
      await openSession(id);
    } catch (err) {
      showError(`Could not open a session: ${err.message}`);
    }
  }

  async function onCreate(e) {
    e.preventDefault();
    const uuid = $("create-uuid").value.trim();
    const displayName = $("create-name").value.trim();
    if (!uuid) return;
    try {
      const body = { uuid };
      if (displayName) body.display_name = displayName;
      const { value: user } = await call("POST", "/api/user", { body, admin: true });
      await openSession(user.id);
      $("create-form").reset();
    } catch (err) {
      showError(`Could not create the user: ${err.message}`);
    }
  }

  // ---------------------------------------------------------------- chat view

  function startChat() {
    $("sign-in").hidden = true;
    $("token-panel").hidden = true;
    $("chat").hidden = false;
    $("me").hidden = false;
    $("me-name").textContent = nameOf(state.me);
    $("me-uuid").textContent = `(${state.me.uuid})`;
    document.title = `${nameOf(state.me)} · chatbus demo`;
    renderContacts();
    renderConversation();
    refreshContacts();
    state.contactsTimer = window.setInterval(refreshContacts, CONTACTS_EVERY_MS);
    state.transport = "EventSource" in window ? sse() : longPoll();
    $("add-uuid").focus();
  }

  function stopChat() {
    if (state.transport) state.transport.stop();
    state.transport = null;
    window.clearInterval(state.contactsTimer);
    state.contactsTimer = null;
    state.cursor = null;
    state.contacts.clear();
    state.strangers.clear();
    state.messages.clear();
    state.seen.clear();
    state.unread.clear();
    state.open = null;
    contactsDrawn = "";
    $("gap").hidden = true;
  }

  // The session is gone (closed, expired, server restarted without it): back to sign-in.
  function sessionLost() {
    if (!state.session) return;
    state.session = null;
    state.me = null;
    save();
    showError("Your session has ended (closed or expired). Sign in again.");
    showSignIn();
  }

  async function signOut() {
    const session = state.session;
    stopChat();
    state.session = null;
    state.me = null;
    save();
    document.title = "chatbus demo";
    if (session) {
      try {
        await call("DELETE", `/api/session/${session}`);
      } catch {
        // Already gone: signed out either way.
      }
    }
    clearError();
    showSignIn();
  }

  async function refreshContacts() {
    const session = state.session;
    if (!session) return;
    try {
      const { value: contacts } = await call("GET", `/api/contacts/${session}`);
      if (session !== state.session) return;
      state.contacts.clear();
      for (const c of contacts) {
        state.contacts.set(c.user.id, c);
        state.strangers.delete(c.user.id);
      }
      renderContacts();
      renderConversationHead();
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) sessionLost();
      // Otherwise (offline, restarting): the next refresh tries again.
    }
  }

  async function onAddContact(e) {
    e.preventDefault();
    const uuid = $("add-uuid").value.trim();
    if (!uuid) return;
    try {
      if (state.me && uuid === state.me.uuid) throw new Error("that is you");
      let user;
      try {
        ({ value: user } = await call("GET", `/api/user.uuid/${encodeURIComponent(uuid)}`, { admin: true }));
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) throw new Error(`no user has the id “${uuid}”`);
        throw err;
      }
      await call("POST", `/api/contact/${state.session}/${user.id}`);
      $("add-uuid").value = "";
      clearError();
      await refreshContacts();
      openConversation(user.id);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && /session/i.test(err.message)) return sessionLost();
      showError(`Could not add the contact: ${err.message}`);
    }
  }

  // The list as last drawn, so that the periodic refresh redraws only what changed and a
  // keyboard user's focus on a contact survives it.
  let contactsDrawn = "";

  function renderContacts() {
    const list = $("contacts");
    const ids = [...state.contacts.keys(), ...state.strangers.keys()];
    ids.sort((a, b) => nameOfId(a).localeCompare(nameOfId(b)));
    const drawn = JSON.stringify([
      state.open,
      ids.map((id) => [id, nameOfId(id), state.contacts.get(id) || null, state.unread.get(id) || 0]),
    ]);
    if (drawn === contactsDrawn) return;
    contactsDrawn = drawn;
    const focused = document.activeElement && document.activeElement.closest("#contacts .contact");
    const focusedId = focused ? focused.dataset.userId : null;
    list.replaceChildren(
      ...ids.map((id) => {
        const c = state.contacts.get(id);
        const online = c ? c.is_online : false;
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "contact";
        button.dataset.userId = String(id);
        if (id === state.open) button.setAttribute("aria-current", "true");

        const avatar = document.createElement("span");
        avatar.className = "avatar";
        avatar.setAttribute("aria-hidden", "true");
        avatar.textContent = nameOfId(id).slice(0, 1).toUpperCase();

        const who = document.createElement("span");
        who.className = "who";
        const name = document.createElement("span");
        name.className = "name";
        name.textContent = nameOfId(id);
        const sub = document.createElement("span");
        sub.className = "sub";
        const presence = document.createElement("span");
        presence.className = `presence ${online ? "online" : "offline"}`;
        presence.textContent = c ? (online ? "online" : "offline") : "not a contact";
        sub.append(presence);
        if (c) sub.append(` · ${c.user.uuid}`);
        who.append(name, sub);
        button.append(avatar, who);

        const unread = state.unread.get(id) || 0;
        if (unread > 0) {
          const badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = String(unread);
          const words = document.createElement("span");
          words.className = "visually-hidden";
          words.textContent = " unread";
          badge.append(words);
          button.append(badge);
        }
        button.addEventListener("click", () => openConversation(id));
        li.append(button);
        return li;
      }),
    );
    $("contacts-empty").hidden = ids.length > 0;
    if (focusedId !== null) {
      const again = list.querySelector(`.contact[data-user-id="${focusedId}"]`);
      if (again) again.focus();
    }
  }

  function openConversation(id) {
    state.open = id;
    state.unread.delete(id);
    renderContacts();
    renderConversation();
    $("composer-body").focus();
  }

  function renderConversationHead() {
    const id = state.open;
    $("add-stranger").hidden = id === null || state.contacts.has(id);
    if (id === null) {
      $("conv-title").textContent = "No conversation open";
      $("conv-status").textContent = "";
      return;
    }
    const c = state.contacts.get(id);
    const stranger = state.strangers.get(id);
    $("conv-title").textContent = nameOfId(id);
    $("conv-status").textContent = c
      ? `${c.is_online ? "online" : "offline"} · ${c.user.uuid} · #${id}`
      : `${stranger ? `${stranger.uuid} · ` : ""}#${id} · not in your contacts`;
  }

  function renderConversation() {
    renderConversationHead();
    const id = state.open;
    const list = $("messages");
    const messages = id === null ? [] : state.messages.get(id) || [];
    list.replaceChildren(...messages.map(renderMessage));
    $("composer").hidden = id === null;
    $("conv-empty").hidden = id !== null && messages.length > 0;
    $("conv-empty").textContent =
      id === null ? "Choose a contact on the left to start talking." : "No messages yet. Say hello!";
    list.scrollTop = list.scrollHeight;
  }

  function renderMessage(m) {
    const own = m.sender_id === state.me.id;
    const li = document.createElement("li");
    li.className = `message ${own ? "own" : "theirs"}`;
    li.dataset.uuid = m.uuid;

    const who = document.createElement("span");
    who.className = "visually-hidden";
    who.textContent = own ? "You: " : `${nameOfId(m.sender_id)}: `;
    li.append(who);

    if (m.body) {
      const body = document.createElement("p");
      body.className = "body";
      body.textContent = m.body;
      li.append(body);
    }
    if (m.attachments && typeof m.attachments === "object") {
      const dl = document.createElement("dl");
      dl.className = "attachment-list";
      for (const [key, value] of Object.entries(m.attachments)) {
        const dt = document.createElement("dt");
        dt.textContent = key;
        const dd = document.createElement("dd");
        dd.textContent = typeof value === "string" ? value : JSON.stringify(value);
        dl.append(dt, dd);
      }
      li.append(dl);
    }
    const time = document.createElement("time");
    const when = parseTime(m.created_utc);
    time.dateTime = m.created_utc;
    time.title = fullFormat.format(when);
    time.textContent = timeFormat.format(when);
    li.append(time);
    return li;
  }

  // A message from the stream, the long-poll or our own send; each is shown once. Only what
  // came through delivery (`delivered`) moves the cursor: an own send may be newer than a
  // message still on its way, which a reconnect from that send's time would skip.
  function receive(m, delivered) {
    if (delivered) state.cursor = later(state.cursor, delivered === true ? cursorOf(m) : delivered);
    if (state.seen.has(m.uuid)) return;
    state.seen.add(m.uuid);
    const other = m.sender_id === state.me.id ? m.receiver_id : m.sender_id;
    if (!state.contacts.has(other) && other !== state.me.id && !state.strangers.has(other)) {
      state.strangers.set(other, null);
      nameStranger(other);
    }
    const list = state.messages.get(other) || [];
    list.push(m);
    state.messages.set(other, list);
    const incoming = m.sender_id !== state.me.id;
    if (state.open === null && incoming) {
      openConversationQuietly(other);
    } else if (other === state.open) {
      $("conv-empty").hidden = true;
      const box = $("messages");
      box.append(renderMessage(m));
      box.scrollTop = box.scrollHeight;
    } else if (incoming) {
      state.unread.set(other, (state.unread.get(other) || 0) + 1);
      announce(`New message from ${nameOfId(other)}`);
      renderContacts();
    } else {
      renderContacts();
    }
  }

  // Someone not in the contacts wrote (or was written to from another tab). Their name is an
  // admin route away: looked up only when the token is already at hand, never asked for.
  async function nameStranger(id) {
    if (!state.token) return;
    try {
      const { value: user } = await call("GET", `/api/user/${id}`, { admin: true, noPrompt: true });
      if (!state.strangers.has(id)) return;
      state.strangers.set(id, user);
      renderContacts();
      renderConversationHead();
    } catch {
      // Deleted, or the token is no longer right: "User #id" it stays.
    }
  }

  async function addStranger() {
    const id = state.open;
    try {
      await call("POST", `/api/contact/${state.session}/${id}`);
      clearError();
      await refreshContacts();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && /session/i.test(err.message)) return sessionLost();
      showError(`Could not add the contact: ${err.message}`);
    }
  }

  // Opens the conversation a message arrived in without moving the keyboard focus.
  function openConversationQuietly(id) {
    state.open = id;
    renderContacts();
    renderConversation();
  }

  // ---------------------------------------------------------------- composer

  function addAttachmentRow(key = "", value = "") {
    const box = $("attachments");
    const n = box.children.length + 1;
    const row = document.createElement("div");
    row.className = "attachment-row";
    const stamp = Date.now();
    // A labelled text field of the row: its label, and the input.
    const field = (kind, labelText, text, placeholder) => {
      const id = `att-${kind}-${n}-${stamp}`;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = labelText;
      const input = document.createElement("input");
      input.id = id;
      input.className = `att-${kind}`;
      input.value = text;
      input.placeholder = placeholder;
      input.autocomplete = "off";
      return [label, input];
    };
    const [keyLabel, keyInput] = field("key", `Attachment ${n} name`, key, "file");
    const [valueLabel, valueInput] = field("value", "value", value, "notes.txt");

    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "ghost small";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove attachment ${n}`);
    remove.addEventListener("click", () => {
      row.remove();
      $("composer-body").focus();
    });

    row.append(keyLabel, keyInput, valueLabel, valueInput, remove);
    box.append(row);
    keyInput.focus();
  }

  function readAttachments() {
    const rows = [...$("attachments").querySelectorAll(".attachment-row")];
    const out = {};
    let any = false;
    for (const row of rows) {
      const key = row.querySelector(".att-key").value.trim();
      const value = row.querySelector(".att-value").value;
      if (!key && !value) continue;
      if (!key) throw new Error("every attachment needs a name");
      if (key in out) throw new Error(`the attachment name “${key}” is used twice`);
      out[key] = value;
      any = true;
    }
    return any ? out : null;
  }

  async function onSend(e) {
    e.preventDefault();
    if (state.open === null) return;
    const input = $("composer-body");
    const body = input.value;
    let attachments;
    try {
      attachments = readAttachments();
    } catch (err) {
      showError(`Not sent: ${err.message}`);
      return;
    }
    if (!body.trim() && !attachments) return;
    const button = $("send");
    button.disabled = true;
    try {
      const { value: message } = await call("POST", `/api/message/${state.session}`, {
        body: { receiver_id: state.open, body: body.trim() ? body : "", attachments },
      });
      input.value = "";
      $("attachments").replaceChildren();
      clearError();
      receive(message, false);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return sessionLost();
      if (err instanceof ApiError && err.status === 429) {
        const after = err.res.headers.get("Retry-After");
        showError(`Sending too fast${after ? `; try again in ${after} s` : ""}.`);
      } else {
        showError(`Not sent: ${err.message}`);
      }
    } finally {
      button.disabled = false;
      input.focus();
    }
  }

  function onComposerKey(e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  }

  // ---------------------------------------------------------------- delivery

  function cursorPath() {
    const c = state.cursor;
    return c ? `/${c.unix}/${c.nano}` : "";
  }

  // Server-Sent Events. EventSource reconnects by itself (with Last-Event-ID) while the server
  // answers; when it gives up (readyState CLOSED: the answer was not an event stream, e.g. the
  // session is gone) the page checks the session and opens a new one from the cursor. After
  // SSE_FAILURES_BEFORE_FALLBACK failures in a row it long-polls instead.
  function sse() {
    let source = null;
    let failures = 0;
    let stopped = false;
    let retry = null;

    const open = () => {
      if (stopped) return;
      setLink("wait", failures ? "Reconnecting…" : "Connecting…");
      source = new EventSource(`/api/stream/${state.session}${cursorPath()}`);
      source.onopen = () => {
        failures = 0;
        setLink("live", "Live · Server-Sent Events");
      };
      source.addEventListener("message", (ev) => {
        failures = 0;
        try {
          receive(JSON.parse(ev.data), parseEventId(ev.lastEventId) || true);
        } catch (err) {
          console.error("bad message event", err, ev.data);
        }
      });
      source.addEventListener("gap", () => showGap());
      source.onerror = () => {
        failures += 1;
        if (source.readyState !== EventSource.CLOSED && failures < SSE_FAILURES_BEFORE_FALLBACK) {
          setLink("wait", "Reconnecting…");
          return; // the browser retries by itself
        }
        source.close();
        source = null;
        if (failures >= SSE_FAILURES_BEFORE_FALLBACK) {
          checkSession().then((alive) => {
            if (alive && !stopped) fallBack();
          });
          return;
        }
        setLink("wait", "Reconnecting…");
        retry = window.setTimeout(() => {
          checkSession().then((alive) => alive && open());
        }, backoff(failures));
      };
    };

    const fallBack = () => {
      stopped = true;
      console.warn("EventSource keeps failing: long-polling instead");
      state.transport = longPoll();
    };

    open();
    return {
      kind: "sse",
      stop() {
        stopped = true;
        window.clearTimeout(retry);
        if (source) source.close();
      },
    };
  }

  // Long-poll with the cursor: every answer carries the next cursor and `gap`.
  function longPoll() {
    const controller = new AbortController();
    let stopped = false;

    (async () => {
      let failures = 0;
      while (!stopped) {
        setLink(failures ? "wait" : "live", failures ? "Reconnecting…" : "Live · long-poll");
        try {
          const path = `/api/messages/${state.session}${cursorPath()}?wait=${LONG_POLL_WAIT}`;
          const { value: messages, meta } = await call("GET", path, { signal: controller.signal });
          failures = 0;
          if (meta.gap) showGap();
          for (const m of messages) receive(m, true);
          if (meta.cursor) state.cursor = later(state.cursor, meta.cursor);
        } catch (err) {
          if (stopped) return;
          if (err instanceof ApiError && err.status === 404) return sessionLost();
          failures += 1;
          setLink("wait", "Reconnecting…");
          await sleep(backoff(failures));
        }
      }
    })();

    return {
      kind: "long-poll",
      stop() {
        stopped = true;
        controller.abort();
      },
    };
  }

  function backoff(failures) {
    return Math.min(1000 * 2 ** Math.min(failures - 1, 4), 15000) * (0.75 + Math.random() / 2);
  }

  function sleep(ms) {
    return new Promise((resolve) => window.setTimeout(resolve, ms));
  }

  // Whether the session still exists; signs out when the server says it does not.
  async function checkSession() {
    if (!state.session) return false;
    try {
      await call("GET", `/api/contacts/${state.session}`);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        sessionLost();
        return false;
      }
      return true; // unreachable for now: keep trying
    }
  }

  // ---------------------------------------------------------------- start

  function wire() {
    $("pick-form").addEventListener("submit", onPick);
    $("pick-refresh").addEventListener("click", loadUsers);
    $("create-form").addEventListener("submit", onCreate);
    $("add-form").addEventListener("submit", onAddContact);
    $("composer").addEventListener("submit", onSend);
    $("composer-body").addEventListener("keydown", onComposerKey);
    $("add-attachment").addEventListener("click", () => addAttachmentRow());
    $("sign-out").addEventListener("click", signOut);
    $("add-stranger").addEventListener("click", addStranger);
    $("gap-dismiss").addEventListener("click", () => {
      $("gap").hidden = true;
    });
    $("error-dismiss").addEventListener("click", clearError);
  }

  async function main() {
    wire();
    restore();
    if (state.session && state.me) {
      if (await checkSession()) startChat();
      else if (!state.session) return; // sessionLost() already showed sign-in
    } else {
      await showSignIn();
    }
  }

  main();
})();
