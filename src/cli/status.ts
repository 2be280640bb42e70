/** `rdzv status`: the rendezvous runs a store holds, as a table or JSON, once or watching. */

import { parseArgs } from "node:util";
import { ErrorCode, hasErrorCode, InvalidArgumentError, RendezvousConnectionError } from "../errors.js";
import { parseRendezvousEndpoint } from "../rendezvous/endpoint.js";
import { inspectAllRuns, inspectRun } from "../server/inspector.js";
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
own handler are both shown.

Options:
  --endpoint HOST:PORT     the store (default 127.0.0.1:29400)
  --run-id ID              only this run (required where the server cannot list keys: PyTorch < 2.10)
  --json                   print JSON: {"endpoint", "now", "runs": [RunView...]} (one line per refresh)
  --watch                  refresh until interrupted; keep-alive ages come from counters seen moving
  --interval-ms N          refresh period of --watch (default 1000)
  --http URL               read rdzv serve's dashboard API at URL instead (adds each run's timeline)
  --dialect v1|v2          wire protocol (default v2; v1 for PyTorch <= 2.0 servers)
  --timeout-ms N           give up connecting or reading after N ms (default 10000)
  -h, --help               show this help
`;

/** What one refresh shows. */
interface Snapshot {
  runs: RunView[];
  timelines: Record<string, TimelineEvent[]>;
}

interface Source {
  readonly endpoint: string;
  /** Connects (a no-op for the dashboard API). */
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
      ? httpSource(values.http, timeoutMs)
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
    if (watch && !options.http) clock.stamp(snap.runs, now);
    if (json) {
      const doc: Record<string, unknown> = { endpoint: source.endpoint, now, runs: snap.runs };
      if (options.http) doc.timelines = snap.timelines;
      out.write(`${JSON.stringify(doc, null, watch ? undefined : 2)}\n`);
    } else {
      const clear = watch && tty ? "\x1b[2J\x1b[H" : "";
      const stamp = watch ? `${new Date(now).toISOString()}  ${source.endpoint}\n` : "";
      out.write(`${clear}${stamp}${formatRuns(snap.runs, now, snap.timelines)}${watch ? "\n" : ""}`);
    }
    if (!watch) {
      if (runId !== undefined && snap.runs.length === 0) {
        err.write(`rdzv status: no run ${JSON.stringify(runId)} at ${source.endpoint}\n`);
        return 1;
      }
      return 0;
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
  const store = new TCPStore({
    host: where.host,
    port: where.port,
    timeoutMs,
    connectTimeoutMs: timeoutMs,
    ...(dialect === undefined ? {} : { dialect: dialect as Dialect }),
  });
  const reader = storeKeyReader(store);
  const call = { timeoutMs };
  return {
    endpoint: formatHostPort(where.host, where.port),
    open: () => store.connect(),
    async read(runId) {
      const runs =
        runId === undefined ? await inspectAllRuns(reader, call) : await inspectRun(reader, runId, call);
      return { runs, timelines: {} };
    },
    close: () => store.close(),
  };
}

function httpSource(base: string, timeoutMs: number): Source {
  let url: URL;
  try {
    url = new URL(base.endsWith("/") ? base : `${base}/`);
  } catch {
    throw new UsageError(`--http must be a URL such as http://127.0.0.1:29401, got ${JSON.stringify(base)}`);
  }
  const closing = new AbortController();
  const get = async (path: string): Promise<unknown> => {
    let res: Response;
    try {
      const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), closing.signal]);
      res = await fetch(new URL(path, url), { signal });
    } catch (err) {
      throw new RendezvousConnectionError(`cannot read ${new URL(path, url).href}: ${String(err)}`, {
        cause: err,
      });
    }
    if (res.status === 404) return undefined;
    if (!res.ok)
      throw new InvalidArgumentError(
        `${new URL(path, url).href} answered ${res.status}: ${await res.text()}`,
      );
    return res.json();
  };
  const detail = async (id: string, source?: string): Promise<Snapshot> => {
    const q = source === undefined ? "" : `?source=${source}`;
    const body = (await get(`api/runs/${encodeURIComponent(id)}${q}`)) as
      | { runs: RunView[]; timeline: TimelineEvent[] }
      | undefined;
    return body === undefined
      ? { runs: [], timelines: {} }
      : { runs: body.runs, timelines: { [id]: body.timeline } };
  };
  return {
    endpoint: url.href,
    open: async () => {},
    async read(runId) {
      if (runId !== undefined) return detail(runId);
      const list = (await get("api/runs")) as { runs: { runId: string; source: string }[] };
      const snap: Snapshot = { runs: [], timelines: {} };
      for (const r of list.runs) {
        const one = await detail(r.runId, r.source);
        snap.runs.push(...one.runs);
        Object.assign(snap.timelines, one.timelines);
      }
      return snap;
    },
    close: async () => closing.abort(),
  };
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
