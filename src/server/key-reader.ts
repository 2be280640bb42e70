/**
 * Where the run inspector reads keys from: a server's `KvEngine` in-process (the dashboard of `rdzv serve`),
 * or any `Store` over the network (`rdzv status` with rdzv's TCPStore client, so it works against every
 * server holding rendezvous state). Keys are user keys, as `Store` calls name them.
 */

import { ErrorCode, hasErrorCode, InvalidArgumentError } from "../errors.js";
import type { KvEngine } from "../store/kv-engine.js";
import type { CallOptions, Store } from "../store/store.js";
import type { RunKeys } from "./run-keys.js";

/** Reads keys for the inspector. */
export interface KeyReader {
  /** The value of each of `keys`, `undefined` where missing. */
  read(keys: readonly string[], options?: CallOptions): Promise<(Uint8Array | undefined)[]>;
  /**
   * Every key, or `undefined` when this source cannot list keys (PyTorch servers before 2.10, rdzv's
   * v1 dialect): then runs must be named.
   */
  list(options?: CallOptions): Promise<string[] | undefined>;
  /**
   * What the source keeps indexed of its runs (the dashboard's run index, run-index.ts), when it does: run
   * lists then cost what the runs hold instead of a `list` of every key. Absent: runs come from `list`.
   */
  runKeys?(): RunKeys;
}

/**
 * PyTorch's TCPStore clients (and rdzv's) put "/" before every user key on the wire; the engine of a TCP
 * store server holds the wire keys. Keys without it (the server's `init/` counter) are not user keys.
 */
export const WIRE_KEY_PREFIX = "/";

/** Options of `engineKeyReader`. */
export interface EngineKeyReaderOptions {
  /**
   * The engine's keys are byte strings (one char per byte, latin1), as a TCP store server's are: user
   * keys are UTF-8 text, converted on the way in and out (default true). False for an engine whose keys
   * are the text itself, such as a `MemoryStore`'s.
   */
  byteKeys?: boolean;
  /**
   * The runs of `engine`, kept up to date (a `RunIndex` attached with the same prefix and `byteKeys`): the
   * reader's `runKeys`. Default: none, run lists list every key.
   */
  runKeys?: RunKeys;
}

/**
 * A reader over `engine`, whose keys carry `keyPrefix` (default "/", as on a TCP store server; "" for
 * an engine used in-process, such as a `MemoryStore`'s, which also needs `byteKeys: false`). With byte
 * keys, a key whose bytes are not UTF-8 is not listed: no text names it.
 */
export function engineKeyReader(
  engine: KvEngine,
  keyPrefix = WIRE_KEY_PREFIX,
  options: EngineKeyReaderOptions = {},
): KeyReader {
  const bytes = options.byteKeys ?? true;
  const reader: KeyReader = {
    async read(keys) {
      return keys.map((k) => engine.get(keyPrefix + (bytes ? utf8ToByteString(k) : k)));
    },
    async list() {
      const out: string[] = [];
      for (const k of engine.keys()) {
        const text = userKeyOf(k, keyPrefix, bytes);
        if (text !== undefined) out.push(text);
      }
      return out;
    },
  };
  const { runKeys } = options;
  if (runKeys !== undefined) reader.runKeys = () => runKeys;
  return reader;
}

/**
 * The user key that engine key `key` holds: `undefined` when it does not carry `keyPrefix`, or when
 * `byteKeys` (its bytes as a byte string, as on a TCP store server) and the bytes are not UTF-8 (no text
 * names it). The one rule the reader's listing, the monitor and the run index follow.
 */
export function userKeyOf(key: string, keyPrefix: string, byteKeys: boolean): string | undefined {
  if (!key.startsWith(keyPrefix)) return undefined;
  const user = key.slice(keyPrefix.length);
  return byteKeys ? byteStringToUtf8(user) : user;
}

/** Any UTF-16 code unit past ASCII (without the `u` flag, surrogates are code units too). */
const NON_ASCII = /[\u0080-\uffff]/;
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });

/** The byte string (latin1) of `text`'s UTF-8 encoding. */
export function utf8ToByteString(text: string): string {
  return !NON_ASCII.test(text) ? text : Buffer.from(text, "utf8").toString("latin1");
}

/** The text whose UTF-8 encoding byte string `key` holds; undefined when the bytes are not UTF-8. */
export function byteStringToUtf8(key: string): string | undefined {
  if (!NON_ASCII.test(key)) return key;
  try {
    return STRICT_UTF8.decode(Buffer.from(key, "latin1"));
  } catch {
    return undefined;
  }
}

/** Options of `storeKeyReader`. */
export interface StoreKeyReaderOptions {
  /** Most keys per `multiGet` (default 4096). */
  batch?: number;
}

/**
 * A reader over a `Store`: a pipelined `check` per key, then `multiGet` of those that exist. A key
 * deleted in between reads as missing (the `multiGet` is bounded by a short timeout, then retried per key).
 */
export function storeKeyReader(store: Store, options: StoreKeyReaderOptions = {}): KeyReader {
  const batch = options.batch ?? 4096;
  if (!Number.isSafeInteger(batch) || batch < 1) {
    throw new InvalidArgumentError(`batch must be a positive integer, got ${String(options.batch)}`);
  }
  const readBatch = async (keys: readonly string[], call?: CallOptions) => {
    const present = await Promise.all(keys.map((k) => store.check([k], call)));
    const have = keys.filter((_, i) => present[i]);
    let values: (Uint8Array | undefined)[];
    try {
      values = have.length === 0 ? [] : await store.multiGet(have, { ...call, timeoutMs: 2000 });
    } catch (err) {
      if (!hasErrorCode(err, ErrorCode.Timeout)) throw err;
      values = await Promise.all(
        have.map((k) =>
          store.get(k, { ...call, timeoutMs: 1000 }).catch((e: unknown) => {
            if (hasErrorCode(e, ErrorCode.Timeout)) return undefined;
            throw e;
          }),
        ),
      );
    }
    let j = 0;
    return present.map((p) => (p ? values[j++] : undefined));
  };
  return {
    async read(keys, call) {
      const out: (Uint8Array | undefined)[] = [];
      for (let i = 0; i < keys.length; i += batch)
        out.push(...(await readBatch(keys.slice(i, i + batch), call)));
      return out;
    },
    async list(call) {
      try {
        return await store.listKeys(call);
      } catch (err) {
        // rdzv's client refuses in the v1 dialect; PyTorch servers before 2.10 drop the connection on it.
        if (hasErrorCode(err, ErrorCode.InvalidArgument) || hasErrorCode(err, ErrorCode.Store))
          return undefined;
        if (!hasErrorCode(err, ErrorCode.Connection)) throw err;
        await store.check(["rdzv/"], call); // still reachable: the server only cannot list
        return undefined;
      }
    },
  };
}
