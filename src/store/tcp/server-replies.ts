/**
 * The replies a server connection has produced but not written yet. They are written together, so that a
 * chunk of pipelined requests costs one write: small batches are joined into one buffer, big ones go out
 * as one `writev`, and big values are never copied on the way.
 */

import type { ReplyWriter } from "./server-writes.js";

const TWO_POW_32 = 2 ** 32;

/** Small batches are joined into one buffer; larger ones are written as one writev. */
const CONCAT_BYTES = 64 * 1024;
/** Values up to this size are copied into their reply's buffer. */
const INLINE_VALUE_BYTES = 1024;

/** Pending reply bytes of one connection. */
export class PendingReplies {
  #parts: Buffer[] = [];
  #bytes = 0;

  /** Bytes waiting to be written. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Buffers pushed so far (a position for `insertAt`). */
  get count(): number {
    return this.#parts.length;
  }

  /** Inserts `buf` before the buffer pushed at position `at`, if anything was pushed since. */
  insertAt(at: number, buf: Buffer): void {
    if (this.#parts.length <= at) return;
    if (at === this.#parts.length - 1) {
      const last = this.#parts[at]!;
      this.#parts[at] = buf;
      this.#parts.push(last);
    } else {
      this.#parts.splice(at, 0, buf);
    }
    this.#bytes += buf.length;
  }

  push(buf: Buffer): void {
    this.#parts.push(buf);
    this.#bytes += buf.length;
  }

  /** A signed 64-bit integer, little-endian. */
  i64(n: bigint): void {
    const buf = Buffer.allocUnsafe(8);
    const x = Number(n);
    if (Number.isSafeInteger(x)) {
      // Two 32-bit halves: several times cheaper than writeBigInt64LE, the same bytes.
      const high = Math.floor(x / TWO_POW_32);
      buf.writeUInt32LE(x - high * TWO_POW_32, 0);
      buf.writeInt32LE(high, 4);
    } else {
      buf.writeBigInt64LE(n, 0);
    }
    this.push(buf);
  }

  /**
   * A length-prefixed value. A small value is copied behind its length into one buffer (which costs less
   * than a buffer more, and a batch of replies is joined anyway); a bigger one is referenced, not copied.
   */
  value(value: Uint8Array): void {
    if (value.length <= INLINE_VALUE_BYTES) {
      const buf = Buffer.allocUnsafe(8 + value.length);
      buf.writeUInt32LE(value.length, 0);
      buf.writeUInt32LE(0, 4);
      buf.set(value, 8);
      this.push(buf);
      return;
    }
    const header = Buffer.allocUnsafe(8);
    header.writeUInt32LE(value.length >>> 0, 0);
    header.writeUInt32LE(Math.floor(value.length / 2 ** 32), 4);
    this.push(header);
    if (value.length > 0) this.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
  }

  /** Drops everything pending. */
  clear(): void {
    this.#parts = [];
    this.#bytes = 0;
  }

  /** Writes everything pending to `writer`; false when it asks the caller to wait for its drain. */
  writeTo(writer: ReplyWriter): boolean {
    const parts = this.#parts;
    const bytes = this.#bytes;
    if (parts.length === 0) return true;
    this.clear();
    if (parts.length === 1 || bytes <= CONCAT_BYTES) {
      return writer.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes));
    }
    return writer.writev(parts);
  }
}
