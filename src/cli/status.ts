/** `rdzv status`: the rendezvous runs a store holds, as a table or JSON, once or watching. */

import { parseArgs } from "node:util";
import { InvalidArgumentError, RendezvousConnectionError } from "../errors.js";
import { parseRendezvousEndpoint } from "../rendezvous/endpoint.js";
import { inspectAllRuns, inspectRun } from "../server/inspector.js";
import { storeKeyReader } from "../server/key-reader.js";
import type { RunView, TimelineEvent } from "../server/run-view.js";
import { formatRuns, PolledKeepAlives } from "../server/status-text.js";
import { formatHostPort } from "../store/tcp/address.js";
import { connectTCPStore } from "../store/tcp/client.js";
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
  read(runId: string | undefined): Promise<Snapshot>;
  close(): Promise<void>;
}

/** Runs `rdzv status`; resolves with the exit code (1 when `--run-id` names no run). */
export async function statusCommand(
  argv: readonly string[],
  out: NodeJS.WritableStream = process.stdout,
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
      : await storeSource(values.endpoint ?? "127.0.0.1:29400", values.dialect, timeoutMs);
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const clock = new PolledKeepAlives();
  try {
    for (;;) {
      const snap = await source.read(runId);
      const now = Date.now();
      if (values.watch && values.http === undefined) clock.stamp(snap.runs, now);
      if (values.json) {
        const doc: Record<string, unknown> = { endpoint: source.endpoint, now, runs: snap.runs };
        if (values.http !== undefined) doc.timelines = snap.timelines;
        out.write(`${JSON.stringify(doc, null, values.watch ? undefined : 2)}\n`);
      } else {
        const clear = values.watch && (out as { isTTY?: boolean }).isTTY === true ? "\x1b[2J\x1b[H" : "";
        const stamp = values.watch ? `${new Date(now).toISOString()}  ${source.endpoint}\n` : "";
        out.write(`${clear}${stamp}${formatRuns(snap.runs, now, snap.timelines)}${values.watch ? "\n" : ""}`);
      }
      if (!values.watch) {
        if (runId !== undefined && snap.runs.length === 0) {
          process.stderr.write(`rdzv status: no run ${JSON.stringify(runId)} at ${source.endpoint}\n`);
          return 1;
        }
        return 0;
      }
      if (!(await sleep(intervalMs, stop.signal))) return 0;
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await source.close();
  }
}

async function storeSource(
  endpoint: string,
  dialect: string | undefined,
  timeoutMs: number,
): Promise<Source> {
  if (dialect !== undefined && dialect !== Dialect.V1 && dialect !== Dialect.V2) {
    throw new UsageError(`--dialect must be v1 or v2, got ${JSON.stringify(dialect)}`);
  }
  let where: { host: string; port: number };
  try {
    where = parseRendezvousEndpoint(endpoint);
  } catch (err) {
    throw new UsageError(`--endpoint: ${err instanceof Error ? err.message : String(err)}`);
  }
  const store = await connectTCPStore({
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
  const get = async (path: string): Promise<unknown> => {
    let res: Response;
    try {
      res = await fetch(new URL(path, url), { signal: AbortSignal.timeout(timeoutMs) });
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
    close: async () => {},
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
