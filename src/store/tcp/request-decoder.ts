/**
 * Server-side incremental decoder of TCPStore requests: bytes in, `Request`s out, no sockets. It detects the
 * dialect from a connection's first bytes (docs/tcpstore-compat.md, "One server for both protocol
 * generations"), enforces the v2 handshake and the size limits, and never buffers more than one message
 * beyond what it was given.
 */

import { ByteReader, ProtocolError, StreamBuffer } from "./byte-reader.js";
import {
  COMMAND_BY_OPCODE,
  DEFAULT_PROTOCOL_LIMITS,
  Dialect,
  type ProtocolLimits,
  type Request,
  VALIDATION_MAGIC,
} from "./protocol.js";

const MAGIC_LE = [0xce, 0xf7, 0x85, 0x3c] as const;

/** Decodes one connection's request stream. */
export class RequestDecoder {
  #dialect: Dialect | undefined;
  #validated = false;
  readonly #input = new StreamBuffer();
  readonly #reader = new ByteReader();
  /** Bytes that must be buffered before the next decode attempt can succeed. */
  #needed = 1;
  readonly limits: Readonly<ProtocolLimits>;

  constructor(limits: Partial<ProtocolLimits> = {}) {
    this.limits = { ...DEFAULT_PROTOCOL_LIMITS, ...limits };
  }

  /** The dialect, once the first bytes decided it. */
  get dialect(): Dialect | undefined {
    return this.#dialect;
  }

  /** Bytes received but not yet decoded. */
  get bufferedBytes(): number {
    return this.#input.bufferedBytes;
  }

  /** Adds received bytes. */
  push(chunk: Buffer): void {
    this.#input.push(chunk);
  }

  /**
   * The next complete request, or `undefined` when more bytes are needed.
   * Throws `ProtocolError` on malformed input; the connection must then be closed.
   */
  next(): Request | undefined {
    const input = this.#input;
    if (input.bufferedBytes < this.#needed) return undefined;
    const reader = this.#reader;
    input.begin(reader);
    if (this.#dialect === undefined && !this.detect(reader.buf, reader.pos)) {
      reader.release();
      return undefined;
    }
    const request = this.decodeOne(reader);
    this.#needed = input.end(reader, request !== undefined);
    return request;
  }

  /** Decides the dialect; false when more bytes are needed to decide. */
  private detect(buf: Buffer, start: number): boolean {
    if (buf[start] !== 0x00) {
      this.#dialect = Dialect.V1;
      return true;
    }
    if (buf.length - start < 5) {
      this.#needed = 5;
      return false;
    }
    const isMagic = MAGIC_LE.every((b, i) => buf[start + i + 1] === b);
    this.#dialect = isMagic ? Dialect.V2 : Dialect.V1;
    return true;
  }

  private decodeOne(r: ByteReader): Request | undefined {
    const opcode = r.u8();
    if (opcode === undefined) return undefined;
    const dialect = this.#dialect!;
    const type = COMMAND_BY_OPCODE[dialect][opcode];
    if (type === undefined) {
      throw new ProtocolError(`unknown ${dialect} opcode 0x${opcode.toString(16).padStart(2, "0")}`);
    }
    if (dialect === Dialect.V2) {
      if (!this.#validated && type !== "validate") {
        throw new ProtocolError(`v2 client sent ${type} before VALIDATE`);
      }
      if (this.#validated && type === "validate") throw new ProtocolError("v2 client sent VALIDATE twice");
    }
    const { maxKeysPerRequest } = this.limits;
    switch (type) {
      case "validate": {
        const magic = r.u32();
        if (magic === undefined) return undefined;
        if (magic !== VALIDATION_MAGIC) throw new ProtocolError(`bad VALIDATE magic 0x${magic.toString(16)}`);
        this.#validated = true;
        return { type, magic };
      }
      case "set":
      case "append":
      case "queuePush":
      case "onDisconnectSet": {
        const key = this.key(r);
        const value = key === undefined ? undefined : this.value(r);
        return value === undefined ? undefined : { type, key: key!, value };
      }
      case "compareSet": {
        const key = this.key(r);
        const expected = key === undefined ? undefined : this.value(r);
        const desired = expected === undefined ? undefined : this.value(r);
        return desired === undefined ? undefined : { type, key: key!, expected: expected!, desired };
      }
      case "get":
      case "watchKey":
      case "deleteKey":
      case "queuePop":
      case "queueLen":
      case "onDisconnectClear": {
        const key = this.key(r);
        return key === undefined ? undefined : { type, key };
      }
      case "add": {
        const key = this.key(r);
        const delta = key === undefined ? undefined : r.i64();
        return delta === undefined ? undefined : { type, key: key!, delta };
      }
      case "barrier": {
        const key = this.key(r);
        const worldSize = key === undefined ? undefined : r.i64();
        return worldSize === undefined ? undefined : { type, key: key!, worldSize };
      }
      case "check":
      case "wait":
      case "multiGet": {
        const n = r.length(maxKeysPerRequest, `${type} key count`);
        const keys = n === undefined ? undefined : this.keys(r, n);
        return keys === undefined ? undefined : { type, keys };
      }
      case "multiSet": {
        const n = r.count(maxKeysPerRequest, "multiSet key count");
        if (n === undefined) return undefined;
        const keys: string[] = [];
        const values: Uint8Array[] = [];
        for (let i = 0; i < n; i++) {
          const key = this.key(r);
          const value = key === undefined ? undefined : this.value(r);
          if (value === undefined) return undefined;
          keys.push(key!);
          values.push(value);
        }
        return { type, keys, values };
      }
      case "auth": {
        // A token is a secret of a few dozen bytes: bounded like a key, not like a value.
        const n = r.length(this.limits.maxKeyBytes, "auth token length");
        const token = n === undefined ? undefined : r.bytes(n);
        return token === undefined ? undefined : { type, token };
      }
      case "ping": {
        const nonce = r.u32();
        return nonce === undefined ? undefined : { type, nonce };
      }
      case "waitAsync": {
        const id = r.u32();
        const n = id === undefined ? undefined : r.length(maxKeysPerRequest, "waitAsync key count");
        const keys = n === undefined ? undefined : this.keys(r, n);
        return keys === undefined ? undefined : { type, id: id!, keys };
      }
      case "cancelAsync": {
        const id = r.u32();
        return id === undefined ? undefined : { type, id };
      }
      case "getAsync": {
        const id = r.u32();
        const key = id === undefined ? undefined : this.key(r);
        return key === undefined ? undefined : { type, id: id!, key };
      }
      case "getNumKeys":
      case "cancelWait":
      case "listKeys":
      case "taggedReplies":
        return { type };
    }
  }

  private key(r: ByteReader): string | undefined {
    const n = r.length(this.limits.maxKeyBytes, "key length");
    return n === undefined ? undefined : r.byteString(n);
  }

  private value(r: ByteReader): Uint8Array | undefined {
    const n = r.length(this.limits.maxValueBytes, "value length");
    return n === undefined ? undefined : r.bytes(n);
  }

  private keys(r: ByteReader, n: number): string[] | undefined {
    const keys: string[] = [];
    for (let i = 0; i < n; i++) {
      const key = this.key(r);
      if (key === undefined) return undefined;
      keys.push(key);
    }
    return keys;
  }
}
