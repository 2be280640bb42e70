/**
 * Encoders for TCPStore messages, both directions: requests (client side, through `RequestWriter`) and
 * replies (server side). Pure functions from values to bytes.
 */

import { RequestWriter } from "./client-encode.js";
import { AuthResponse, type Dialect, type Request } from "./protocol.js";

/** Initial buffer of a one-shot `encodeRequest` (it grows for bigger requests). */
const ONE_SHOT_BYTES = 256;

/** Accumulates a message as a list of buffers and joins them once. */
export class MessageWriter {
  private readonly parts: Buffer[] = [];
  private size = 0;

  private push(b: Buffer): this {
    this.parts.push(b);
    this.size += b.length;
    return this;
  }

  u8(v: number): this {
    const b = Buffer.allocUnsafe(1);
    b[0] = v;
    return this.push(b);
  }

  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(v >>> 0, 0);
    return this.push(b);
  }

  /** A u64 length or count. */
  u64(n: number): this {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64LE(BigInt(n), 0);
    return this.push(b);
  }

  i64(n: bigint): this {
    const b = Buffer.allocUnsafe(8);
    b.writeBigInt64LE(BigInt.asIntN(64, n), 0);
    return this.push(b);
  }

  /** A byte-string key, length-prefixed. */
  key(key: string): this {
    const bytes = Buffer.from(key, "latin1");
    return this.u64(bytes.length).push(bytes);
  }

  /** A value, length-prefixed. */
  value(value: Uint8Array): this {
    const bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return this.u64(bytes.length).push(bytes);
  }

  toBuffer(): Buffer {
    return this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size);
  }
}

/**
 * Encodes one request in `dialect`. Throws `InvalidArgumentError` when the dialect lacks the command.
 * The client's `RequestWriter` does the encoding (one implementation for both); this is its one-shot form.
 */
export function encodeRequest(dialect: Dialect, req: Request): Buffer {
  const writer = new RequestWriter(ONE_SHOT_BYTES);
  writer.write(dialect, req);
  return writer.take();
}

/** Reply: one byte (CHECK, WAIT, BARRIER, CANCEL_WAIT, WATCH registration, extension acks). */
export function encodeU8Reply(v: number): Buffer {
  return Buffer.from([v]);
}

/** AUTH reply of a throttled address: `AuthResponse.Throttled`, then the ms until it may try again (u32). */
export function encodeAuthThrottledReply(retryAfterMs: number): Buffer {
  const ms = Math.min(Math.max(Math.ceil(retryAfterMs), 0), 0xffff_ffff);
  return Buffer.concat([encodeU8Reply(AuthResponse.Throttled), encodeU32Reply(ms)]);
}

/** Reply: a signed 64-bit integer (ADD, GETNUMKEYS, DELETE_KEY, QUEUE_LEN). */
export function encodeI64Reply(n: bigint | number): Buffer {
  return new MessageWriter().i64(BigInt(n)).toBuffer();
}

/** Reply: the PING nonce. */
export function encodeU32Reply(n: number): Buffer {
  return new MessageWriter().u32(n).toBuffer();
}

/** Reply: one value (GET, COMPARE_SET). */
export function encodeValueReply(value: Uint8Array): Buffer {
  return new MessageWriter().value(value).toBuffer();
}

/** Reply: n values back to back, no count (MULTI_GET). */
export function encodeValuesReply(values: readonly Uint8Array[]): Buffer {
  const w = new MessageWriter();
  for (const v of values) w.value(v);
  return w.toBuffer();
}

/** Reply: QUEUE_POP, the length before the pop and, when it was > 0, the head value. */
export function encodeQueuePopReply(lengthBefore: number, head: Uint8Array | undefined): Buffer {
  const w = new MessageWriter().i64(BigInt(lengthBefore));
  if (lengthBefore > 0 && head !== undefined) w.value(head);
  return w.toBuffer();
}

/** Reply: LIST_KEYS, i64 count then the keys. */
export function encodeKeyListReply(keys: readonly string[]): Buffer {
  const w = new MessageWriter().i64(BigInt(keys.length));
  for (const k of keys) w.key(k);
  return w.toBuffer();
}

/** v1 watch notification: event type, key, old value, new value. */
export function encodeWatchNotification(
  event: number,
  key: string,
  oldValue: Uint8Array,
  newValue: Uint8Array,
): Buffer {
  return new MessageWriter().u8(event).key(key).value(oldValue).value(newValue).toBuffer();
}
