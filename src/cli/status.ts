/** `rdzv status`: the rendezvous runs a store holds, as a table or JSON, once or watching. */

import { connect } from "node:net";
import { parseArgs } from "node:util";
import {
  AbortedError,
  ErrorCode,
  hasErrorCode,
  InvalidArgumentError,
  RendezvousAuthError,
  RendezvousConnectionError,
  type RendezvousError,
} from "../errors.js";
import { parseRendezvousEndpoint } from "../rendezvous/endpoint.js";
import { inspectRun, inspectRunList } from "../server/inspector.js";
import { storeKeyReader } from "../server/key-reader.js";
import type { RunView, TimelineEvent } from "../server/run-view.js";
import { formatRuns, PolledKeepAlives } from "../server/status-text.js";
import { formatHostPort } from "../store/tcp/address.js";
import { TCPStore } from "../store/tcp/client.js";
import { Dialect } from "../store/tcp/protocol.js";
import { intOption, UsageError } from "./args.js";

export const STATUS_HELP = `Usage: rdzv status [options]

Shows the rendezvous runs a store holds: each run's round, state (joining, last call, complete, closed),
participants with rank, address and keep-alive, the wait list and deadlines. Reads the store itself
with rdzv's TCPStore client (any server holding the state: rdzv serve, an rdzv run --standalone agent,
PyTorch's own TCPStore server) and never writes to it. Runs of rdzv's dynamic rendezvous and of PyTorch's
own handler are both shown: 1000 runs at most, and without --run-id about 100,000 nodes in all (a list
that stops short says so).

Options:
  --endpoint HOST:PORT     the store (default 127.0.0.1:29400)
  --run-id ID              only this run (required where the server cannot list keys: PyTorch < 2.10)
  --json                   print JSON: {"endpoint", "now", "runs": [RunView...]} (indented; with --watch
                           one line per refresh; "total" and "truncated": true when the list stops at
                           1000 runs)
  --watch                  refresh until interrupted; keep-alive ages come from counters seen moving
  --interval-ms N          refresh period of --watch (default 1000)
  --http URL               read rdzv serve's dashboard API at URL instead (adds each run's timeline)
  --dialect v1|v2          wire protocol (default v2; v1 for PyTorch <= 2.0 servers)
  --timeout-ms N           give up connecting or reading after N ms (default 10000; 3 s at most for a
                           server that accepts connections but fails the store's handshake)
  -h, --help               show this help
`;

/** What one refresh shows. */
interface Snapshot {
  runs: RunView[];
  timelines: Record<string, TimelineEvent[]>;
  /** Runs the store holds, when `runs` shows fewer (a capped list). */
  total?: number;
}

interface Source {
  readonly endpoint: string;
  /** Connects (or checks the address); rejects with a message that says what is there, if anything. */
  open(): Promise<void>;
  read(runId: string | undefined): Promise<Snapshot>;
  /** Closes, also aborting an `open` or `read` in progress. */
  close(): Promise<void>;
}

interface ShowOptions {
  readonly runId: string | undefined;
  readonly json: boolean;
  readonly watch: boolean;
  readonly http: boolean;
  readonly intervalMs: number;
}

/** Distinct runs among `views` (a run id in both layouts counts twice, as the run list does). */
function countRuns(views: readonly RunView[]): number {
  return new Set(views.map((v) => `${v.source}:${v.runId}`)).size;
}

/** A watched read with no answer for this long is shown as such (below the last frame, which is stale). */
const STALL_NOTICE_MS = 2000;
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Runs `rdzv status`; resolves with the exit code: 1 when `--run-id` names no run, 130 / 143 when SIGINT /
 * SIGTERM ended it (at once, also while connecting or reading).
 */
export async function statusCommand(
  argv: readonly string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      endpoint: { type: "string" },
      "run-id": { type: "string" },
      json: { type: "boolean" },
      watch: { type: "boolean" },
      "interval-ms": { type: "string" },
      http: { type: "string" },
      dialect: { type: "string" },
      "timeout-ms": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    out.write(STATUS_HELP);
    return 0;
  }
  const timeoutMs = intOption("timeout-ms", values["timeout-ms"], 10_000, 1, 3_600_000);
  const intervalMs = intOption("interval-ms", values["interval-ms"], 1000, 50, 3_600_000);
  const runId = values["run-id"];
  if (runId === "") throw new UsageError("--run-id must not be empty");
  if (values.http !== undefined && (values.endpoint !== undefined || values.dialect !== undefined)) {
    throw new UsageError("--http reads the dashboard API: --endpoint and --dialect do not apply");
  }
  const source =
    values.http !== undefined
      ? httpSource(values.http, timeoutMs, process.env.RDZV_AUTH_TOKEN)
      : storeSource(values.endpoint ?? "127.0.0.1:29400", values.dialect, timeoutMs);
  const stop = new AbortController();
  let signalled = "SIGINT";
  const onSignal = (signal: NodeJS.Signals): void => {
    if (!stop.signal.aborted) signalled = signal;
    stop.abort();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  // What is pending when a signal comes is abandoned, and closing the source ends it.
  const stopped = new Promise<undefined>((resolve) =>
    stop.signal.addEventListener("abort", () => resolve(undefined), { once: true }),
  );
  const options = {
    runId,
    json: values.json === true,
    watch: values.watch === true,
    http: values.http !== undefined,
  };
  try {
    if ((await Promise.race([source.open().then(() => true), stopped])) === undefined)
      return SIGNAL_EXIT[signalled]!;
    const code = await Promise.race([
      show(source, { ...options, intervalMs }, stop.signal, out, err),
      stopped,
    ]);
    return code ?? SIGNAL_EXIT[signalled]!;
  } catch (e) {
    if (stop.signal.aborted) return SIGNAL_EXIT[signalled]!;
    throw e;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await source.close();
  }
}

/** Reads and prints once, or until `stop` with --watch; resolves with the exit code. */
async function show(
  source: Source,
  options: ShowOptions,
  stop: AbortSignal,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream,
): Promise<number | undefined> {
  const { runId, json, watch } = options;
  const clock = new PolledKeepAlives();
  const tty = (out as { isTTY?: boolean }).isTTY === true;
  // Notes about the store (not answering, unreachable) go where a reader looks: below the frame, or to
  // stderr beside JSON lines.
  const note = (text: string): void => {
    (json ? err : out).write(`${json ? "rdzv status: " : ""}${text}\n`);
  };
  for (;;) {
    let snap: Snapshot;
    try {
      snap = watch ? await readWatched(source, runId, note) : await source.read(runId);
    } catch (e) {
      if (!watch || stop.aborted || !transient(e)) throw e;
      note(`${new Date().toISOString()}  cannot read ${source.endpoint}: ${messageOf(e)}; retrying`);
      if (!(await sleep(options.intervalMs, stop))) return undefined;
      continue;
    }
    const now = Date.now();
    const missing = runId !== undefined && snap.runs.length === 0;
    if (watch && !options.http) clock.stamp(snap.runs, now);
    const capped =
      snap.total === undefined
        ? ""
        : `showing ${countRuns(snap.runs)} of ${snap.total} runs (capped): name one with --run-id\n`;
    if (json) {
      const doc: Record<string, unknown> = { endpoint: source.endpoint, now, runs: snap.runs };
      if (snap.total !== undefined) Object.assign(doc, { total: snap.total, truncated: true });
      if (options.http) doc.timelines = snap.timelines;
      out.write(`${JSON.stringify(doc, null, watch ? undefined : 2)}\n`);
    } else if (watch) {
      const clear = tty ? "\x1b[2J\x1b[H" : "";
      const body = missing
        ? `no run ${JSON.stringify(runId)} at ${source.endpoint} (yet)\n`
        : formatRuns(snap.runs, now, snap.timelines) + capped;
      out.write(`${clear}${new Date(now).toISOString()}  ${source.endpoint}\n${body}\n`);
    } else if (!missing) {
      out.write(formatRuns(snap.runs, now, snap.timelines) + capped);
    }
    if (!watch) {
      if (!missing) return 0;
      err.write(`rdzv status: no run ${JSON.stringify(runId)} at ${source.endpoint}\n`);
      return 1;
    }
    if (!(await sleep(options.intervalMs, stop))) return undefined;
  }
}

/** A read that says so through `note` once it has had no answer for STALL_NOTICE_MS. */
async function readWatched(
  source: Source,
  runId: string | undefined,
  note: (text: string) => void,
): Promise<Snapshot> {
  const since = Date.now();
  const timer = setTimeout(() => {
    note(
      `${new Date().toISOString()}  no answer from ${source.endpoint} for ${Math.round((Date.now() - since) / 1000)} s: ` +
        "the server may be down or unreachable; the runs above are from before (still trying; Ctrl-C stops)",
    );
  }, STALL_NOTICE_MS);
  try {
    return await source.read(runId);
  } finally {
    clearTimeout(timer);
  }
}

/** Errors a later refresh may not meet: the store could not be reached or did not answer in time. */
function transient(e: unknown): boolean {
  return hasErrorCode(e, ErrorCode.Connection) || hasErrorCode(e, ErrorCode.Timeout);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function storeSource(endpoint: string, dialect: string | undefined, timeoutMs: number): Source {
  if (dialect !== undefined && dialect !== Dialect.V1 && dialect !== Dialect.V2) {
    throw new UsageError(`--dialect must be v1 or v2, got ${JSON.stringify(dialect)}`);
  }
  let where: { host: string; port: number };
  try {
    where = parseRendezvousEndpoint(endpoint);
  } catch (err) {
    throw new UsageError(`--endpoint: ${err instanceof Error ? err.message : String(err)}`);
  }
  const peer = formatHostPort(where.host, where.port);
  const store = new TCPStore({
    host: where.host,
    port: where.port,
    timeoutMs,
    // Something accepted the connection (see `open`): a store that answers does so at once, so a
    // handshake failing for seconds is the wrong server or dialect, not a slow one.
    connectTimeoutMs: Math.min(timeoutMs, CONNECT_RETRY_MS),
    ...(dialect === undefined ? {} : { dialect: dialect as Dialect }),
  });
  const reader = storeKeyReader(store);
  const call = { timeoutMs };
  const closing = new AbortController();
  return {
    endpoint: peer,
    async open() {
      await checkListening(where.host, where.port, Math.min(timeoutMs, CONNECT_RETRY_MS), closing.signal);
      try {
        await store.connect();
      } catch (err) {
        // With TLS (RDZV_TLS_CA) the client's own error already says that the server must speak TLS too.
        if (store.closed || !hasErrorCode(err, ErrorCode.Connection) || dialect === Dialect.V1 || store.tls)
          throw err;
        throw new RendezvousConnectionError(
          `${messageOf(err)}. Something listens on ${peer} but did not answer as a TCPStore server with ` +
            "the v2 protocol: a PyTorch <= 2.0 server needs --dialect v1",
          { cause: err },
        );
      }
    },
    async read(runId) {
      if (runId !== undefined) return { runs: await inspectRun(reader, runId, call), timelines: {} };
      const list = await inspectRunList(reader, call);
      return { runs: list.views, timelines: {}, ...(list.truncated ? { total: list.total } : {}) };
    },
    close: () => {
      closing.abort();
      return store.close();
    },
  };
}

/** How long the first connect retries once something accepted a TCP connection. */
const CONNECT_RETRY_MS = 3000;

/**
 * Fails at once, saying so, when nothing listens on host:port (refused) or the host cannot be found or
 * reached; resolves when a TCP connection is accepted, and also when none is within `timeoutMs` (the
 * store's own connect then tries for its whole timeout). Rejects with `AbortedError` when `signal` fires.
 */
function checkListening(host: string, port: number, timeoutMs: number, signal: AbortSignal): Promise<void> {
  const peer = formatHostPort(host, port);
  return new Promise<void>((resolve, reject) => {
    const socket = connect({ host, port });
    const done = (err?: RendezvousError): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      socket.destroy();
      if (err === undefined) resolve();
      else reject(err);
    };
    const onAbort = (): void => done(new AbortedError("closed while connecting"));
    signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => done(), timeoutMs);
    socket.once("connect", () => done());
    socket.once("error", (e: NodeJS.ErrnoException) => {
      const why =
        e.code === "ECONNREFUSED"
          ? `nothing listens on ${peer} (connection refused): is the store server (rdzv serve, or the agent hosting it) running there?`
          : e.code === "ENOTFOUND" || e.code === "EAI_AGAIN"
            ? `cannot resolve the host of ${peer} (${e.code})`
            : `cannot reach ${peer}: ${e.code ?? e.message}`;
      done(new RendezvousConnectionError(why, { cause: e }));
    });
  });
}

/**
 * Reads the dashboard API at `base`. `authToken` (RDZV_AUTH_TOKEN, the store's token) goes with every request
 * as a Bearer token: a dashboard listening beyond loopback beside a store with a token requires it.
 */
function httpSource(base: string, timeoutMs: number, authToken: string | undefined): Source {
  let url: URL;
  try {
    url = new URL(base.endsWith("/") ? base : `${base}/`);
  } catch {
    throw new UsageError(`--http must be a URL such as http://127.0.0.1:29401, got ${JSON.stringify(base)}`);
  }
  const closing = new AbortController();
  /** The JSON of `path`, or undefined for rdzv's 404 answer (no such run). */
  const get = async (path: string): Promise<Record<string, unknown> | undefined> => {
    const href = new URL(path, url).href;
    let res: Response;
    try {
      const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), closing.signal]);
      const headers: Record<string, string> = authToken ? { authorization: `Bearer ${authToken}` } : {};
      res = await fetch(href, { signal, headers });
    } catch (err) {
      throw new RendezvousConnectionError(`cannot read ${href}: ${fetchFailure(err, url, timeoutMs)}`, {
        cause: err,
      });
    }
    const notDashboard = (what: string): InvalidArgumentError =>
      new InvalidArgumentError(
        `${url.href} is not an rdzv dashboard (rdzv serve --http-port): GET ${href} answered ${what}`,
      );
    const type = res.headers.get("content-type") ?? "";
    if (!type.startsWith("application/json")) {
      await res.body?.cancel();
      throw notDashboard(`${res.status} ${type || "without a content type"}`);
    }
    const body = (await res.json().catch(() => undefined)) as Record<string, unknown> | undefined;
    if (typeof body !== "object" || body === null) throw notDashboard(`${res.status} with no JSON object`);
    if (res.status === 404 && typeof body.error === "string") return undefined;
    if (res.status === 401) {
      throw new RendezvousAuthError(
        authToken
          ? `${href} refused the token in RDZV_AUTH_TOKEN (401): give the token of the dashboard's store`
          : `${href} requires the store's auth token (401): set RDZV_AUTH_TOKEN`,
      );
    }
    if (!res.ok) throw new InvalidArgumentError(`${href} answered ${res.status}: ${JSON.stringify(body)}`);
    if (!Array.isArray(body.runs)) throw notDashboard(`${res.status} with no list of runs`);
    return body;
  };
  const detail = async (id: string, source?: string): Promise<Snapshot> => {
    const q = source === undefined ? "" : `?source=${source}`;
    const body = await get(`api/runs/${encodeURIComponent(id)}${q}`);
    if (body === undefined) return { runs: [], timelines: {} };
    const timeline = Array.isArray(body.timeline) ? (body.timeline as TimelineEvent[]) : [];
    return { runs: body.runs as RunView[], timelines: { [id]: timeline } };
  };
  return {
    endpoint: url.href,
    open: async () => {},
    async read(runId) {
      if (runId !== undefined) return detail(runId);
      const list = await get("api/runs");
      if (list === undefined) throw new InvalidArgumentError(`${url.href}api/runs answered 404`);
      const snap: Snapshot = { runs: [], timelines: {} };
      if (list.truncated === true && typeof list.total === "number") snap.total = list.total;
      for (const r of list.runs as { runId: string; source: string }[]) {
        const one = await detail(r.runId, r.source);
        snap.runs.push(...one.runs);
        Object.assign(snap.timelines, one.timelines);
      }
      return snap;
    },
    close: async () => closing.abort(),
  };
}

/** Why a fetch failed, from undici's `cause` (its own message is only "fetch failed"). */
function fetchFailure(err: unknown, url: URL, timeoutMs: number): string {
  const e = err as { name?: string; cause?: { code?: string; message?: string } };
  if (e.name === "TimeoutError") return `no answer within ${timeoutMs} ms`;
  const code = e.cause?.code;
  if (code === "ECONNREFUSED") return `nothing listens on ${url.host} (connection refused)`;
  return code ?? e.cause?.message ?? messageOf(err);
}

/** Resolves true after `ms`, false at once when `signal` fires. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
