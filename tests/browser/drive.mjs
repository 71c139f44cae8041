// Drives the page under test in headless Chromium against a running gateway
// and prints what the page saw as one JSON object on stdout (logs on stderr).
//
//   node tests/browser/drive.mjs --gateway http://127.0.0.1:P --site DIR \
//        --allowed-origin http://localhost:5173 [--chromium /usr/bin/chromium]
//
// DIR is build.mjs's OUT_DIR/site. A static server on 127.0.0.1 (a port the
// OS picks, held by this process) serves it. That origin is not one the
// gateway allows, so the same page loaded from there is the foreign page.
// The allowed origin's fixed port is never bound, so parallel runs cannot
// collide on it: Chromium sends requests for that origin to the static
// server as its HTTP proxy, which answers them with the same files. The page
// then really runs with that origin (its calls carry `Origin: <allowed
// origin>`) and, coming from a loopback server, in the loopback address
// space, like a dev server on localhost.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import puppeteer from "puppeteer-core";

/** The whole run's bound; the Rust test has its own, longer one. */
const RUN_TIMEOUT_MS = 240_000;
/** How long Chromium may take to start (slow on a loaded 2-core machine). */
const LAUNCH_TIMEOUT_MS = 120_000;
/** How long the page may take to load and start its module. */
const PAGE_READY_MS = 90_000;
const PASSWORD = "correct horse battery";

function args() {
  const a = { chromium: "/usr/bin/chromium" };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    a[key] = argv[i + 1];
  }
  for (const k of ["gateway", "site", "allowedOrigin"]) {
    if (!a[k]) {
      console.error(`drive.mjs: missing --${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
      process.exit(2);
    }
  }
  return a;
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

/**
 * Serves `dir` on 127.0.0.1 at a port the OS picks; resolves to the server.
 * As Chromium's proxy it gets absolute URLs: those of `proxiedOrigin` are
 * served from `dir` too, any other is refused.
 */
function serve(dir, proxiedOrigin) {
  const server = createServer(async (req, res) => {
    const absolute = /^[a-z]+:\/\//i.test(req.url);
    const url = new URL(req.url, "http://direct");
    if (absolute && url.origin !== proxiedOrigin) {
      res.writeHead(502).end("not proxied");
      return;
    }
    const path = url.pathname;
    const file = normalize(join(dir, path === "/" ? "index.html" : path));
    if (!file.startsWith(normalize(dir))) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => ok(server));
  });
}

/** A page with its console and failed requests recorded. */
async function openPage(browser, label) {
  const page = await browser.newPage();
  const record = { console: [], failedRequests: [] };
  page.on("console", (m) => record.console.push(m.text()));
  page.on("pageerror", (e) => record.console.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) =>
    record.failedRequests.push({ url: r.url(), method: r.method(), error: r.failure()?.errorText ?? null }),
  );
  page.on("console", (m) => console.error(`[${label}] ${m.text()}`));
  return { page, record };
}

async function load(page, url) {
  await page.goto(url, { waitUntil: "load", timeout: PAGE_READY_MS });
  await page.waitForFunction(() => window.tallyReady === true, { timeout: PAGE_READY_MS });
  return page.evaluate(() => window.location.origin);
}

async function scenario(a, browser, staticBase) {
  const gw = a.gateway;
  const out = {};
  const stamp = Date.now().toString(36);
  const alice = `alice-${stamp}@example.com`;
  const bob = `bob-${stamp}@example.com`;

  const loadStart = Date.now();
  const foreign = await openPage(browser, "foreign");
  out.foreignOrigin = await load(foreign.page, `${staticBase}/`);
  const app = await openPage(browser, "app");
  out.appOrigin = await load(app.page, `${a.allowedOrigin}/`);
  out.pagesLoadMs = Date.now() - loadStart;
  // Each call's duration, so a slow step shows in the output.
  out.timingsMs = [];
  const call = async (p, fn, ...xs) => {
    const t = Date.now();
    const r = await p.page.evaluate((fn, xs) => window.tally[fn](...xs), fn, xs);
    out.timingsMs.push([fn, Date.now() - t]);
    return r;
  };

  // The foreign page tries first, with the credentials the app uses next:
  // the browser must refuse both calls, and the sign-up must have had no
  // effect (the app's sign-up below succeeds).
  out.foreignSignUp = await call(foreign, "signUp", gw, alice, PASSWORD, "Mallory");
  out.foreignLogin = await call(foreign, "login", gw, alice, PASSWORD);

  out.signUp = await call(app, "signUp", gw, alice, PASSWORD, "Alice");
  out.signUpAgain = await call(app, "signUp", gw, alice, PASSWORD, "Alice");
  out.login = await call(app, "login", gw, alice, PASSWORD);
  const token = out.login.ok?.accessToken;
  out.createPollWithoutToken = await call(app, "createPoll", gw, null, "No token?", ["a", "b"]);
  out.createPollWithBadToken = await call(app, "createPoll", gw, "not-a-token", "Bad token?", ["a", "b"]);
  out.createPoll = await call(app, "createPoll", gw, token, "Tabs or spaces?", ["tabs", "spaces"]);
  const poll = out.createPoll.ok;
  if (!token || !poll) return out;
  const tabs = poll.options.find((o) => o.text === "tabs")?.id;

  out.watch = await call(app, "watchPoll", gw, token, poll.pollId);
  const watch = out.watch.ok?.watch;
  out.vote = await call(app, "castVote", gw, token, poll.pollId, tabs, `alice-${stamp}`);
  if (watch) out.watchAfterVote = await call(app, "waitForUpdate", watch, { [tabs]: 1 }, 0);

  // A second user's vote moves the live count from 1 to 2.
  out.signUpSecond = await call(app, "signUp", gw, bob, PASSWORD, "Bob");
  out.loginSecond = await call(app, "login", gw, bob, PASSWORD);
  const token2 = out.loginSecond.ok?.accessToken;
  out.secondVote = await call(app, "castVote", gw, token2, poll.pollId, tabs, `bob-${stamp}`);
  if (watch) {
    const from = out.watchAfterVote?.ok ? out.watchAfterVote.ok.index + 1 : 0;
    out.watchAfterSecondVote = await call(app, "waitForUpdate", watch, { [tabs]: 2 }, from);
  }
  // The same user voting again with a new key: ALREADY_EXISTS.
  out.voteAgain = await call(app, "castVote", gw, token, poll.pollId, tabs, `alice-again-${stamp}`);
  out.results = await call(app, "getResults", gw, token, poll.pollId);
  if (watch) {
    out.watchUpdates = await call(app, "watchUpdates", watch);
    await call(app, "closeWatch", watch);
  }
  out.options = Object.fromEntries(poll.options.map((o) => [o.text, o.id]));
  out.foreignConsole = foreign.record.console;
  out.foreignFailedRequests = foreign.record.failedRequests;
  out.appConsole = app.record.console;
  return out;
}

async function main() {
  const a = args();
  const server = await serve(a.site, a.allowedOrigin);
  const staticBase = `http://127.0.0.1:${server.address().port}`;
  console.error(`drive.mjs: static server ${staticBase}; also proxy for ${a.allowedOrigin}`);
  const launchedAt = Date.now();
  const browser = await puppeteer.launch({
    executablePath: a.chromium,
    headless: true,
    args: [
      // Root in a container has no user namespaces for Chromium's sandbox.
      "--no-sandbox",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--disable-gpu",
      // The allowed origin's host (localhost) goes to the static server as
      // an HTTP proxy; everything at 127.0.0.1 (the gateway, the foreign
      // page) goes direct. `<-loopback>` lifts Chromium's implicit
      // never-proxy-localhost rule.
      `--proxy-server=${staticBase}`,
      "--proxy-bypass-list=<-loopback>;127.0.0.1",
    ],
    protocolTimeout: RUN_TIMEOUT_MS,
    timeout: LAUNCH_TIMEOUT_MS,
  });
  try {
    const launchMs = Date.now() - launchedAt;
    const out = await scenario(a, browser, staticBase);
    out.launchMs = launchMs;
    out.browserVersion = await browser.version();
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await browser.close().catch(() => {});
    server.close();
  }
}

const timer = setTimeout(() => {
  console.error(`drive.mjs: gave up after ${RUN_TIMEOUT_MS} ms`);
  process.exit(1);
}, RUN_TIMEOUT_MS);
timer.unref();
main().then(
  () => process.exit(0),
  (e) => {
    console.error(`drive.mjs: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
