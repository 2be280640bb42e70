/**
 * Client-side incremental decoder of TCPStore replies. Replies carry no type or id: the client knows what
 * it asked, so it tells the decoder the shape of each reply it expects, in order. In tagged mode (rdzv's
 * `TAGGED_REPLIES` extension) each reply is preceded by a `ReplyTag` byte, and `WAIT_ASYNC` completions
 * (tag `WaitDone`, u32 id) and `GET_ASYNC` ones (tag `GetDone`, u32 id, value) arrive between the in-order
 * replies; a request that failed on the server gets a `Failed` frame (its reason) instead of its reply.
 */

import { ByteReader, ProtocolError, StreamBuffer } from "./byte-reader.js";
import {
  AuthResponse,
  DEFAULT_PROTOCOL_LIMITS,
  MAX_FAILED_REASON_BYTES,
  type ProtocolLimits,
  ReplyTag,
} from "./protocol.js";

/** The shape of one expected reply. */
export type ReplyShape =
  | { readonly kind: "u8" }
  /** AUTH's: a u8 response, and after `Throttled` a u32 (ms until the address may try again). */
  | { readonly kind: "auth" }
  | { readonly kind: "u32" }
  | { readonly kind: "i64" }
  | { readonly kind: "value" }
  | { readonly kind: "values"; readonly count: number }
  | { readonly kind: "queuePop" }
  | { readonly kind: "keyList" };

/** A decoded reply. */
export type Reply =
  | { readonly kind: "u8"; readonly value: number }
  | { readonly kind: "auth"; readonly value: AuthReply }
  | { readonly kind: "u32"; readonly value: number }
  | { readonly kind: "i64"; readonly value: bigint }
  | { readonly kind: "value"; readonly value: Uint8Array }
  | { readonly kind: "values"; readonly value: Uint8Array[] }
  | { readonly kind: "queuePop"; readonly value: Uint8Array | undefined }
  | { readonly kind: "keyList"; readonly value: string[] }
  /** Tagged mode only: the `WAIT_ASYNC` with this id is over. */
  | { readonly kind: "waitDone"; readonly value: number }
  /** Tagged mode only: the `GET_ASYNC` with this id read `value`. */
  | { readonly kind: "getDone"; readonly value: number; readonly data: Uint8Array }
  /** Tagged mode only: the expected in-order request failed (and changed nothing) for this reason. */
  | { readonly kind: "failed"; readonly value: string };

/** An AUTH reply: the `AuthResponse`, and for `Throttled` the ms until the address may try again (else 0). */
export interface AuthReply {
  readonly response: number;
  readonly retryAfterMs: number;
}

/** Decodes a reply stream, one expected shape at a time. */
export class ReplyDecoder {
  readonly #input = new StreamBuffer();
  readonly #reader = new ByteReader();
  #needed = 1;
  readonly limits: Readonly<ProtocolLimits>;
  /** Whether replies carry a `ReplyTag` byte (set once the server acknowledged `TAGGED_REPLIES`). */
  tagged = false;

  constructor(limits: Partial<ProtocolLimits> = {}) {
    this.limits = { ...DEFAULT_PROTOCOL_LIMITS, ...limits };
  }

  get bufferedBytes(): number {
    return this.#input.bufferedBytes;
  }

  push(chunk: Buffer): void {
    this.#input.push(chunk);
  }

  /**
   * Decodes a reply of `shape` (in tagged mode: or a `waitDone` or `getDone`, which come whatever is
   * expected), or returns `undefined` when more bytes are needed. `shape` undefined: no in-order reply is
   * expected, so only those may come. Throws `ProtocolError`.
   */
  next(shape: ReplyShape | undefined): Reply | undefined {
    // MULTI_GET of no keys has an empty reply: it is complete before any byte arrives (never tagged).
    if (shape?.kind === "values" && shape.count === 0) return { kind: "values", value: [] };
    const input = this.#input;
    if (input.bufferedBytes < this.#needed) return undefined;
    const r = this.#reader;
    input.begin(r);
    const reply = this.tagged ? this.decodeTagged(r, shape) : shape && this.decode(r, shape);
    this.#needed = input.end(r, reply !== undefined);
    return reply;
  }

  private decodeTagged(r: ByteReader, shape: ReplyShape | undefined): Reply | undefined {
    const tag = r.u8();
    if (tag === ReplyTag.WaitDone) {
      const id = r.u32();
      return id === undefined ? undefined : { kind: "waitDone", value: id };
    }
    if (tag === ReplyTag.GetDone) {
      const id = r.u32();
      const data = id === undefined ? undefined : this.value(r);
      return data === undefined ? undefined : { kind: "getDone", value: id!, data };
    }
    if (tag === ReplyTag.InOrder || tag === ReplyTag.Failed) {
      if (shape === undefined) throw new ProtocolError("an in-order reply with no request pending");
      if (tag === ReplyTag.InOrder) return this.decode(r, shape);
      const n = r.length(MAX_FAILED_REASON_BYTES, "failure reason length");
      const reason = n === undefined ? undefined : r.bytes(n);
      return reason === undefined
        ? undefined
        : { kind: "failed", value: Buffer.from(reason).toString("utf8") };
    }
    if (tag === undefined) return undefined;
    throw new ProtocolError(`unknown reply tag ${tag}`);
  }

  private decode(r: ByteReader, shape: ReplyShape): Reply | undefined {
    switch (shape.kind) {
      case "u8": {
        const value = r.u8();
        return value === undefined ? undefined : { kind: "u8", value };
      }
      case "auth": {
        const response = r.u8();
        if (response !== AuthResponse.Throttled) {
          return response === undefined ? undefined : { kind: "auth", value: { response, retryAfterMs: 0 } };
        }
        const retryAfterMs = r.u32();
        return retryAfterMs === undefined ? undefined : { kind: "auth", value: { response, retryAfterMs } };
      }
      case "u32": {
        const value = r.u32();
        return value === undefined ? undefined : { kind: "u32", value };
      }
      case "i64": {
        const value = r.i64();
        return value === undefined ? undefined : { kind: "i64", value };
      }
      case "value": {
        const value = this.value(r);
        return value === undefined ? undefined : { kind: "value", value };
      }
      case "values": {
        const values: Uint8Array[] = [];
        for (let i = 0; i < shape.count; i++) {
          const v = this.value(r);
          if (v === undefined) return undefined;
          values.push(v);
        }
        return { kind: "values", value: values };
      }
      case "queuePop": {
        const len = r.count(Number.MAX_SAFE_INTEGER, "queue length");
        if (len === undefined) return undefined;
        if (len === 0) return { kind: "queuePop", value: undefined };
        const value = this.value(r);
        return value === undefined ? undefined : { kind: "queuePop", value };
      }
      case "keyList": {
        const n = r.count(Number.MAX_SAFE_INTEGER, "key count");
        if (n === undefined) return undefined;
        const keys: string[] = [];
        for (let i = 0; i < n; i++) {
          const len = r.length(this.limits.maxKeyBytes, "key length");
          const key = len === undefined ? undefined : r.byteString(len);
          if (key === undefined) return undefined;
          keys.push(key);
        }
        return { kind: "keyList", value: keys };
      }
    }
  }

  private value(r: ByteReader): Uint8Array | undefined {
    const n = r.length(this.limits.maxValueBytes, "value length");
    return n === undefined ? undefined : r.bytes(n);
  }
}
