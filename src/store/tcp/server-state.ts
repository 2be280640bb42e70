/**
 * State a TCP store server shares between its connections, beside the key-value engine: parked BARRIER
 * callers, v1 key watchers, counters for `stats()`, and the hooks a connection reports through.
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { type Logger, LogRateLimit } from "../../log.js";
import type { KvEngine } from "../kv-engine.js";
import { type AuthThrottle, createAuthThrottle } from "./auth-throttle.js";
import { encodeWatchNotification } from "./encode.js";
import { Command, type Dialect, WatchResponse } from "./protocol.js";

/** Per-server limits, beside the decoder's `ProtocolLimits`. */
export interface ConnectionLimits {
  maxWaitersPerConnection: number;
}

/** How a server authenticates its connections. */
export interface ServerSecurity {
  /** SHA-256 of the shared-secret token every connection must present (AUTH), or undefined for none. */
  readonly tokenDigest: Buffer | undefined;
  /** Wrong tokens per address; an address it locks out gets `AuthResponse.Throttled`. */
  readonly throttle: AuthThrottle;
}

/** SHA-256 of a token, so that tokens of any length compare in constant time. */
export function tokenDigest(token: Uint8Array): Buffer {
  return createHash("sha256").update(token).digest();
}

/**
 * Whether a token whose `tokenDigest` is `digest` is the server's token (constant time). True when the
 * server requires none.
 */
export function tokenMatches(security: ServerSecurity, digest: Buffer): boolean {
  const expected = security.tokenDigest;
  return expected === undefined || timingSafeEqual(expected, digest);
}

/** A connection parked in a BARRIER until the count is reached. */
export interface BarrierParty {
  barrierReleased(): void;
}

/** A v1 connection that watches keys (WATCH_KEY). */
export interface KeyWatcher {
  /** Queues a watch notification for the peer. */
  notify(message: Buffer): void;
}

/** What a connection reports to its server. */
export interface ServerHooks {
  /** The connection sent bytes it must be closed for (already logged and counted by `ServerState`). */
  protocolError(id: number, remote: string, reason: string): void;
}

const EMPTY = new Uint8Array(0);

function zeroCounts(): Record<Command, number> {
  const out = {} as Record<Command, number>;
  for (const name of Object.values(Command)) out[name] = 0;
  return out;
}

/** Shared bookkeeping of one server. */
export class ServerState {
  /** Requests handled, by command. */
  readonly ops = zeroCounts();
  /** Open connections per detected dialect. */
  readonly dialects: Record<Dialect, number> = { v1: 0, v2: 0 };
  /** Connections closed for bad input since the start. */
  protocolErrors = 0;
  /** Connections parked in a BARRIER. */
  barrierWaiters = 0;
  /** AUTH requests with a wrong token since the start (each closed its connection). */
  authFailures = 0;
  /** AUTH requests refused unchecked because their address was locked out, since the start. */
  authThrottled = 0;
  /** Connections closed for holding an incomplete request or idling too long, since the start. */
  reaped = 0;
  /** Writes refused because the store was full (each closed its connection), since the start. */
  storeFull = 0;
  readonly #storeFullLog = new LogRateLimit(60_000);

  readonly #barriers = new Map<string, Set<BarrierParty>>();
  readonly #watchers = new Map<string, Set<KeyWatcher>>();
  #unlisten: (() => void) | undefined;

  constructor(
    readonly engine: KvEngine,
    readonly limits: Readonly<ConnectionLimits>,
    readonly logger: Logger,
    private readonly hooks: ServerHooks,
    readonly security: ServerSecurity = {
      tokenDigest: undefined,
      throttle: createAuthThrottle({ maxFailures: 0 }),
    },
  ) {}

  /**
   * Counts a write refused because the store is full (its connection closes), and logs it at most once a
   * minute: a client that reconnects and writes again would otherwise write a line per attempt.
   */
  storeFullRefused(id: number, remote: string, reason: string): void {
    this.storeFull++;
    const { log, unlogged } = this.#storeFullLog.take(performance.now());
    if (!log) return;
    this.logger.warn(
      "TCPStore server: the store is full (maxStoreBytes): closing the connection of a write that would grow it",
      {
        id,
        remote,
        reason,
        // Refusals in the minute before this line, not logged.
        unlogged,
      },
    );
  }

  /** Logs, counts and reports a connection closed for bad input. */
  badInput(id: number, remote: string, reason: string, code: string): void {
    this.protocolErrors++;
    this.logger.warn("TCPStore server: closing a connection that sent bad input", {
      id,
      remote,
      reason,
      code,
    });
    this.hooks.protocolError(id, remote, reason);
  }

  /** Parks `party` on the barrier at `key`. */
  parkBarrier(key: string, party: BarrierParty): void {
    let set = this.#barriers.get(key);
    if (set === undefined) {
      set = new Set();
      this.#barriers.set(key, set);
    }
    set.add(party);
    this.barrierWaiters++;
  }

  /** Removes `party` from the barrier at `key` (a cancel or a disconnect). */
  unparkBarrier(key: string, party: BarrierParty): void {
    const set = this.#barriers.get(key);
    if (set === undefined || !set.delete(party)) return;
    this.barrierWaiters--;
    if (set.size === 0) this.#barriers.delete(key);
  }

  /** Releases every party parked on the barrier at `key`. */
  releaseBarrier(key: string): void {
    const set = this.#barriers.get(key);
    if (set === undefined) return;
    this.#barriers.delete(key);
    this.barrierWaiters -= set.size;
    for (const party of set) party.barrierReleased();
  }

  /** Registers `watcher` for changes of `key`. */
  watch(key: string, watcher: KeyWatcher): void {
    let set = this.#watchers.get(key);
    if (set === undefined) {
      set = new Set();
      this.#watchers.set(key, set);
    }
    set.add(watcher);
    // Listening costs every write a map lookup, so only while someone watches.
    this.#unlisten ??= this.engine.onChange((k, oldValue, newValue) =>
      this.keyChanged(k, oldValue, newValue),
    );
  }

  /** Drops `watcher`'s registration for `key`. */
  unwatch(key: string, watcher: KeyWatcher): void {
    const set = this.#watchers.get(key);
    if (set === undefined) return;
    set.delete(watcher);
    if (set.size > 0) return;
    this.#watchers.delete(key);
    if (this.#watchers.size === 0 && this.#unlisten !== undefined) {
      this.#unlisten();
      this.#unlisten = undefined;
    }
  }

  /** Stops listening to the engine (server closed). */
  dispose(): void {
    this.#unlisten?.();
    this.#unlisten = undefined;
    this.#watchers.clear();
    this.#barriers.clear();
    this.barrierWaiters = 0;
  }

  private keyChanged(key: string, oldValue: Uint8Array | undefined, newValue: Uint8Array | undefined): void {
    const set = this.#watchers.get(key);
    if (set === undefined) return;
    const event =
      oldValue === undefined
        ? WatchResponse.KeyCreated
        : newValue === undefined
          ? WatchResponse.KeyDeleted
          : WatchResponse.KeyUpdated;
    const message = encodeWatchNotification(event, key, oldValue ?? EMPTY, newValue ?? EMPTY);
    for (const watcher of set) watcher.notify(message);
  }
}
