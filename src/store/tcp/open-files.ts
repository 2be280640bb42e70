/**
 * The process's open-file limit, and how close a server's connections bring it. A process out of file
 * descriptors cannot accept: libuv then accepts the waiting connections on a spare descriptor and closes
 * them at once, without telling the program (its EMFILE handling), so the server would drop clients
 * without a line in its log. The server therefore watches its connections against the room the limit
 * leaves (`OpenFileRoom`), and `rdzv serve` says at start when the limit is below `--max-connections`.
 * Read from Linux's /proc; elsewhere nothing is known and nothing is watched. Parsing is pure.
 */

import { readdirSync, readFileSync } from "node:fs";

/** An open-file limit (RLIMIT_NOFILE); `Infinity` for "unlimited". */
export interface OpenFileLimit {
  readonly soft: number;
  readonly hard: number;
}

/** The `Max open files` line of a /proc/PID/limits text; undefined when it has none that parses. */
export function parseOpenFileLimit(procLimits: string): OpenFileLimit | undefined {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)\s/m.exec(procLimits);
  if (m === null) return undefined;
  const value = (s: string): number => (s === "unlimited" ? Number.POSITIVE_INFINITY : Number(s));
  return { soft: value(m[1]!), hard: value(m[2]!) };
}

/** This process's open-file limit, or undefined where /proc does not say (not Linux). */
export function readOpenFileLimit(): OpenFileLimit | undefined {
  try {
    return parseOpenFileLimit(readFileSync("/proc/self/limits", "latin1"));
  } catch {
    return undefined;
  }
}

/** File descriptors this process holds now, or undefined where /proc does not say. */
export function countOpenFiles(): number | undefined {
  try {
    // Less the one that reads the directory.
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return undefined;
  }
}

/** The descriptors a server may still use for connections: its soft limit, and those in use at its start. */
export interface OpenFileRoom {
  /** The soft open-file limit. */
  readonly limit: number;
  /** Descriptors in use when the server started (stdio, the listener, files, the dashboard's). */
  readonly inUse: number;
}

/** This process's `OpenFileRoom`, or undefined when the limit is unknown or unlimited. */
export function readOpenFileRoom(): OpenFileRoom | undefined {
  const limit = readOpenFileLimit();
  const inUse = countOpenFiles();
  if (limit === undefined || inUse === undefined || !Number.isFinite(limit.soft)) return undefined;
  return { limit: limit.soft, inUse };
}

/**
 * Connections at which a server with `room` warns that the limit is near: the room less a margin (5 %,
 * at least 16) for what else the process opens meanwhile (journal files, dashboard clients).
 */
export function warnAtConnections(room: OpenFileRoom): number {
  const free = room.limit - room.inUse;
  return Math.max(1, free - Math.max(16, Math.ceil(free * 0.05)));
}

/**
 * What to tell the operator of a server whose open-file limit (`limit`, with `inUse` descriptors taken)
 * leaves room for fewer than `maxConnections` connections: how many fit, what happens past them, and the
 * `ulimit -n` that fits them all (within the hard limit, or how to raise that). Undefined when they fit.
 */
export function openFileAdvice(
  limit: OpenFileLimit,
  inUse: number,
  maxConnections: number,
): string | undefined {
  const room = limit.soft - inUse;
  if (room >= maxConnections) return undefined;
  // The connections, what is open now, and as much again of that for files and dashboard clients.
  const wanted = maxConnections + 2 * inUse + 64;
  const raise =
    wanted <= limit.hard
      ? `ulimit -n ${wanted} before starting (the hard limit allows it), or LimitNOFILE=${wanted} in a systemd unit`
      : `ulimit -n ${Number.isFinite(limit.hard) ? limit.hard : wanted} is the most this user may set (the hard limit); ` +
        `beyond it, raise the hard limit (as root: /etc/security/limits.conf, or LimitNOFILE= in a systemd unit)`;
  return (
    `the open-file limit (${limit.soft}, ${inUse} in use at the start) leaves room for about ${Math.max(0, room)} ` +
    `connections, fewer than --max-connections (${maxConnections}); past it, new connections are closed before the ` +
    `server sees them, with no line in this log. Each rdzv node holds 1-2 connections and each PyTorch client 1-2. ` +
    `To serve them all: ${raise}; or lower --max-connections to what fits`
  );
}
