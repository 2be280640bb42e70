/**
 * Request encoding, the one implementation (`encodeRequest` in encode.ts is its one-shot form): requests
 * are encoded straight into one growing scratch buffer, and each `take()` copies out a single buffer for
 * the socket. The client's write path gathers a tick's requests this way, with no buffer allocation per
 * field, which dominated the client's cost under pipelining.
 */

import { ErrorCode, InvalidArgumentError, StoreError } from "../../errors.js";
import { type Dialect, type ProtocolLimits, type Request, V1_OPCODES, V2_OPCODES } from "./protocol.js";

const INITIAL_BYTES = 64 * 1024;
/** A scratch buffer grown past this is dropped after the flush instead of kept. */
const KEEP_BYTES = 4 * 1024 * 1024;

/** Accumulates encoded requests until the next flush. */
export class RequestWriter {
  readonly #initialBytes: number;
  readonly #limits: Readonly<ProtocolLimits> | undefined;
  #buf: Buffer;
  #len = 0;

  /**
   * `initialBytes`: the scratch buffer's starting size (it doubles as needed). `limits`: a request over them
   * throws `StoreError` (code `RDZV_LIMIT_EXCEEDED`, naming the limit) instead of being written, so a client
   * learns why rather than seeing the server close the connection.
   */
  constructor(initialBytes = INITIAL_BYTES, limits?: Readonly<ProtocolLimits>) {
    this.#initialBytes = initialBytes;
    this.#limits = limits;
    this.#buf = Buffer.allocUnsafe(initialBytes);
  }

  /** Bytes written since the last `take()`. */
  get length(): number {
    return this.#len;
  }

  /** Appends `req` in `dialect`. Throws `InvalidArgumentError` when the dialect lacks the command. */
  write(dialect: Dialect, req: Request): void {
    const opcode = (dialect === "v1" ? V1_OPCODES : V2_OPCODES)[req.type];
    if (opcode === undefined) {
      throw new InvalidArgumentError(`the ${dialect} TCPStore protocol has no ${req.type} command`);
    }
    const start = this.#len;
    try {
      this.#u8(opcode);
      this.#body(req);
    } catch (err) {
      this.#len = start;
      throw err;
    }
  }

  /** The bytes written so far, copied into a buffer of their own; the writer is empty afterwards. */
  take(): Buffer {
    const out = Buffer.allocUnsafeSlow(this.#len);
    this.#buf.copy(out, 0, 0, this.#len);
    this.#len = 0;
    if (this.#buf.length > KEEP_BYTES) this.#buf = Buffer.allocUnsafe(this.#initialBytes);
    return out;
  }

  /** Drops everything written since the last `take()`. */
  clear(): void {
    this.#len = 0;
  }

  #body(req: Request): void {
    switch (req.type) {
      case "validate":
        this.#u32(req.magic);
        break;
      case "ping":
        this.#u32(req.nonce);
        break;
      case "cancelAsync":
        this.#u32(req.id);
        break;
      case "getAsync":
        this.#u32(req.id);
        this.#key(req.key);
        break;
      case "waitAsync":
        this.#count(req.type, req.keys.length);
        this.#u32(req.id);
        this.#u64(req.keys.length);
        for (const k of req.keys) this.#key(k);
        break;
      case "set":
      case "append":
      case "queuePush":
      case "onDisconnectSet":
        this.#key(req.key);
        this.#value(req.value);
        break;
      case "auth":
        this.#value(req.token);
        break;
      case "compareSet":
        this.#key(req.key);
        this.#value(req.expected);
        this.#value(req.desired);
        break;
      case "get":
      case "watchKey":
      case "deleteKey":
      case "queuePop":
      case "queueLen":
      case "onDisconnectClear":
        this.#key(req.key);
        break;
      case "add":
        this.#key(req.key);
        this.#i64(req.delta);
        break;
      case "barrier":
        this.#key(req.key);
        this.#i64(req.worldSize);
        break;
      case "check":
      case "wait":
      case "multiGet":
        this.#count(req.type, req.keys.length);
        this.#u64(req.keys.length);
        for (const k of req.keys) this.#key(k);
        break;
      case "multiSet":
        this.#count(req.type, req.keys.length);
        this.#u64(req.keys.length);
        req.keys.forEach((k, i) => {
          this.#key(k);
          this.#value(req.values[i]!);
        });
        break;
      case "getNumKeys":
      case "cancelWait":
      case "listKeys":
      case "taggedReplies":
        break;
    }
  }

  #count(what: string, n: number): void {
    const max = this.#limits?.maxKeysPerRequest;
    if (max !== undefined && n > max) this.#tooBig(`${what} of ${n} keys`, "maxKeysPerRequest", max);
  }

  #tooBig(what: string, limit: string, max: number): never {
    throw new StoreError(`${what} exceeds ${limit} (${max})`, ErrorCode.LimitExceeded);
  }

  #reserve(n: number): number {
    const at = this.#len;
    if (at + n > this.#buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, at + n, 64));
      this.#buf.copy(grown, 0, 0, at);
      this.#buf = grown;
    }
    this.#len = at + n;
    return at;
  }

  // Each writer reserves before touching `#buf`: reserving may replace it.
  #u8(v: number): void {
    const at = this.#reserve(1);
    this.#buf[at] = v;
  }

  #u32(v: number): void {
    const at = this.#reserve(4);
    this.#buf.writeUInt32LE(v >>> 0, at);
  }

  /** A u64 length or count (< 2^53). */
  #u64(n: number): void {
    const at = this.#reserve(8);
    this.#buf.writeUInt32LE(n % 0x1_0000_0000, at);
    this.#buf.writeUInt32LE(Math.floor(n / 0x1_0000_0000), at + 4);
  }

  #i64(n: bigint): void {
    const at = this.#reserve(8);
    this.#buf.writeBigInt64LE(BigInt.asIntN(64, n), at);
  }

  /** A byte-string (latin1) key, length-prefixed. */
  #key(key: string): void {
    const max = this.#limits?.maxKeyBytes;
    if (max !== undefined && key.length > max)
      this.#tooBig(`a key of ${key.length} bytes`, "maxKeyBytes", max);
    this.#u64(key.length);
    const at = this.#reserve(key.length);
    this.#buf.write(key, at, key.length, "latin1");
  }

  #value(value: Uint8Array): void {
    const max = this.#limits?.maxValueBytes;
    if (max !== undefined && value.length > max) {
      this.#tooBig(`a value of ${value.length} bytes`, "maxValueBytes", max);
    }
    this.#u64(value.length);
    const at = this.#reserve(value.length);
    this.#buf.set(value, at);
  }
}
