/**
 * The dashboard's run index: which runs a store holds and each rdzv run's leave markers, kept up to date
 * from the engine's key changes, so that a run list (`/api/runs`, each live push of it) costs what the
 * runs hold rather than a listing of every key (most of them workers' and training jobs' keys: 300,000
 * keys made each list ~100 ms). Which keys count is `runListKey`'s to say (run-keys.ts), as for a listing.
 *
 * It holds one entry per key that has a role in the run list (an rdzv run's `open` key, a PyTorch state
 * key, a leave marker) while the store holds that key, and nothing else: forged run-shaped keys grow it
 * only as far as they grow the store, and deleting them shrinks it back.
 */

import type { KvEngine } from "../store/kv-engine.js";
import { userKeyOf, WIRE_KEY_PREFIX } from "./key-reader.js";
import { type LeaveMarkers, type RunKeys, runListKey } from "./run-keys.js";

/** The runs of one engine; see the file comment. Build it with `attachRunIndex`, or feed it keys. */
export class RunIndex implements RunKeys {
  readonly #rdzv = new Set<string>();
  readonly #pytorch = new Set<string>();
  /** rdzv run id -> round -> slots with a leave marker (runs without an `open` key too: it may come). */
  readonly #gone = new Map<string, Map<number, Set<number>>>();
  #size = 0;
  /** `runIds()`'s answer until a run id comes or goes: a run list is read far more often than runs change. */
  #sorted: { rdzv: readonly string[]; pytorch: readonly string[] } | undefined;

  /** Keys held (each with a role in the run list): what the index's memory is in proportion to. */
  get size(): number {
    return this.#size;
  }

  /** User key `key` was created (a key that exists already must not be added again). */
  add(key: string): void {
    const k = runListKey(key);
    if (k === undefined) return;
    if (k.role === "gone") {
      let rounds = this.#gone.get(k.runId);
      if (rounds === undefined) {
        rounds = new Map();
        this.#gone.set(k.runId, rounds);
      }
      let slots = rounds.get(k.round);
      if (slots === undefined) {
        slots = new Set();
        rounds.set(k.round, slots);
      }
      if (!slots.has(k.slot)) this.#size++;
      slots.add(k.slot);
      return;
    }
    const ids = k.role === "rdzv" ? this.#rdzv : this.#pytorch;
    if (ids.has(k.runId)) return;
    this.#size++;
    ids.add(k.runId);
    this.#sorted = undefined;
  }

  /** User key `key` was deleted. */
  remove(key: string): void {
    const k = runListKey(key);
    if (k === undefined) return;
    if (k.role === "gone") {
      const rounds = this.#gone.get(k.runId);
      const slots = rounds?.get(k.round);
      if (slots?.delete(k.slot) !== true) return;
      this.#size--;
      if (slots.size === 0) rounds!.delete(k.round);
      if (rounds!.size === 0) this.#gone.delete(k.runId);
      return;
    }
    if (!(k.role === "rdzv" ? this.#rdzv : this.#pytorch).delete(k.runId)) return;
    this.#size--;
    this.#sorted = undefined;
  }

  runIds(): { rdzv: readonly string[]; pytorch: readonly string[] } {
    this.#sorted ??= { rdzv: [...this.#rdzv].sort(), pytorch: [...this.#pytorch].sort() };
    return this.#sorted;
  }

  leaveMarkers(runId: string): LeaveMarkers | undefined {
    const rounds = this.#gone.get(runId);
    if (rounds === undefined) return undefined;
    const out = new Map<number, number[]>();
    for (const [round, slots] of rounds) out.set(round, [...slots]);
    return out;
  }
}

/** A run index following an engine's changes. */
export interface AttachedRunIndex {
  readonly index: RunIndex;
  /** Stops following the engine (the index then goes stale). Idempotent. */
  detach(): void;
}

/**
 * Indexes the keys `engine` holds now (a store restored from a data directory included: one pass over
 * every key), then follows its changes: keys carrying `keyPrefix` ("/" on a TCP store server), holding
 * UTF-8 bytes as byte strings when `byteKeys` (as a TCP store server's engine does), the same rule as
 * `engineKeyReader`'s listing (`userKeyOf`). Only creations and deletions move it: an overwrite returns
 * at once, so keep-alives cost it one comparison.
 */
export function attachRunIndex(
  engine: KvEngine,
  keyPrefix = WIRE_KEY_PREFIX,
  byteKeys = true,
): AttachedRunIndex {
  const index = new RunIndex();
  for (const key of engine.keys()) {
    const user = userKeyOf(key, keyPrefix, byteKeys);
    if (user !== undefined) index.add(user);
  }
  // Synchronous with the write (as `keys()` above): no change falls between the pass and the listener.
  const off = engine.onChange((key, oldValue, newValue) => {
    if ((oldValue === undefined) === (newValue === undefined)) return;
    const user = userKeyOf(key, keyPrefix, byteKeys);
    if (user === undefined) return;
    if (newValue === undefined) index.remove(user);
    else index.add(user);
  });
  return { index, detach: off };
}
