/** `rdzv run`: the elastic launcher (torchrun's options in rdzv's CLI style); the work is in src/agent/. */

import { randomUUID } from "node:crypto";
import { accessSync, constants as fsConstants, readdirSync } from "node:fs";
import { availableParallelism, constants as osConstants } from "node:os";
import { parseArgs } from "node:util";
import { createElasticAgent, type ElasticAgent } from "../agent/agent.js";
import { firstLine } from "../agent/error-file.js";
import { createWorkerOutput } from "../agent/output.js";
import { type AgentResult, describeExit, exitCodeOf, formatFailure } from "../agent/policy.js";
import { formatStatus, StatusLine } from "../agent/status-line.js";
import { createConsoleLogger, LogLevel } from "../log.js";
import { registerBuiltinRendezvousHandlers } from "../rendezvous/builtins.js";
import { formatUnreadConfigKey, unreadConfigKeys } from "../rendezvous/config-keys.js";
import { DynamicRendezvousHandler, pytorchAgentsNote } from "../rendezvous/dynamic-handler.js";
import { formatEndpoint, parseRendezvousEndpoint } from "../rendezvous/endpoint.js";
import { parseRendezvousConfig, resolveRendezvousSettings } from "../rendezvous/parameters.js";
import { createRendezvousHandler } from "../rendezvous/registry.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import { intOption, UsageError } from "./args.js";

export const RUN_HELP = `Usage: rdzv run [options] -- COMMAND [ARGS...]

Joins the job's rendezvous, then runs COMMAND as --nproc-per-node workers on this node with torchrun's
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ..., plus RDZV_* variables; PYTHONUNBUFFERED=1
and NCCL's async error handling unless set), and restarts them elastically: after a worker failure (up to
--max-restarts for the whole job), when a node leaves or dies, and when new nodes wait to join, until some
node's workers all succeeded. Workers share the agent's stdin. Exits 0 when every worker of every node
succeeded.

Rendezvous:
  --nnodes MIN:MAX|N         nodes of the job (default 1:1)
  --nproc-per-node N         workers on this node (default 1): a number, cpu (one per CPU), gpu (one
                             per NVIDIA GPU) or auto (per GPU when there are any, else per CPU)
  --rdzv-backend NAME        c10d (default), etcd (or etcd-v2), redis, static, or another registered one
  --rdzv-endpoint HOST:PORT  the rendezvous store (default localhost:29400); with c10d, the node whose
                             address matches HOST hosts it unless 'rdzv serve' already does
  --rdzv-id ID               run id shared by the job's nodes (default "none")
  --rdzv-conf K=V,...        rendezvous settings: join_timeout, last_call_timeout, close_timeout,
                             keep_alive_interval, keep_alive_max_attempt, read_timeout, is_host, ...
                             (a key the backend does not read is ignored, with a warning);
                             store_unreachable_timeout: how long workers run on while the store
                             cannot be reached before rdzv run stops them and exits 1 (default: the
                             larger of 300 and join_timeout)
  --node-rank N              this node's rank (static backend)
  --local-addr ADDR          the address other nodes reach this node at (default: the hostname)
  --standalone               one machine, no set-up: an embedded store on a free loopback port, a random
                             run id, c10d, one node (no --rdzv-*/--nnodes other than 1)

Workers:
  --max-restarts N           failure restarts allowed for the whole job, across nodes (default 0)
  --monitor-interval SECS    how often the rank 0 node looks for nodes waiting to join (default 1)
  --stop-timeout SECS        grace before SIGKILL when stopping workers (after SIGTERM, or the signal
                             that stopped rdzv run; default 30)
  --exit-barrier-timeout SECS  how long finished nodes wait for the others (default 300)
  --role NAME                role name (ROLE_NAME, default "default")
  --close-on-exit            close the rendezvous for every node when this one exits (also on a signal)

Output:
  --[no-]prefix-output       prefix worker lines with [rank<N>]: (default: on when stdout is a terminal)
  --[no-]status              live status line on a terminal (default on; never drawn elsewhere)
  --log-level LEVEL          debug, info, warn or error (default info); the rendezvous backend's and
                             its store client's own lines show from warn, all of them at debug
  -h, --help                 show this help

Error files: as torchrun, each worker gets TORCHELASTIC_ERROR_FILE, a file of its own in a private
folder (mode 0700) under $TMPDIR or /tmp: <folder>/attempt_<restarts>/<local rank>/error.json, emptied
before each start and removed when rdzv run exits (the report carries what it said). A worker whose main
is decorated with PyTorch's @record writes its exception there, and the failure report shows it: the
error, its time and traceback of the earliest error among the failed workers (torchrun's root cause), on
every node (the traceback cut to 32 KiB for the others). A file that is malformed or past 1 MiB is noted
and the stderr tail shown. rdzv run's own TORCHELASTIC_ERROR_FILE (a scheduler's) is not passed on: when
the job fails, its root cause is written there in PyTorch's format.

SIGINT/SIGTERM/SIGHUP/SIGQUIT stop the workers (the same signal, as torchrun passes it on, so Ctrl-C is a
KeyboardInterrupt in Python workers; SIGKILL after --stop-timeout) and leave the rendezvous; a second one
kills the workers at once and exits. Exit status: 0 success, 1 failure,
128+N on signal N.
`;

const OPTIONS = {
  nnodes: { type: "string" },
  "nproc-per-node": { type: "string" },
  "rdzv-backend": { type: "string" },
  "rdzv-endpoint": { type: "string" },
  "rdzv-id": { type: "string" },
  "rdzv-conf": { type: "string" },
  "node-rank": { type: "string" },
  "local-addr": { type: "string" },
  standalone: { type: "boolean" },
  "max-restarts": { type: "string" },
  "monitor-interval": { type: "string" },
  "stop-timeout": { type: "string" },
  "exit-barrier-timeout": { type: "string" },
  role: { type: "string" },
  "close-on-exit": { type: "boolean" },
  "prefix-output": { type: "boolean" },
  status: { type: "boolean" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

const LEVELS = new Set<string>(Object.values(LogLevel));
const LEVEL_ORDER: Record<string, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Parsed `rdzv run` arguments. */
export interface RunArgs {
  readonly minNodes: number;
  readonly maxNodes: number;
  readonly nprocPerNode: number;
  readonly backend: string;
  readonly endpoint: string;
  readonly runId: string;
  readonly config: Record<string, string>;
  readonly localAddr: string | undefined;
  readonly standalone: boolean;
  readonly maxRestarts: number;
  readonly monitorIntervalMs: number;
  readonly stopTimeoutMs: number;
  readonly exitBarrierTimeoutMs: number;
  readonly role: string;
  readonly closeOnExit: boolean;
  readonly prefixOutput: boolean | undefined;
  readonly status: boolean;
  readonly logLevel: LogLevel;
  readonly command: string;
  readonly args: readonly string[];
}

/**
 * Splits `argv` into options and the worker command: at the first `--`, else at the first token that is
 * neither an option nor an option's value (torchrun's `torchrun [options] script args` form).
 */
export function splitCommand(argv: readonly string[]): { options: string[]; command: string[] } {
  const dash = argv.indexOf("--");
  if (dash >= 0) return { options: argv.slice(0, dash).map(dashed), command: argv.slice(dash + 1) };
  const takesValue = new Set(
    Object.entries(OPTIONS)
      .filter(([, o]) => o.type === "string")
      .map(([name]) => `--${name}`),
  );
  const options: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (!token.startsWith("-")) return { options, command: argv.slice(i) };
    const option = dashed(token);
    options.push(option);
    if (takesValue.has(option) && i + 1 < argv.length) options.push(argv[++i]!);
  }
  return { options, command: [] };
}

/** An option as rdzv spells it: torchrun also takes `--nproc_per_node` for `--nproc-per-node`, and so do we. */
function dashed(token: string): string {
  if (!token.startsWith("--")) return token;
  const eq = token.indexOf("=");
  const name = eq < 0 ? token : token.slice(0, eq);
  return name.replaceAll("_", "-") + (eq < 0 ? "" : token.slice(eq));
}

/** Where worker output goes, for the hints on torchrun's log-file options. */
const OUTPUT_GOES =
  "worker output goes to rdzv run's own stdout and stderr (each line prefixed with [rank<N>]: under --prefix-output, the default on a terminal)";

/** Writing worker output to files, as the shell does it. */
const TO_FILES =
  "to keep it in a file, redirect rdzv run's output (rdzv run ... 2>&1 | tee node.log), or each worker's in the command: " +
  "-- sh -c 'exec python3 train.py >\"out.$RANK.log\" 2>&1'";

/**
 * What to say to torchrun (2.x and 1.13) options rdzv run does not have, by their dashed spelling (short
 * options as themselves): what rdzv run does instead, or the rdzv run option that does the same.
 */
const TORCHRUN_HINTS: Record<string, string> = {
  "--log-dir": `rdzv run writes no log files: ${OUTPUT_GOES}; ${TO_FILES}`,
  "--redirects": `rdzv run writes no log files: ${OUTPUT_GOES}; ${TO_FILES}`,
  "-r": `rdzv run writes no log files: ${OUTPUT_GOES}; ${TO_FILES}`,
  "--tee": `rdzv run writes no log files: ${OUTPUT_GOES}; ${TO_FILES}`,
  "-t": `rdzv run writes no log files: ${OUTPUT_GOES}; ${TO_FILES}`,
  "--logs-specs": `rdzv run has no pluggable log handling: ${OUTPUT_GOES}`,
  "--local-ranks-filter":
    `rdzv run shows every worker's output (${OUTPUT_GOES}); to quiet the stdout of other local ranks, do it in the command: ` +
    "-- sh -c 'if [ \"$LOCAL_RANK\" = 0 ]; then exec python3 train.py; else exec python3 train.py >/dev/null; fi'",
  "--duplicate-stdout-filters": `rdzv run has no output filters: ${OUTPUT_GOES}; pipe it through grep or tee`,
  "--duplicate-stderr-filters": `rdzv run has no output filters: ${OUTPUT_GOES}; pipe it through grep or tee`,
  "--start-method":
    "workers are always processes running COMMAND (torchrun's start method only applies to Python functions, not to a script): drop it",
  "--event-log-handler":
    "rdzv run has no event log handlers: it reports its progress on stderr (more with --log-level debug)",
  "--shutdown-timeout": "write --stop-timeout SECS (the grace between SIGTERM and SIGKILL, default 30)",
  "--signals-to-handle":
    "rdzv run stops the workers on SIGINT, SIGTERM, SIGHUP and SIGQUIT and forwards no other signal (send others to the worker processes)",
  "--numa-binding":
    "rdzv run binds no CPUs or NUMA nodes: run the worker under numactl or taskset in the command, choosing by $LOCAL_RANK",
  "--virtual-local-rank":
    "rdzv run leaves CUDA_VISIBLE_DEVICES alone: to show each worker only its own GPU, write " +
    "-- sh -c 'exec env CUDA_VISIBLE_DEVICES=$LOCAL_RANK python3 train.py' (LOCAL_RANK stays the local rank, not 0)",
  "--use-env":
    "workers always get LOCAL_RANK in their environment (rdzv run never passes --local-rank, as torchrun)",
  "--master-addr":
    "give the rendezvous endpoint with --rdzv-endpoint HOST:PORT (torchrun's static form: --rdzv-backend static --rdzv-endpoint HOST:PORT --node-rank N)",
  "--master-port":
    "give the rendezvous endpoint with --rdzv-endpoint HOST:PORT (torchrun's static form: --rdzv-backend static --rdzv-endpoint HOST:PORT --node-rank N)",
  "-m": "COMMAND runs as given: write -- python3 -m MODULE",
  "--module": "COMMAND runs as given: write -- python3 -m MODULE",
  "--no-python": "COMMAND always runs as given (rdzv run never adds python)",
  "--run-path": "COMMAND runs as given: write -- python3 PATH",
};

/** `parseArgs` over `args`, turning an unknown torchrun option into a usage error that says what to do. */
function parseOptions(args: string[]) {
  try {
    return parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false, allowNegative: true });
  } catch (err) {
    if ((err as { code?: string }).code !== "ERR_PARSE_ARGS_UNKNOWN_OPTION") throw err;
    const token = args.find(
      (a) => a.startsWith("-") && !(a.replace(/^--?(no-)?/, "").split("=")[0]! in OPTIONS),
    );
    const name = token === undefined ? "" : optionName(token);
    const hint = TORCHRUN_HINTS[name];
    throw hint === undefined ? err : new UsageError(`${name} is not an rdzv run option: ${hint}`);
  }
}

/** The option a token names: `--log-dir` of `--log-dir=x`, `-t` of `-t3`. */
function optionName(token: string): string {
  return token.startsWith("--") ? token.split("=")[0]! : token.slice(0, 2);
}

/** Parses `rdzv run` arguments; throws `UsageError` naming the bad value. Returns `undefined` for --help. */
export function parseRunArgs(argv: readonly string[]): RunArgs | undefined {
  const split = splitCommand(argv);
  const { values: v } = parseOptions(split.options);
  if (v.help) return undefined;
  const [command, ...args] = split.command;
  if (command === undefined || command === "") throw new UsageError("missing the worker command (after --)");
  if (/\.py$/.test(command) && !isExecutable(command)) {
    throw new UsageError(
      `COMMAND runs as given and ${command} is not an executable: write -- python3 ${command}`,
    );
  }
  const standalone = v.standalone === true;
  if (standalone) {
    const clash = ["rdzv-backend", "rdzv-endpoint", "rdzv-id", "node-rank"].filter((k) => k in v);
    if (clash.length > 0)
      throw new UsageError(`--standalone sets its own rendezvous: drop --${clash.join(", --")}`);
  }
  const [minNodes, maxNodes] = parseNnodes(v.nnodes ?? "1:1");
  if (standalone && maxNodes !== 1)
    throw new UsageError(`--standalone runs one node, got --nnodes ${v.nnodes}`);
  const config = parseConfig(v["rdzv-conf"]);
  if (v["node-rank"] !== undefined)
    config.rank = String(intOption("node-rank", v["node-rank"], 0, 0, 1_000_000));
  const level = v["log-level"] ?? "info";
  if (!LEVELS.has(level)) {
    throw new UsageError(
      `--log-level must be one of ${[...LEVELS].join(", ")}, got ${JSON.stringify(level)}`,
    );
  }
  const role = v.role ?? "default";
  if (role.trim() === "") throw new UsageError("--role must not be empty");
  return {
    minNodes,
    maxNodes,
    nprocPerNode: parseNproc(v["nproc-per-node"]),
    backend: v["rdzv-backend"] ?? "c10d",
    endpoint: v["rdzv-endpoint"] ?? "",
    runId: v["rdzv-id"] ?? "none",
    config,
    localAddr: v["local-addr"] ?? (standalone ? "127.0.0.1" : undefined),
    standalone,
    maxRestarts: intOption("max-restarts", v["max-restarts"], 0, 0, 1_000_000),
    monitorIntervalMs: secondsOption("monitor-interval", v["monitor-interval"], 1),
    stopTimeoutMs: secondsOption("stop-timeout", v["stop-timeout"], 30, true),
    exitBarrierTimeoutMs: secondsOption("exit-barrier-timeout", v["exit-barrier-timeout"], 300),
    role,
    closeOnExit: v["close-on-exit"] === true,
    prefixOutput: v["prefix-output"],
    status: v.status !== false,
    logLevel: level as LogLevel,
    command,
    args,
  };
}

function parseNnodes(text: string): [number, number] {
  const m = /^\s*(\d+)\s*(?::\s*(\d+)\s*)?$/.exec(text);
  const min = Number(m?.[1]);
  const max = m?.[2] === undefined ? min : Number(m[2]);
  if (m === null || !Number.isSafeInteger(min) || min < 1 || !Number.isSafeInteger(max) || max < min) {
    throw new UsageError(`--nnodes must be N or MIN:MAX with 1 <= MIN <= MAX, got ${JSON.stringify(text)}`);
  }
  return [min, max];
}

/** torchrun's forms: a count, `cpu` (one per CPU), `gpu` (one per GPU), `auto` (per GPU if any, else per CPU). */
function parseNproc(text: string | undefined, gpus: () => number = nvidiaGpuCount): number {
  if (text === "cpu") return availableParallelism();
  if (text === "gpu" || text === "auto") {
    const n = gpus();
    if (n > 0) return n;
    if (text === "auto") return availableParallelism();
    throw new UsageError("--nproc-per-node gpu: no GPU found (no /proc/driver/nvidia/gpus entries)");
  }
  return intOption("nproc-per-node", text, 1, 1, 100_000);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** GPUs the NVIDIA driver lists (one folder each under /proc/driver/nvidia/gpus); 0 without the driver. */
function nvidiaGpuCount(): number {
  try {
    return readdirSync("/proc/driver/nvidia/gpus").length;
  } catch {
    return 0;
  }
}

function parseConfig(text: string | undefined): Record<string, string> {
  try {
    return text === undefined ? {} : parseRendezvousConfig(text);
  } catch (err) {
    throw new UsageError(`--rdzv-conf: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function secondsOption(name: string, text: string | undefined, fallback: number, zeroOk = false): number {
  if (text === undefined) return Math.round(fallback * 1000);
  const secs = /^\s*\d+(\.\d*)?\s*$|^\s*\.\d+\s*$/.test(text) ? Number(text) : Number.NaN;
  const ms = Math.round(secs * 1000);
  if (!Number.isFinite(secs) || ms > 2 ** 31 - 1 || (zeroOk ? ms < 0 : ms < 1)) {
    throw new UsageError(
      `--${name} must be a ${zeroOk ? "" : "positive "}number of seconds, got ${JSON.stringify(text)}`,
    );
  }
  return ms;
}

/** Runs `rdzv run`; resolves with the exit code. */
export async function runCommand(argv: readonly string[]): Promise<number> {
  const parsed = parseRunArgs(argv);
  if (parsed === undefined) {
    process.stdout.write(RUN_HELP);
    return 0;
  }
  registerBuiltinRendezvousHandlers();
  const status = new StatusLine(process.stderr, parsed.status);
  const say = (level: LogLevel, text: string): void => {
    if (LEVEL_ORDER[level]! < LEVEL_ORDER[parsed.logLevel]!) return;
    status.hide();
    process.stderr.write(`rdzv run: ${text}\n`);
  };
  // PyTorch ignores config keys its backend does not read, and so does rdzv: a misspelt key would go
  // unnoticed, so say so once, before joining; not an error, as PyTorch takes them.
  for (const unread of unreadConfigKeys(parsed.backend, Object.keys(parsed.config)))
    say("warn", `--rdzv-conf: ${formatUnreadConfigKey(unread)}`);
  const server = parsed.standalone ? await createTCPStoreServer({ host: "127.0.0.1", port: 0 }) : undefined;
  try {
    return await launch(parsed, server, status, say);
  } finally {
    status.clear();
    await server?.close();
  }
}

async function launch(
  a: RunArgs,
  server: TCPStoreServer | undefined,
  status: StatusLine,
  say: (level: LogLevel, text: string) => void,
): Promise<number> {
  const endpoint = server === undefined ? a.endpoint : formatEndpoint(server.host, server.port);
  const runId = server === undefined ? a.runId : randomUUID();
  const config = server === undefined ? a.config : { ...a.config, is_host: "false" };
  // Said before connecting: reaching an unreachable store takes the whole connect budget.
  say(
    "info",
    `joining run ${JSON.stringify(runId)} (${a.backend} at ${endpoint || "localhost"}, ${a.minNodes}:${a.maxNodes} nodes)`,
  );
  const params = {
    backend: a.backend,
    endpoint,
    runId,
    minNodes: a.minNodes,
    maxNodes: a.maxNodes,
    ...(a.localAddr === undefined ? {} : { localAddr: a.localAddr }),
    config,
  };
  const settings = resolveRendezvousSettings(params);
  const storeName = `${a.backend} at ${endpoint || "localhost"}`;
  const writeLine = (line: string): void => {
    status.hide();
    process.stderr.write(`${line}\n`);
  };
  // The handler's, its backend's and its store client's lines: warnings and errors (a lost store
  // connection, a lost etcd lease, a coordinator taken over), everything with --log-level debug. Their
  // info lines (a round completed) would repeat what rdzv run says itself.
  const handlerLogger = createConsoleLogger(
    a.logLevel === "debug" ? "debug" : moreSevere(a.logLevel, "warn"),
    writeLine,
  );
  const handler = await withConnectNotice(
    createRendezvousHandler(params, { logger: handlerLogger }),
    settings.readTimeoutMs,
    (afterMs) =>
      say(
        "info",
        `still connecting to the rendezvous store (${storeName}) after ${afterMs / 1000} s` +
          (a.backend === "c10d"
            ? ": waiting for rdzv serve, or the node that hosts the store, to listen there"
            : "") +
          ` (giving up after read_timeout, ${settings.readTimeoutMs / 1000} s)`,
      ),
  );
  const stop = new AbortController();
  const logger = createConsoleLogger(a.logLevel, writeLine);
  const tcpBackend = a.backend === "c10d" || a.backend === "static";
  const agent = createElasticAgent({
    handler,
    command: a.command,
    args: a.args,
    nprocPerNode: a.nprocPerNode,
    maxRestarts: a.maxRestarts,
    monitorIntervalMs: a.monitorIntervalMs,
    stopTimeoutMs: a.stopTimeoutMs,
    exitBarrierTimeoutMs: a.exitBarrierTimeoutMs,
    storeUnreachableTimeoutMs: settings.storeUnreachableTimeoutMs,
    storeName,
    role: a.role,
    closeOnExit: a.closeOnExit,
    ...(tcpBackend ? { storeEndpoint: parseRendezvousEndpoint(endpoint) } : {}),
    ...(a.localAddr === undefined ? {} : { localAddr: a.localAddr }),
    ...(process.env.TORCHELASTIC_ERROR_FILE ? { errorFile: process.env.TORCHELASTIC_ERROR_FILE } : {}),
    output: createWorkerOutput({
      prefix: a.prefixOutput ?? process.stdout.isTTY === true,
      stdout: process.stdout,
      stderr: process.stderr,
      beforeWrite: (lineOpen) => status.hide(lineOpen),
    }),
    signal: stop.signal,
    logger,
  });
  const torchrunJoined = (): Promise<boolean> =>
    handler instanceof DynamicRendezvousHandler
      ? handler.pytorchAgentsPresent({ timeoutMs: 2000 })
      : Promise.resolve(false);
  const stopReporting = reportProgress(agent, { ...a, runId }, status, say, torchrunJoined);
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stop.signal.aborted) {
      say("warn", `${signal} again: killing the workers and exiting`);
      agent.killWorkers();
      // Leaving the rendezvous may wait for an unreachable store: give the kill a moment, then go.
      setTimeout(() => process.exit(128 + (osConstants.signals[signal] ?? 0)), 1000).unref();
      return;
    }
    say("warn", `${signal}: stopping the workers (again to kill them at once and exit)`);
    stop.abort(signal);
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"] as const;
  for (const s of signals) process.on(s, onSignal);
  try {
    const result = await agent.run();
    report(result, runId, say);
    return exitCodeOf(result);
  } finally {
    stopReporting();
    for (const s of signals) process.off(s, onSignal);
  }
}

const CONNECT_NOTICE_MAX_MS = 10_000;

/** The more severe of two log levels. */
function moreSevere(a: LogLevel, b: LogLevel): LogLevel {
  return LEVEL_ORDER[a]! >= LEVEL_ORDER[b]! ? a : b;
}

/**
 * `connecting`, saying once (`notice`) that it still runs after a quarter of its budget `budgetMs`, at
 * most 10 s: an endpoint that nothing answers at (a node that hosts the store and has not started yet, a
 * mistyped host) would otherwise leave the user looking at "joining run" for the whole budget.
 */
async function withConnectNotice<T>(
  connecting: Promise<T>,
  budgetMs: number,
  notice: (afterMs: number) => void,
): Promise<T> {
  const afterMs = Math.min(CONNECT_NOTICE_MAX_MS, Math.round(budgetMs / 4));
  const timer = setTimeout(() => notice(afterMs), afterMs);
  try {
    return await connecting;
  } finally {
    clearTimeout(timer);
  }
}

function reportProgress(
  agent: ElasticAgent,
  a: RunArgs,
  status: StatusLine,
  say: (level: LogLevel, text: string) => void,
  torchrunJoined: () => Promise<boolean>,
): () => void {
  const base = { minNodes: a.minNodes, maxNodes: a.maxNodes, maxRestarts: a.maxRestarts };
  // A node that joins a run whose round is already complete (another job under the same run id and
  // endpoint, such as two jobs left at the default --rdzv-id "none") waits for the next round: say so.
  let waiting: NodeJS.Timeout | undefined;
  // Counts joins and starts: a note whose store check outlived its join is not said.
  let joins = 0;
  agent.on("joining", ({ restarts }) => {
    status.set(formatStatus({ ...base, phase: "joining", restarts }));
    clearTimeout(waiting);
    const join = ++joins;
    waiting = setTimeout(async () => {
      const still = `still waiting for a round of run ${JSON.stringify(a.runId)} to complete (${a.minNodes}:${a.maxNodes} nodes)`;
      const torchrun = await torchrunJoined();
      if (join !== joins) return;
      if (torchrun) return say("warn", `${still}: ${pytorchAgentsNote(a.runId)}`);
      say(
        "info",
        `${still}; if another job is running under this run id on this endpoint, this node waits for it: give each job its own --rdzv-id`,
      );
    }, WAITING_NOTE_MS);
    waiting.unref();
  });
  agent.on("started", (e) => {
    clearTimeout(waiting);
    joins++;
    const first = e.groupRank * a.nprocPerNode;
    say(
      "info",
      `round ${e.round}: node ${e.groupRank} of ${e.groupWorldSize}, ranks ${first}..${first + a.nprocPerNode - 1} ` +
        `of ${e.worldSize} started (restarts ${e.restarts}/${a.maxRestarts})`,
    );
    status.set(
      formatStatus({
        ...base,
        phase: "running",
        round: e.round,
        nodes: e.groupWorldSize,
        workers: e.pids.length,
        restarts: e.restarts,
      }),
    );
  });
  agent.on("workerFailed", ({ exit, error }) => {
    const message = error === undefined ? "" : `: ${firstLine(error.message)}`;
    say(
      "warn",
      `rank ${exit.rank} (local rank ${exit.localRank}, pid ${exit.pid ?? "none"}) failed: ${describeExit(exit)}${message}`,
    );
  });
  agent.on("restarting", ({ reason, restarts }) => {
    const why = RESTART_REASONS[reason];
    say("info", `restarting the workers: ${why}`);
    status.set(formatStatus({ ...base, phase: "restarting", reason: why, restarts }));
  });
  agent.on("finishing", ({ round, nodes }) => {
    // Alone in the round, there is no one to wait for: the result line follows at once.
    if (nodes > 1) say("info", "workers succeeded; waiting for the other nodes");
    status.set(formatStatus({ ...base, phase: "finishing", round, restarts: 0 }));
  });
  return () => clearTimeout(waiting);
}

/** How long a joining node waits before it says that it waits (and why it may). */
const WAITING_NOTE_MS = 15_000;

const RESTART_REASONS = {
  "worker-failed": "a worker failed",
  "round-ended": "a node left, died or restarted",
  "nodes-waiting": "nodes are waiting to join",
} as const;

function report(result: AgentResult, runId: string, say: (level: LogLevel, text: string) => void): void {
  switch (result.kind) {
    case "succeeded":
      say(
        "info",
        `all workers succeeded (round ${result.round}, ${result.restarts} restart${result.restarts === 1 ? "" : "s"})`,
      );
      return;
    case "failed":
      say("error", formatFailure(result.summary) + (result.local ? "" : "\n  (reported by another node)"));
      return;
    case "closed":
      say(
        "error",
        result.reason === undefined
          ? `the rendezvous of run ${JSON.stringify(runId)} is closed: another node closed it, or an earlier job under this --rdzv-id ended (give a new job its own --rdzv-id)`
          : `the rendezvous of run ${JSON.stringify(runId)} was closed by another node: ${result.reason}`,
      );
      return;
    case "stopped":
      say("warn", `stopped${result.signal === undefined ? "" : ` by ${result.signal}`}`);
      return;
  }
}
