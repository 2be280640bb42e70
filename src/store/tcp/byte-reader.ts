/**
 * A cursor over a byte buffer for incremental decoding: every read returns `undefined` when the buffer ends
 * too early and records how many bytes in total would be needed, so a caller can wait for more data
 * without re-reading what it has.
 */

import { ErrorCode, RendezvousError } from "../../errors.js";

/** Malformed or oversized bytes on the wire. */
export class ProtocolError extends RendezvousError {
  constructor(
    message: string,
    code:
      | typeof ErrorCode.Protocol
      | typeof ErrorCode.LimitExceeded
      | typeof ErrorCode.Auth = ErrorCode.Protocol,
  ) {
    super(message, code);
  }
}

const TWO_POW_32 = 2 ** 32;
const EMPTY = Buffer.alloc(0);

/**
 * Values up to this size are copied by `slice` into a typed array of their own, which V8 keeps inside its
 * heap (its limit for on-heap typed arrays): the cheapest copy there is, and it pins nothing.
 */
const ON_HEAP_BYTES = 64;
/** Bigger values up to this size are copied into a shared slab (see `slabCopy`); bigger ones get their own. */
const SLAB_VALUE_BYTES = 4096;
const SLAB_BYTES = 16 * 1024;

/**
 * `Buffer.prototype.latin1Slice`, which `toString("latin1", ...)` calls after resolving its encoding name
 * (a sixth of a SET's decoding went to that); Node does not document it, so `toString` when it is missing.
 */
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice?: (start: number, end: number) => string })
  .latin1Slice;

let slab = new Uint8Array(0);
let slabUsed = 0;

/**
 * A copy of `n` bytes of `src` from `start`, in a shared slab. A typed array bigger than V8's on-heap
 * limit gets a backing store of its own, which costs 1.5-3 µs to make and free (a SET of a 65-byte value
 * cost the server 2.5 µs, of a 64-byte one 0.9); a view into a slab costs a tenth of that, as Node's
 * `Buffer.allocUnsafe` pool does for small buffers. The price is the same as that pool's: a value keeps its
 * whole slab alive (at most `SLAB_BYTES`) as long as it lives. The slab holds decoded values only, not
 * replies or reads, so a slab's neighbours are mostly values that arrived together and tend to live as
 * long (a round's keys, a process group's addresses).
 */
function slabCopy(src: Uint8Array, start: number, n: number): Uint8Array {
  if (slabUsed + n > slab.length) {
    slab = new Uint8Array(SLAB_BYTES);
    slabUsed = 0;
  }
  const at = slabUsed;
  slabUsed += n;
  const out = slab.subarray(at, at + n);
  out.set(src.subarray(start, start + n));
  return out;
}

/**
 * The received bytes an incremental decoder has not consumed yet. Chunks are kept as they arrive and
 * joined only when a decode attempt needs them contiguous, so a message split over many chunks is copied
 * once per attempt, and attempts are made only once enough bytes arrived (see `ByteReader.needed`).
 * Consuming advances an offset into the first chunk: decoding the requests of one read allocates nothing
 * per request.
 */
export class StreamBuffer {
  /** The first chunk with unconsumed bytes (EMPTY when nothing is buffered). */
  #head: Buffer = EMPTY;
  /** Bytes of `#head` already consumed. */
  #start = 0;
  /** Chunks received after `#head` (only while a message spans reads). */
  #tail: Buffer[] = [];
  #buffered = 0;

  /** Bytes received and not consumed. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /** Where the unconsumed bytes begin in `contiguous()`'s buffer. */
  get start(): number {
    return this.#start;
  }

  /** Adds received bytes (kept by reference). */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.#buffered === 0) this.#head = chunk;
    else this.#tail.push(chunk);
    this.#buffered += chunk.length;
  }

  /** A buffer holding every unconsumed byte from `start` on (to its end); empty when nothing is buffered. */
  contiguous(): Buffer {
    if (this.#tail.length > 0) {
      const head = this.#start === 0 ? this.#head : this.#head.subarray(this.#start);
      this.#head = Buffer.concat([head, ...this.#tail], this.#buffered);
      this.#tail = [];
      this.#start = 0;
    }
    return this.#head;
  }

  /** Points `reader` at the unconsumed bytes for one decode attempt. */
  begin(reader: ByteReader): void {
    reader.reset(this.contiguous(), this.#start);
  }

  /**
   * Ends `reader`'s attempt: a complete message's bytes are consumed; the reader lets go of the read once
   * nothing is left, or when the message is incomplete (its bytes stay here). Returns how many buffered
   * bytes the next attempt needs.
   */
  end(reader: ByteReader, complete: boolean): number {
    const start = this.#start;
    if (!complete) {
      const needed = reader.needed - start;
      reader.release();
      return needed;
    }
    this.consume(reader.pos - start);
    if (this.#buffered === 0) reader.release();
    return 1;
  }

  /** Drops the next `n` unconsumed bytes, which decoding used up. */
  consume(n: number): void {
    this.#buffered -= n;
    if (this.#buffered === 0) {
      this.#head = EMPTY;
      this.#start = 0;
    } else {
      this.#start += n;
    }
  }
}

/** Reads one message at a time; a decoder keeps one reader and `reset`s it for each attempt. */
export class ByteReader {
  buf: Buffer = EMPTY;
  /** Position of the next read. */
  pos = 0;
  /** After a failed read: the buffer length that read would have needed. */
  needed = 0;
  /** `buf` as a plain Uint8Array, whose `slice` copies without Buffer's subclass machinery (made on demand). */
  #bytes: Uint8Array | undefined;

  constructor(buf: Buffer = EMPTY, start = 0) {
    this.reset(buf, start);
  }

  /** Reads `buf` from `start` on. */
  reset(buf: Buffer, start: number): void {
    if (buf !== this.buf) {
      this.buf = buf;
      this.#bytes = undefined;
    }
    this.pos = start;
    this.needed = 0;
  }

  /** Lets go of the buffer (a decoder's reader must not keep a connection's last read alive). */
  release(): void {
    this.buf = EMPTY;
    this.#bytes = undefined;
  }

  private has(n: number): boolean {
    if (this.pos + n <= this.buf.length) return true;
    this.needed = this.pos + n;
    return false;
  }

  u8(): number | undefined {
    if (!this.has(1)) return undefined;
    return this.buf[this.pos++];
  }

  u32(): number | undefined {
    if (!this.has(4)) return undefined;
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  i64(): bigint | undefined {
    if (!this.has(8)) return undefined;
    const v = this.buf.readBigInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A u64 length or count, checked against `max` (the error names `what`). */
  length(max: number, what: string): number | undefined {
    if (!this.has(8)) return undefined;
    const buf = this.buf;
    const p = this.pos;
    // Byte by byte: `has` checked the bounds that readUInt32LE would check again.
    const lo = (buf[p]! | (buf[p + 1]! << 8) | (buf[p + 2]! << 16)) + buf[p + 3]! * 0x1000000;
    const hi = (buf[p + 4]! | (buf[p + 5]! << 8) | (buf[p + 6]! << 16)) + buf[p + 7]! * 0x1000000;
    this.pos = p + 8;
    const n = hi * TWO_POW_32 + lo;
    if (hi >= 0x200000 || n > max) {
      throw new ProtocolError(
        `${what} of ${hi === 0 ? n : `${hi}*2^32+${lo}`} exceeds the limit of ${max}`,
        ErrorCode.LimitExceeded,
      );
    }
    return n;
  }

  /** A signed 64-bit count, checked to be within 0..max. */
  count(max: number, what: string): number | undefined {
    const v = this.i64();
    if (v === undefined) return undefined;
    if (v < 0n || v > BigInt(max)) {
      throw new ProtocolError(
        `${what} of ${v} is outside 0..${max}`,
        v < 0n ? ErrorCode.Protocol : ErrorCode.LimitExceeded,
      );
    }
    return Number(v);
  }

  /** `n` raw bytes, copied out of the buffer (never a view of it: the buffer may be reused). */
  bytes(n: number): Uint8Array | undefined {
    if (!this.has(n)) return undefined;
    const buf = this.buf;
    const pos = this.pos;
    this.#bytes ??= new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
    const out =
      n > ON_HEAP_BYTES && n <= SLAB_VALUE_BYTES
        ? slabCopy(this.#bytes, pos, n)
        : this.#bytes.slice(pos, pos + n);
    this.pos = pos + n;
    return out;
  }

  /** `n` raw bytes as a byte string (latin1). */
  byteString(n: number): string | undefined {
    if (!this.has(n)) return undefined;
    const pos = this.pos;
    const s =
      latin1Slice === undefined
        ? this.buf.toString("latin1", pos, pos + n)
        : latin1Slice.call(this.buf, pos, pos + n);
    this.pos = pos + n;
    return s;
  }
}
