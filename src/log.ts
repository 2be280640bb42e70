/** A minimal structured logger interface, so library code never writes to the console on its own. */

/** Log levels, lowest first. */
export const LogLevel = { Debug: "debug", Info: "info", Warn: "warn", Error: "error" } as const;
export type LogLevel = (typeof LogLevel)[keyof typeof LogLevel];

/** Receives log records. `fields` holds structured context (connection id, peer, reason, ...). */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** A logger that drops everything. */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** A logger writing one line per record to `write` (default: stderr), at `level` and above. */
export function createConsoleLogger(
  level: LogLevel = LogLevel.Info,
  write: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
): Logger {
  const emit = (at: LogLevel, message: string, fields?: Record<string, unknown>): void => {
    if (ORDER[at] < ORDER[level]) return;
    const extra = fields === undefined ? "" : ` ${JSON.stringify(fields)}`;
    write(`${new Date().toISOString()} ${at.toUpperCase()} ${message}${extra}`);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
  };
}

/**
 * At most one log line per `intervalMs` for a recurring event (a refused connection): `take` says whether
 * this occurrence gets its line, and how many occurrences went without one (those held back since the
 * last line when it does; the running count when it does not).
 */
export class LogRateLimit {
  readonly intervalMs: number;
  #loggedAtMs = Number.NEGATIVE_INFINITY;
  #unlogged = 0;

  constructor(intervalMs: number) {
    this.intervalMs = intervalMs;
  }

  /** An occurrence at `nowMs` (any clock, the same for every call). */
  take(nowMs: number): { readonly log: boolean; readonly unlogged: number } {
    if (nowMs - this.#loggedAtMs < this.intervalMs) return { log: false, unlogged: ++this.#unlogged };
    const unlogged = this.#unlogged;
    this.#loggedAtMs = nowMs;
    this.#unlogged = 0;
    return { log: true, unlogged };
  }
}
