/**
 * Rendezvous parameters: eager validation, PyTorch-style config parsing (`--rdzv-conf a=1,b=x`), and the
 * typed settings every handler reads (all durations in milliseconds).
 *
 * Mirrors PyTorch's `RendezvousParameters` (`rendezvous/api.py`: constructor checks, `get_as_bool`,
 * `get_as_int`), `_parse_rendezvous_config` (`rendezvous/utils.py`), the keys read by `create_handler`
 * (`dynamic_rendezvous.py`), `_create_tcp_store` (`c10d_rendezvous_backend.py`) and `create_rdzv_handler`
 * (`static_tcp_rendezvous.py`).
 */

import { InvalidArgumentError } from "../errors.js";
import type { RendezvousConfigValue, RendezvousParameters } from "./api.js";
import { defaultLocalAddr } from "./endpoint.js";

/**
 * Everything a handler needs, resolved from `RendezvousParameters`: defaults applied, units converted to
 * milliseconds, values type-checked. Frozen.
 */
export interface RendezvousSettings {
  readonly backend: string;
  readonly endpoint: string;
  readonly runId: string;
  readonly minNodes: number;
  readonly maxNodes: number;
  /** Config `join_timeout` (seconds, default 600): how long a round may take to form. */
  readonly joinTimeoutMs: number;
  /** Config `last_call_timeout` (seconds, default 30): extra wait for stragglers once `minNodes` joined. */
  readonly lastCallTimeoutMs: number;
  /** Config `close_timeout` (seconds, default 30): how long closing or leaving may take. */
  readonly closeTimeoutMs: number;
  /** Config `heartbeat_timeout` (seconds, default 5): how long one keep-alive may take (PyTorch `RendezvousTimeout.heartbeat`). */
  readonly heartbeatTimeoutMs: number;
  /** Config `keep_alive_interval`, alias `heartbeat` (seconds, default 5): the keep-alive period. */
  readonly keepAliveIntervalMs: number;
  /** Config `keep_alive_max_attempt` (default 3): missed keep-alives before a node counts as dead. */
  readonly keepAliveMaxAttempts: number;
  /** Config `read_timeout` (seconds, default 60): store operation timeout of the c10d backend's TCPStore. */
  readonly readTimeoutMs: number;
  /**
   * Config `timeout` (seconds, default 600): the static handler's store timeout, used to connect, to wait
   * for all ranks and for store calls (PyTorch `static_tcp_rendezvous.py`). The c10d backend uses
   * `readTimeoutMs` instead, as PyTorch does.
   */
  readonly storeTimeoutMs: number;
  /**
   * Config `store_unreachable_timeout` (seconds; default the larger of 300 and `join_timeout`): how long
   * `rdzv run`'s agent keeps its workers running while the rendezvous store cannot be reached, before it
   * stops them and exits 1 (agent/store-outage.ts). Long enough by default for a `rdzv serve --data-dir`
   * restart or an etcd election (seconds) and for a store that comes back as fast as nodes may join.
   */
  readonly storeUnreachableTimeoutMs: number;
  /** Config `is_host`: whether this node hosts the store; `undefined` means "work it out" (default). */
  readonly isHost: boolean | undefined;
  /** `params.localAddr`, else config `local_addr`, else this machine's hostname (`defaultLocalAddr()`). */
  readonly localAddr: string;
  /** Config `sticky_ranks` (default false): keep a node's rank across rounds where membership allows. */
  readonly stickyRanks: boolean;
  /** Config `use_agent_store` (default false): workers reuse the rendezvous store as bootstrap store. */
  readonly useAgentStore: boolean;
  /** Config `rank` (static backend, torchrun `--node-rank`): this node's fixed rank, >= 0. */
  readonly rank: number | undefined;
  /** Config `world_size` (static backend): the fixed number of nodes, >= 1. */
  readonly worldSize: number | undefined;
  /** The whole config as given, for backend-specific keys (etcd `protocol`, `cacert`, `prefix`, ...). */
  readonly raw: Readonly<Record<string, RendezvousConfigValue>>;
}

/** Defaults of the timing settings, in milliseconds (PyTorch's defaults). */
export const DEFAULT_RENDEZVOUS_TIMEOUTS = {
  joinTimeoutMs: 600_000,
  lastCallTimeoutMs: 30_000,
  closeTimeoutMs: 30_000,
  heartbeatTimeoutMs: 5_000,
  keepAliveIntervalMs: 5_000,
  readTimeoutMs: 60_000,
  storeTimeoutMs: 600_000,
} as const;

/** The least default of `store_unreachable_timeout` (the default is this or `join_timeout`, the larger). */
export const MIN_DEFAULT_STORE_UNREACHABLE_TIMEOUT_MS = 300_000;

/** Default of `keep_alive_max_attempt`. */
export const DEFAULT_KEEP_ALIVE_MAX_ATTEMPTS = 3;

type Config = Readonly<Record<string, RendezvousConfigValue>>;

/**
 * Parses a `key1=value1,...,keyN=valueN` string into a record of strings, as PyTorch's
 * `_parse_rendezvous_config`: blank input gives `{}`; keys and values are trimmed; a later duplicate key
 * wins. Throws `InvalidArgumentError` for an entry without a key, or a key without a value (`a`, `a=`).
 */
export function parseRendezvousConfig(text: string): Record<string, string> {
  if (typeof text !== "string") {
    throw new InvalidArgumentError(`the rendezvous config must be a string, got ${typeof text}`);
  }
  const trimmed = text.trim();
  if (trimmed === "") return {};
  const entries: [string, string][] = [];
  for (const item of trimmed.split(",")) {
    const eq = item.indexOf("=");
    const key = (eq < 0 ? item : item.slice(0, eq)).trim();
    if (key === "") {
      throw new InvalidArgumentError(
        `the rendezvous config must be in format <key1>=<value1>,...,<keyN>=<valueN>, got ${JSON.stringify(text)}`,
      );
    }
    const value = eq < 0 ? "" : item.slice(eq + 1).trim();
    if (value === "") {
      throw new InvalidArgumentError(
        `the rendezvous config option '${key}' must have a value, got ${JSON.stringify(item)}`,
      );
    }
    entries.push([key, value]);
  }
  // fromEntries defines own properties, so a key like "__proto__" stays a plain key.
  return Object.fromEntries(entries);
}

/**
 * Checks `params` eagerly and returns a frozen copy. Every bad value is named in one `InvalidArgumentError`:
 * empty `backend` or `runId`, `minNodes` not an integer >= 1, `maxNodes` not an integer >= `minNodes`,
 * a non-string `endpoint`, an empty `localAddr`, config keys that are empty or values that are not
 * string/number/boolean. Whether the backend is registered is not checked here (see `registry.ts`).
 * Same checks as PyTorch's `RendezvousParameters` constructor, plus type checks.
 */
export function validateRendezvousParameters(params: RendezvousParameters): RendezvousParameters {
  if (params === null || typeof params !== "object") {
    throw new InvalidArgumentError(`rendezvous parameters must be an object, got ${String(params)}`);
  }
  const problems = parameterProblems(params);
  if (problems.length > 0) {
    throw new InvalidArgumentError(`invalid rendezvous parameters: ${problems.join("; ")}`);
  }
  const config = Object.freeze({ ...(params.config ?? {}) });
  return Object.freeze({
    backend: params.backend,
    endpoint: params.endpoint,
    runId: params.runId,
    minNodes: params.minNodes,
    maxNodes: params.maxNodes,
    ...(params.localAddr === undefined ? {} : { localAddr: params.localAddr }),
    config,
  });
}

function parameterProblems(params: RendezvousParameters): string[] {
  const problems: string[] = [];
  const { backend, endpoint, runId, minNodes, maxNodes, localAddr, config } = params;
  if (typeof backend !== "string" || backend.trim() === "") {
    problems.push(`backend must be a non-empty string, got ${show(backend)}`);
  }
  if (typeof endpoint !== "string") problems.push(`endpoint must be a string, got ${show(endpoint)}`);
  if (typeof runId !== "string" || runId.trim() === "") {
    problems.push(`runId must be a non-empty string, got ${show(runId)}`);
  }
  const minOk = Number.isSafeInteger(minNodes) && minNodes >= 1;
  if (!minOk) problems.push(`minNodes must be an integer >= 1, got ${show(minNodes)}`);
  if (!Number.isSafeInteger(maxNodes) || maxNodes < 1) {
    problems.push(`maxNodes must be an integer >= 1, got ${show(maxNodes)}`);
  } else if (minOk && maxNodes < minNodes) {
    problems.push(`maxNodes (${maxNodes}) must be >= minNodes (${minNodes})`);
  }
  if (localAddr !== undefined && (typeof localAddr !== "string" || localAddr.trim() === "")) {
    problems.push(`localAddr must be a non-empty string when given, got ${show(localAddr)}`);
  }
  if (config !== undefined) problems.push(...configProblems(config));
  return problems;
}

function configProblems(config: unknown): string[] {
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    return [`config must be a record of string, number or boolean values, got ${show(config)}`];
  }
  const problems: string[] = [];
  for (const [key, value] of Object.entries(config)) {
    if (key.trim() === "") problems.push(`config keys must be non-empty, got ${JSON.stringify(key)}`);
    const type = typeof value;
    if (type !== "string" && type !== "number" && type !== "boolean") {
      problems.push(`config option '${key}' must be a string, number or boolean, got ${show(value)}`);
    }
  }
  return problems;
}

/**
 * Validates `params` (see `validateRendezvousParameters`) and resolves the settings every handler reads,
 * applying PyTorch's defaults. Every bad config value is named in one `InvalidArgumentError`. Durations
 * are seconds (fractions allowed) given as numbers or numeric strings and must be positive; booleans
 * accept what PyTorch's `get_as_bool` does (true/false, 1/0, t/f, yes/no, y/n, any case); integers
 * accept integral numbers or decimal strings. Unknown keys are kept in `raw` (backend-specific keys are
 * read from there; `unreadConfigKeys` finds those a built-in backend does not read, to warn of typos).
 *
 * `keep_alive_interval` also accepts the alias `heartbeat`; giving both with different values is an error.
 */
export function resolveRendezvousSettings(params: RendezvousParameters): RendezvousSettings {
  const valid = validateRendezvousParameters(params);
  const config: Config = valid.config ?? {};
  const problems: string[] = [];
  const read = <T>(parse: () => T, fallback: T): T => {
    try {
      return parse();
    } catch (err) {
      problems.push(err instanceof Error ? err.message : String(err));
      return fallback;
    }
  };
  const seconds = (key: string, fallbackMs: number): number =>
    read(() => configDurationMs(config, key) ?? fallbackMs, fallbackMs);
  const d = DEFAULT_RENDEZVOUS_TIMEOUTS;
  const joinTimeoutMs = seconds("join_timeout", d.joinTimeoutMs);
  const unreachableMs = Math.max(MIN_DEFAULT_STORE_UNREACHABLE_TIMEOUT_MS, joinTimeoutMs);
  const settings: RendezvousSettings = {
    backend: valid.backend,
    endpoint: valid.endpoint,
    runId: valid.runId,
    minNodes: valid.minNodes,
    maxNodes: valid.maxNodes,
    joinTimeoutMs,
    lastCallTimeoutMs: seconds("last_call_timeout", d.lastCallTimeoutMs),
    closeTimeoutMs: seconds("close_timeout", d.closeTimeoutMs),
    heartbeatTimeoutMs: seconds("heartbeat_timeout", d.heartbeatTimeoutMs),
    keepAliveIntervalMs: read(() => keepAliveIntervalMs(config), d.keepAliveIntervalMs),
    keepAliveMaxAttempts: read(
      () => configInt(config, "keep_alive_max_attempt", 1) ?? DEFAULT_KEEP_ALIVE_MAX_ATTEMPTS,
      DEFAULT_KEEP_ALIVE_MAX_ATTEMPTS,
    ),
    readTimeoutMs: seconds("read_timeout", d.readTimeoutMs),
    storeTimeoutMs: seconds("timeout", d.storeTimeoutMs),
    storeUnreachableTimeoutMs: seconds("store_unreachable_timeout", unreachableMs),
    isHost: read(() => configBool(config, "is_host"), undefined),
    localAddr: read(() => resolveLocalAddr(valid, config), ""),
    stickyRanks: read(() => configBool(config, "sticky_ranks") ?? false, false),
    useAgentStore: read(() => configBool(config, "use_agent_store") ?? false, false),
    rank: read(() => configInt(config, "rank", 0), undefined),
    worldSize: read(() => configInt(config, "world_size", 1), undefined),
    raw: config,
  };
  if (problems.length > 0) {
    throw new InvalidArgumentError(`invalid rendezvous config: ${problems.join("; ")}`);
  }
  return Object.freeze(settings);
}

function keepAliveIntervalMs(config: Config): number {
  const interval = configDurationMs(config, "keep_alive_interval");
  const alias = configDurationMs(config, "heartbeat");
  if (interval !== undefined && alias !== undefined && interval !== alias) {
    throw new InvalidArgumentError(
      `config options 'keep_alive_interval' (${show(config.keep_alive_interval)}) and its alias 'heartbeat' ` +
        `(${show(config.heartbeat)}) disagree`,
    );
  }
  return interval ?? alias ?? DEFAULT_RENDEZVOUS_TIMEOUTS.keepAliveIntervalMs;
}

function resolveLocalAddr(params: RendezvousParameters, config: Config): string {
  if (params.localAddr !== undefined) return params.localAddr;
  const fromConfig = configString(config, "local_addr");
  if (fromConfig !== undefined && fromConfig.trim() === "") {
    throw new InvalidArgumentError("config option 'local_addr' must not be empty");
  }
  return fromConfig ?? defaultLocalAddr();
}

/** Config value `key` as a string (numbers and booleans are stringified); `undefined` when absent. */
export function configString(config: Config, key: string): string | undefined {
  const value = own(config, key);
  return value === undefined ? undefined : String(value);
}

/**
 * Config value `key` as a boolean, as PyTorch's `get_as_bool`: booleans, 1/0, and the strings
 * true/false, t/f, yes/no, y/n, 1/0 in any case. `undefined` when absent; `InvalidArgumentError` otherwise.
 */
export function configBool(config: Config, key: string): boolean | undefined {
  const value = own(config, key);
  if (value === undefined || typeof value === "boolean") return value;
  if (value === 1 || value === 0) return value === 1;
  if (typeof value === "string") {
    const text = value.trim().toLowerCase();
    if (TRUE_WORDS.has(text)) return true;
    if (FALSE_WORDS.has(text)) return false;
  }
  throw new InvalidArgumentError(
    `config option '${key}' must be a boolean (true/false, 1/0, yes/no), got ${show(value)}`,
  );
}

const TRUE_WORDS = new Set(["1", "true", "t", "yes", "y"]);
const FALSE_WORDS = new Set(["0", "false", "f", "no", "n"]);

/**
 * Config value `key` as an integer >= `min` (decimal strings or integral numbers), as PyTorch's
 * `get_as_int`. `undefined` when absent; `InvalidArgumentError` otherwise.
 */
export function configInt(config: Config, key: string, min = Number.MIN_SAFE_INTEGER): number | undefined {
  const value = own(config, key);
  if (value === undefined) return undefined;
  let n = Number.NaN;
  if (typeof value === "number") n = value;
  else if (typeof value === "string" && /^\s*[+-]?\d+\s*$/.test(value)) n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new InvalidArgumentError(`config option '${key}' must be an integer >= ${min}, got ${show(value)}`);
  }
  return n;
}

/**
 * Config value `key`, a positive number of seconds (fractions allowed; number or numeric string), in
 * whole milliseconds. `undefined` when absent; `InvalidArgumentError` when not a positive duration.
 */
export function configDurationMs(config: Config, key: string): number | undefined {
  const value = own(config, key);
  if (value === undefined) return undefined;
  let secs = Number.NaN;
  if (typeof value === "number") secs = value;
  else if (typeof value === "string" && /^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/.test(value))
    secs = Number(value);
  const ms = Math.round(secs * 1000);
  if (!Number.isFinite(secs) || secs <= 0 || ms < 1 || !Number.isSafeInteger(ms)) {
    throw new InvalidArgumentError(
      `config option '${key}' must be a positive number of seconds, got ${show(value)}`,
    );
  }
  return ms;
}

function own(config: Config, key: string): RendezvousConfigValue | undefined {
  return Object.hasOwn(config, key) ? config[key] : undefined;
}

function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (typeof value === "object" && value !== null) return Array.isArray(value) ? "an array" : "an object";
  return String(value);
}
