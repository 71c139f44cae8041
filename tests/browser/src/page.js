// The web client under test: what a Tally web app does in a browser, through
// the real gRPC-Web client library (@connectrpc/connect-web) with messages and
// service descriptors generated from proto/ by protoc-gen-es.
//
// It only acts and reports what it saw (values, and errors as the library
// reports them); tests/up_browser.rs decides what is right. The driver
// (drive.mjs) calls `window.tally.*` from the page.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { UserService } from "@gen/tally/user/v1/user_pb.js";
import { PollService } from "@gen/tally/poll/v1/poll_pb.js";
import { NotificationService } from "@gen/tally/notification/v1/notification_pb.js";

/** Longest any single call may take; the library turns it into `grpc-timeout`. */
const CALL_TIMEOUT_MS = 30_000;
/** How long a watch waits for the update it expects. */
const WATCH_WAIT_MS = 60_000;
/** Pause between WatchPoll attempts while notification has not seen the poll yet. */
const WATCH_RETRY_MS = 200;

/** An error as the client library reports it: code name, number and message. */
function reported(e) {
  if (e instanceof ConnectError) {
    return { code: Code[e.code], codeNumber: e.code, message: e.rawMessage };
  }
  return { code: null, codeNumber: null, message: String(e && e.message ? e.message : e), name: e && e.name };
}

/** Runs `call` and returns `{ok: value}` or `{error: reported}`. */
async function attempt(call) {
  try {
    return { ok: await call() };
  } catch (e) {
    return { error: reported(e) };
  }
}

/** Clients for one gateway, optionally with a bearer token on every call. */
function clients(gateway, token) {
  const interceptors = token
    ? [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${token}`);
          return next(req);
        },
      ]
    : [];
  const transport = createGrpcWebTransport({
    baseUrl: gateway,
    useBinaryFormat: true,
    defaultTimeoutMs: CALL_TIMEOUT_MS,
    interceptors,
  });
  return {
    user: createClient(UserService, transport),
    poll: createClient(PollService, transport),
    notification: createClient(NotificationService, transport),
  };
}

/** Plain JSON for the driver: bigint counts become numbers. */
function plainCounts(update) {
  const counts = {};
  for (const c of update.counts) counts[c.optionId] = Number(c.votes);
  return { sequence: Number(update.sequence), total: Number(update.totalVotes), counts };
}

/** Open watches by id, so the driver can act between their updates. */
const watches = new Map();
let nextWatch = 1;

window.tally = {
  async signUp(gateway, email, password, displayName) {
    const r = await attempt(() => clients(gateway).user.signUp({ email, password, displayName }));
    return r.ok ? { ok: { userId: r.ok.user?.userId ?? null, email: r.ok.user?.email ?? null } } : r;
  },

  async login(gateway, email, password) {
    const r = await attempt(() => clients(gateway).user.login({ email, password }));
    return r.ok ? { ok: { accessToken: r.ok.accessToken } } : r;
  },

  async createPoll(gateway, token, question, options) {
    const r = await attempt(() => clients(gateway, token).poll.createPoll({ question, options }));
    if (!r.ok) return r;
    const p = r.ok.poll;
    return { ok: { pollId: p.pollId, question: p.question, options: p.options.map((o) => ({ id: o.optionId, text: o.text })) } };
  },

  async castVote(gateway, token, pollId, optionId, idempotencyKey) {
    const r = await attempt(() =>
      clients(gateway, token).poll.castVote({ pollId, optionId, idempotencyKey }),
    );
    return r.ok ? { ok: { voteId: r.ok.vote?.voteId ?? null, replayed: r.ok.replayed } } : r;
  },

  async getResults(gateway, token, pollId) {
    const r = await attempt(() => clients(gateway, token).poll.getResults({ pollId }));
    if (!r.ok) return r;
    const votes = {};
    for (const o of r.ok.results) votes[o.text] = Number(o.votes);
    return { ok: { total: Number(r.ok.totalVotes), votes } };
  },

  /**
   * Opens WatchPoll (server streaming) and keeps reading it in the
   * background. Retries while notification answers NOT_FOUND (it has not
   * seen the poll's first event yet); returns once the first update arrived.
   */
  async watchPoll(gateway, token, pollId) {
    const id = nextWatch++;
    const w = { updates: [], error: null, ended: false, abort: new AbortController(), waiters: [] };
    watches.set(id, w);
    const deadline = Date.now() + WATCH_WAIT_MS;
    const notify = () => {
      for (const f of w.waiters.splice(0)) f();
    };
    const pump = async () => {
      for (;;) {
        try {
          const stream = clients(gateway, token).notification.watchPoll(
            { pollId, resumeAfterSequence: 0n },
            { signal: w.abort.signal, timeoutMs: 0 },
          );
          for await (const msg of stream) {
            w.updates.push({ snapshot: msg.snapshot, ...plainCounts(msg.update) });
            notify();
          }
          w.ended = true;
          notify();
          return;
        } catch (e) {
          const err = reported(e);
          if (err.code === Code[Code.NotFound] && w.updates.length === 0 && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, WATCH_RETRY_MS));
            continue;
          }
          w.error = w.abort.signal.aborted ? null : err;
          w.ended = true;
          notify();
          return;
        }
      }
    };
    pump();
    const first = await this.waitForUpdate(id, (u) => u !== undefined, 0);
    return first.error ? first : { ok: { watch: id, first: first.ok } };
  },

  /**
   * Waits until watch `id` has an update after index `from` that satisfies
   * `pred` (a function, or a `{option: votes}` object of counts to reach).
   */
  async waitForUpdate(id, pred, from) {
    const w = watches.get(id);
    const test =
      typeof pred === "function"
        ? pred
        : (u) => Object.entries(pred).every(([k, v]) => u.counts[k] === v);
    const deadline = Date.now() + WATCH_WAIT_MS;
    for (;;) {
      const i = w.updates.findIndex((u, n) => n >= from && test(u));
      if (i >= 0) return { ok: { index: i, update: w.updates[i], seen: w.updates.length } };
      if (w.ended) return { error: w.error ?? { code: null, message: "stream ended" }, updates: w.updates };
      const left = deadline - Date.now();
      if (left <= 0) return { error: { code: null, message: "no such update in time" }, updates: w.updates };
      await new Promise((r) => {
        w.waiters.push(r);
        setTimeout(r, left);
      });
    }
  },

  watchUpdates(id) {
    return watches.get(id).updates;
  },

  closeWatch(id) {
    watches.get(id).abort.abort();
  },
};

window.tallyReady = true;
