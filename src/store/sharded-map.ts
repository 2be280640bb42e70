/**
 * A string-keyed map that never holds more than a share of its keys in one JS `Map`: one `Map` while it
 * is small, split into a fixed number of `Map`s by a hash of the key once it reaches `splitAt` keys.
 *
 * Why: V8 grows (and shrinks) a `Map` by rehashing its whole table in one synchronous step when the
 * table doubles (or falls to a quarter). For the TCP store server's key table that step stalled every
 * client of the server, about 100 ms at 512k keys and 220-330 ms at 1M, once per doubling
 * (bench/kv-stall.ts, bench/RESULTS.md; Redis avoids the same stall by rehashing incrementally). Split
 * 256 ways, each rehash moves one shard's keys, 1/185 of them at most. It also lifts V8's limit of 2^24
 * keys per `Map` about 185-fold. Small maps stay one `Map`, so that they do not pay for hashing each key
 * in JavaScript (about 1.3 ns per character).
 *
 * Shards of equal shares would all double at about the same total (256 x 2^k keys), several in one turn
 * of the event loop (13-15 ms for a turn of 1000 sets at 2M keys). So shard i gets a share proportional
 * to 2^(i/256): their shares span a factor of two, and their doublings spread evenly over each doubling
 * of the whole map (7 ms for that turn).
 */

/** Shards of a `ShardedMap` unless told otherwise. */
export const DEFAULT_SHARDS = 256;

/**
 * Keys at which a `ShardedMap` splits unless told otherwise: its one `Map` rehashes 4k keys at most, and
 * the split (each key hashed and moved, about 1.5 times a rehash of as many) costs about as much as one
 * shard's rehash at 2M keys (8k keys), a few ms (bench/RESULTS.md).
 */
export const DEFAULT_SPLIT_AT = 1 << 13;

/** The most shards a `ShardedMap` may have (each gets 11 slots of `SLOTS` or more). */
export const MAX_SHARDS = 1 << 12;

/** The hash's low 16 bits pick a slot, and a table of slots the shard. */
const SLOTS = 1 << 16;

/** Slot tables by shard count, made once each. */
const slotTables = new Map<number, Uint16Array>();

/** Slot -> shard, shard i's run of slots as long as 2^(i / shards) (see the file comment). */
function slotTable(shards: number): Uint16Array {
  let table = slotTables.get(shards);
  if (table !== undefined) return table;
  table = new Uint16Array(SLOTS);
  const weight = (i: number): number => 2 ** (i / shards);
  let total = 0;
  for (let i = 0; i < shards; i++) total += weight(i);
  let sum = 0;
  let start = 0;
  for (let i = 0; i < shards; i++) {
    sum += weight(i);
    const end = i === shards - 1 ? SLOTS : Math.round((sum / total) * SLOTS);
    table.fill(i, start, end);
    start = end;
  }
  slotTables.set(shards, table);
  return table;
}

/** Options of a `ShardedMap`. */
export interface ShardedMapOptions {
  /** Shards once split: an integer from 1 (never split: one plain `Map`) to `MAX_SHARDS`. Default 256. */
  shards?: number;
  /** Keys at which the one `Map` is split into the shards (a positive integer). Default 8192. */
  splitAt?: number;
}

/**
 * A map from strings to `V` with `Map`'s semantics for `get`/`has`/`set`/`delete`/`size`; `keys()` lists
 * in no particular order (shard by shard once split).
 */
export class ShardedMap<V> {
  /** The one `Map` until the split, then undefined. */
  #single: Map<string, V> | undefined = new Map();
  #shards: Map<string, V>[] = [];
  readonly #slots: Uint16Array;
  readonly #shardCount: number;
  readonly #splitAt: number;

  /** Throws `RangeError` for a `shards` or `splitAt` out of range, naming it. */
  constructor(options: ShardedMapOptions = {}) {
    const { shards = DEFAULT_SHARDS, splitAt = DEFAULT_SPLIT_AT } = options;
    if (!Number.isInteger(shards) || shards < 1 || shards > MAX_SHARDS) {
      throw new RangeError(`shards must be an integer from 1 to ${MAX_SHARDS}, got ${shards}`);
    }
    if (!Number.isInteger(splitAt) || splitAt < 1) {
      throw new RangeError(`splitAt must be a positive integer, got ${splitAt}`);
    }
    this.#shardCount = shards;
    this.#slots = slotTable(shards);
    this.#splitAt = shards === 1 ? Number.POSITIVE_INFINITY : splitAt;
  }

  /** Number of `Map`s the keys are in now: 1 until the split. */
  get shardCount(): number {
    return this.#single === undefined ? this.#shards.length : 1;
  }

  /** Number of keys (a sum over the shards once split: no cost on writes). */
  get size(): number {
    if (this.#single !== undefined) return this.#single.size;
    let n = 0;
    for (const shard of this.#shards) n += shard.size;
    return n;
  }

  get(key: string): V | undefined {
    return this.shard(key).get(key);
  }

  has(key: string): boolean {
    return this.shard(key).has(key);
  }

  set(key: string, value: V): void {
    this.shard(key).set(key, value);
  }

  /** Deletes `key`; true when it existed. */
  delete(key: string): boolean {
    return this.shard(key).delete(key);
  }

  /**
   * Every key at the call, in no particular order: a copy, so the map may change while it is read.
   * Filled by index from each `Map`'s own iterator, as fast as `Array.from` of one `Map` (an iterator of
   * our own across the shards cost 10 times as much per key).
   */
  keys(): string[] {
    if (this.#single !== undefined) return Array.from(this.#single.keys());
    const out = new Array<string>(this.size);
    let i = 0;
    for (const shard of this.#shards) for (const key of shard.keys()) out[i++] = key;
    return out;
  }

  /** Keys per `Map`, in shard order (one number until the split). */
  shardSizes(): number[] {
    return this.#single !== undefined ? [this.#single.size] : this.#shards.map((shard) => shard.size);
  }

  /**
   * The `Map` that holds `key` (or would hold it), for several operations on `key` that then look for
   * its shard once. Only `key` may be set or deleted there, and only until the next call of a method of
   * this map (which may split it).
   */
  shard(key: string): Map<string, V> {
    const single = this.#single;
    if (single !== undefined) {
      if (single.size < this.#splitAt) return single;
      this.#split(single);
    }
    return this.#shards[this.#slots[shardHash(key) & (SLOTS - 1)]!]!;
  }

  /** Moves every key into the shards: once, a pause as long as one rehash of `splitAt` keys. */
  #split(single: Map<string, V>): void {
    const slots = this.#slots;
    const shards = Array.from({ length: this.#shardCount }, () => new Map<string, V>());
    for (const [key, value] of single) shards[slots[shardHash(key) & (SLOTS - 1)]!]!.set(key, value);
    this.#shards = shards;
    this.#single = undefined;
  }
}

/**
 * FNV-1a over the key's UTF-16 code units (one byte each for the byte strings of a TCP store server's
 * keys), with the high half folded onto the low bits that pick the slot: a signed 32-bit integer.
 * Every unit counts, so keys that differ anywhere (a rank in the middle, a suffix) spread over the
 * shards. The offset basis is written as a signed 32-bit integer: as 0x811c9dc5 (above 2^31) it made V8
 * keep the hash as a double, which took twice as long per unit.
 */
export function shardHash(key: string): number {
  let h = -2128831035; // 0x811c9dc5
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h ^ (h >>> 16);
}
