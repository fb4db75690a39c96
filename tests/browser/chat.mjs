// Drives the /demo chat client in two (then three) headless Chromium pages against a running
// chatbus; run by tests/browser.rs, which starts chatbus with --admin-token and
// --mailbox-capacity 8 and passes:
//
//   CHATBUS_URL   http://127.0.0.1:<port>
//   CHATBUS_TOKEN the admin token
//   CHROMIUM      the browser (default /usr/bin/chromium)
//   SCREENSHOT    where to save the picture of both pages side by side
//
// Every wait is for a condition with a deadline; nothing sleeps and hopes. Exit 0 when every
// check passed; otherwise the first failure and the pages' console go to stderr, exit 1.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

const BASE = need("CHATBUS_URL");
const TOKEN = need("CHATBUS_TOKEN");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = need("SCREENSHOT");
const WAIT = 10_000; // for any one condition
const VIEWPORT = { width: 920, height: 600 };

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`chat.mjs: ${name} is not set (run through tests/browser.rs)`);
    process.exit(2);
  }
  return value;
}

// The whole run has a deadline too, below the Rust test's.
setTimeout(() => {
  console.error("chat.mjs: the run took longer than 50 s");
  process.exit(1);
}, 50_000).unref();

const started = Date.now();
function step(text) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${text}`);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

// Console lines of every page, printed when something fails; a CSP violation or an uncaught
// error fails the run on its own.
const consoleLines = [];
const pageErrors = [];
function watch(page, label) {
  page.on("console", (msg) => {
    const line = `${label} console.${msg.type()}: ${msg.text()}`;
    consoleLines.push(line);
    if (/Content Security Policy/i.test(msg.text())) pageErrors.push(line);
  });
  page.on("pageerror", (err) => pageErrors.push(`${label} uncaught: ${err.message}`));
}

async function api(method, path, body, admin = false) {
  const headers = { "Content-Type": "application/json" };
  if (admin) headers.Authorization = `Bearer ${TOKEN}`;
  const res = await fetch(BASE + path, { method, headers, body: body && JSON.stringify(body) });
  const env = await res.json();
  check(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(env)}`);
  return env.response;
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
try {
  await run();
  check(pageErrors.length === 0, `no CSP violation or uncaught error:\n${pageErrors.join("\n")}`);
  step("all checks passed");
} catch (err) {
  console.error(err.stack || String(err));
  console.error("--- the pages' console ---");
  for (const line of consoleLines) console.error(line);
  for (const line of pageErrors) console.error(line);
  process.exitCode = 1;
} finally {
  await browser.close();
}

async function newPage(label, init) {
  const context = await browser.newContext({ viewport: VIEWPORT, locale: "en-GB", timezoneId: "UTC" });
  context.setDefaultTimeout(WAIT);
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  watch(page, label);
  return page;
}

// Opens /demo; the server has an admin token, so listing users answers 401 and the page asks
// for the token.
async function openDemo(page) {
  const res = await page.goto(`${BASE}/demo`);
  check(res.status() === 200, `/demo answers 200, got ${res.status()}`);
  await page.getByLabel("Admin token", { exact: true }).fill(TOKEN);
  await page.getByRole("button", { name: "Use token" }).click();
  await page.locator("#token-panel").waitFor({ state: "hidden" });
}

async function createAndSignIn(page, uuid, name) {
  await openDemo(page);
  await page.getByLabel("User id (uuid, 1–64 characters)", { exact: true }).fill(uuid);
  await page.getByLabel("Display name (optional)", { exact: true }).fill(name);
  await page.getByRole("button", { name: "Create and sign in" }).click();
  await page.locator("#me-name", { hasText: name }).waitFor();
}

async function addContact(page, uuid) {
  await page.getByLabel("Add a contact by user id", { exact: true }).fill(uuid);
  await page.getByRole("button", { name: "Add", exact: true }).click();
}

function contact(page, name) {
  return page.locator("#contacts .contact", { hasText: name });
}

async function send(page, text) {
  const box = page.getByLabel("Message", { exact: true });
  await box.fill(text);
  await box.press("Enter");
  await page.locator("#messages .message.own", { hasText: text }).waitFor();
  check((await box.inputValue()) === "", "the composer is emptied after a send");
}

async function run() {
  const a = await newPage("alice");
  const b = await newPage("bob");

  step("alice and bob create their users (entering the admin token when asked)");
  await Promise.all([createAndSignIn(a, "alice", "Alice"), createAndSignIn(b, "bob", "Bob")]);
  for (const page of [a, b]) {
    await page.locator("#link", { hasText: "Server-Sent Events" }).waitFor();
  }

  step("they add each other by uuid and see each other online");
  await addContact(a, "bob");
  await contact(a, "Bob").locator(".presence.online").waitFor();
  await addContact(b, "alice");
  await contact(b, "Alice").locator(".presence.online").waitFor();
  check((await contact(a, "Bob").innerText()).includes("bob"), "bob's uuid is shown");
  check((await a.locator("#conv-title").innerText()) === "Bob", "adding bob opens his conversation");

  step("alice writes; bob sees it live (SSE) and answers with an attachment");
  await send(a, "Hi Bob! Are the notes ready?");
  const first = b.locator("#messages .message.theirs", { hasText: "Hi Bob! Are the notes ready?" });
  await first.waitFor();
  check((await first.locator("time").innerText()).match(/^\d\d:\d\d$/), "a message shows its time");
  await b.getByRole("button", { name: "+ Attachment" }).click();
  await b.getByLabel("Attachment 1 name", { exact: true }).fill("file");
  await b.getByLabel("value", { exact: true }).fill("notes-2026-12.pdf");
  await b.getByLabel("Message", { exact: true }).fill("Here they are.");
  await b.getByRole("button", { name: "Send", exact: true }).click();
  const answer = b.locator("#messages .message.own", { hasText: "Here they are." });
  await answer.waitFor();
  check((await b.locator("#attachments .attachment-row").count()) === 0, "attachments are cleared after a send");

  step("alice sees the answer and its attachment");
  const got = a.locator("#messages .message.theirs", { hasText: "Here they are." });
  await got.waitFor();
  check((await got.locator("dt").innerText()).includes("file"), "the attachment's name is shown");
  check((await got.locator("dd").innerText()) === "notes-2026-12.pdf", "the attachment's value is shown");
  await send(a, "Thanks, got them!");
  await b.locator("#messages .message.theirs", { hasText: "Thanks, got them!" }).waitFor();
  // An attachment alone, with no text.
  await a.getByRole("button", { name: "+ Attachment" }).click();
  await a.getByLabel("Attachment 1 name", { exact: true }).fill("image");
  await a.getByLabel("value", { exact: true }).fill("cat.png");
  await a.getByRole("button", { name: "Send", exact: true }).click();
  await b.locator("#messages .message.theirs dd", { hasText: "cat.png" }).waitFor();

  // What each page shows, in order: own on one side, theirs on the other.
  const shown = async (page) =>
    page.locator("#messages .message").evaluateAll((els) =>
      els.map((el) => `${el.classList.contains("own") ? "own" : "theirs"}: ${el.querySelector(".body")?.textContent ?? ""}`),
    );
  const expectA = ["own: Hi Bob! Are the notes ready?", "theirs: Here they are.", "own: Thanks, got them!", "own: "];
  const expectB = ["theirs: Hi Bob! Are the notes ready?", "own: Here they are.", "theirs: Thanks, got them!", "theirs: "];
  check(JSON.stringify(await shown(a)) === JSON.stringify(expectA), `alice's page shows ${JSON.stringify(await shown(a))}`);
  check(JSON.stringify(await shown(b)) === JSON.stringify(expectB), `bob's page shows ${JSON.stringify(await shown(b))}`);
  check(await a.locator("#gap").isHidden(), "no gap notice for a client that kept up");
  check((await a.locator("#messages").getAttribute("aria-live")) === "polite", "the message list is a live region");

  step(`screenshot of both pages: ${SCREENSHOT}`);
  await b.getByLabel("Message", { exact: true }).fill("");
  await Promise.all([a, b].map((page) => page.locator("body").click({ position: { x: 2, y: 590 } })));
  const [shotA, shotB] = await Promise.all([a.screenshot(), b.screenshot()]);
  await sideBySide(shotA, shotB);

  step("a page without EventSource long-polls; a user who missed messages sees the gap notice");
  // Dave gets 12 messages into a mailbox of 8 before he ever looks: 4 have left it.
  const alice = await api("GET", "/api/user.uuid/alice", undefined, true);
  const dave = await api("POST", "/api/user", { uuid: "dave", display_name: "Dave" }, true);
  const erin = await api("POST", "/api/user", { uuid: "erin", display_name: "Erin" }, true);
  const erinSession = await api("POST", `/api/session/${erin.id}`, undefined, true);
  for (let n = 1; n <= 12; n++) {
    await api("POST", `/api/message/${erinSession.uuid}`, { receiver_id: dave.id, body: `note ${n}` });
  }
  const c = await newPage("dave", () => {
    delete window.EventSource;
  });
  await openDemo(c);
  await c.getByLabel("Existing users", { exact: true }).selectOption({ label: "Dave (dave, #" + dave.id + ")" });
  await c.getByRole("button", { name: "Open a session" }).click();
  await c.locator("#link", { hasText: "long-poll" }).waitFor();
  await c.locator("#gap").waitFor();
  await c.locator("#messages .message.theirs", { hasText: "note 12" }).waitFor();
  check((await c.locator("#messages .message").count()) === 8, "dave sees the 8 messages his mailbox still holds");
  // Erin is no contact of his: named through the admin token he gave, and one click adds her.
  await c.locator("#conv-title", { hasText: "Erin" }).waitFor();
  await c.getByRole("button", { name: "Add to contacts" }).click();
  await contact(c, "Erin").locator(".presence.online").waitFor();
  await c.getByRole("button", { name: "Add to contacts" }).waitFor({ state: "hidden" });
  // Long-poll delivers what comes next.
  await api("POST", `/api/message/${erinSession.uuid}`, { receiver_id: dave.id, body: "one more, live" });
  await c.locator("#messages .message.theirs", { hasText: "one more, live" }).waitFor();

  step("bob signs out; alice's contact list shows him offline");
  await b.getByRole("button", { name: "Sign out" }).click();
  await b.locator("#sign-in").waitFor();
  await contact(a, "Bob").locator(".presence.offline").waitFor();

  step("a reload keeps alice's session (sessionStorage); with streams refused she falls back to long-poll");
  await a.route("**/api/stream/**", (route) =>
    route.fulfill({ status: 503, contentType: "application/json", body: '{"meta":{"http_code":503,"message":"refused by the test"}}' }),
  );
  await a.reload();
  await a.locator("#me-name", { hasText: "Alice" }).waitFor();
  await contact(a, "Bob").click();
  await a.locator("#messages .message.own", { hasText: "Thanks, got them!" }).waitFor();
  await a.locator("#link", { hasText: "long-poll" }).waitFor({ timeout: 20_000 });
  // A message from someone else while Bob's conversation is open: an unread badge, no jump.
  await api("POST", `/api/message/${erinSession.uuid}`, { receiver_id: alice.id, body: "hello alice" });
  await contact(a, "Erin").locator(".badge", { hasText: "1" }).waitFor();
  check((await a.locator("#conv-title").innerText()) === "Bob", "an incoming message does not switch the open conversation");
}

// Both screenshots next to each other, drawn by the browser itself (no image library).
async function sideBySide(left, right) {
  const gap = 16;
  const page = await browser.newPage({ viewport: { width: VIEWPORT.width * 2 + gap * 3, height: VIEWPORT.height + gap * 2 } });
  const img = (png) => `<img src="data:image/png;base64,${png.toString("base64")}" width="${VIEWPORT.width}" height="${VIEWPORT.height}">`;
  await page.setContent(
    `<body style="margin:0;padding:${gap}px;display:flex;gap:${gap}px;background:#cbd0dc">` +
      `${img(left)}${img(right)}</body>`,
  );
  await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0));
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT });
  await page.close();
}
