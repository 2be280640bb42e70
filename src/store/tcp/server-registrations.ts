/**
 * What one server connection has registered beyond its current request: v1 key watches (WATCH_KEY) and
 * rdzv's on-disconnect sets. Both count against `maxWaitersPerConnection`, and both end with the connection.
 */

import { ErrorCode } from "../../errors.js";
import { ProtocolError } from "./byte-reader.js";
import type { KeyWatcher, ServerState } from "./server-state.js";

/** Throws `ProtocolError` (`RDZV_LIMIT_EXCEEDED`) when `n` waited, watched or registered keys are too many. */
export function checkWaiterLimit(state: ServerState, n: number, what: string): void {
  const max = state.limits.maxWaitersPerConnection;
  if (n > max) {
    throw new ProtocolError(
      `${what}: ${n} exceeds maxWaitersPerConnection (${max})`,
      ErrorCode.LimitExceeded,
    );
  }
}

/** The watches and on-disconnect sets of one connection. */
export class ConnectionRegistrations {
  #watched: Set<string> | undefined;
  #onDisconnect: Map<string, Uint8Array> | undefined;

  constructor(
    private readonly state: ServerState,
    private readonly watcher: KeyWatcher,
  ) {}

  /** Watches `key` for the connection (v1 WATCH_KEY); watching it again changes nothing. */
  watch(key: string): void {
    this.#watched ??= new Set();
    if (this.#watched.has(key)) return;
    checkWaiterLimit(this.state, this.#watched.size + 1, "watched keys");
    this.#watched.add(key);
    this.state.watch(key, this.watcher);
  }

  /** Sets `key` = `value` when the connection closes; registering a key again replaces its value. */
  onDisconnectSet(key: string, value: Uint8Array): void {
    this.#onDisconnect ??= new Map();
    if (!this.#onDisconnect.has(key)) {
      checkWaiterLimit(this.state, this.#onDisconnect.size + 1, "on-disconnect keys");
    }
    this.#onDisconnect.set(key, value);
  }

  /** Forgets the on-disconnect registration of `key`. */
  onDisconnectClear(key: string): void {
    this.#onDisconnect?.delete(key);
  }

  /** The connection closed: drops the watches and runs the on-disconnect sets. Returns how many ran. */
  release(): number {
    if (this.#watched !== undefined) {
      for (const key of this.#watched) this.state.unwatch(key, this.watcher);
      this.#watched = undefined;
    }
    const sets = this.#onDisconnect;
    this.#onDisconnect = undefined;
    if (sets === undefined) return 0;
    // One mutation: a journal restores all of a connection's markers or none.
    this.state.engine.multiSet([...sets.keys()], [...sets.values()]);
    return sets.size;
  }
}
