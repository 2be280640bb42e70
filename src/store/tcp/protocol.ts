/**
 * PyTorch c10d TCPStore wire protocol: constants and message types shared by the server and the client.
 * Byte layouts are in encode.ts (requests and replies) and request-decoder.ts; where rdzv differs from
 * PyTorch's servers, and its extensions: docs/tcpstore-compat.md.
 *
 * Two dialects exist and are not interoperable in PyTorch itself:
 * - v1 (PyTorch <= 2.0): no handshake, opcodes 0..8 with WATCH_KEY = 7;
 * - v2 (PyTorch >= 2.1): first message VALIDATE + magic, opcodes 0..18.
 * rdzv's server detects the dialect per connection; rdzv's client speaks v2 by default.
 *
 * All integers are little-endian. Keys travel as length-prefixed raw bytes; in this module a key is a
 * "byte string": a JS string whose char codes are the key's bytes (latin1), so keys are exact and cheap to
 * use as Map keys.
 */

/** Protocol dialects. */
export const Dialect = { V1: "v1", V2: "v2" } as const;
export type Dialect = (typeof Dialect)[keyof typeof Dialect];

/** The VALIDATE magic number of the v2 handshake. */
export const VALIDATION_MAGIC = 0x3c85f7ce;

/** Dialect-independent command names. */
export const Command = {
  Validate: "validate",
  Set: "set",
  CompareSet: "compareSet",
  Get: "get",
  Add: "add",
  Check: "check",
  Wait: "wait",
  GetNumKeys: "getNumKeys",
  WatchKey: "watchKey",
  DeleteKey: "deleteKey",
  Append: "append",
  MultiGet: "multiGet",
  MultiSet: "multiSet",
  CancelWait: "cancelWait",
  Ping: "ping",
  QueuePush: "queuePush",
  QueuePop: "queuePop",
  QueueLen: "queueLen",
  ListKeys: "listKeys",
  Barrier: "barrier",
  /** rdzv extension (v2 only): have the server set a key when this connection closes. */
  OnDisconnectSet: "onDisconnectSet",
  /** rdzv extension (v2 only): drop an on-disconnect registration. */
  OnDisconnectClear: "onDisconnectClear",
  /** rdzv extension (v2 only): present the shared-secret token of a server that requires authentication. */
  Auth: "auth",
  /** rdzv extension (v2 only): every later reply of the connection is tagged (see `ReplyTag`). */
  TaggedReplies: "taggedReplies",
  /** rdzv extension (tagged connections): wait for keys without blocking the connection; no in-order reply. */
  WaitAsync: "waitAsync",
  /** rdzv extension (tagged connections): drop a `WAIT_ASYNC` or `GET_ASYNC` by id. */
  CancelAsync: "cancelAsync",
  /** rdzv extension (tagged connections): read a key once it exists without blocking the connection. */
  GetAsync: "getAsync",
} as const;
export type Command = (typeof Command)[keyof typeof Command];

/** v1 opcodes (PyTorch 1.x and 2.0). */
export const V1_OPCODES: Readonly<Partial<Record<Command, number>>> = {
  set: 0x00,
  compareSet: 0x01,
  get: 0x02,
  add: 0x03,
  check: 0x04,
  wait: 0x05,
  getNumKeys: 0x06,
  watchKey: 0x07,
  deleteKey: 0x08,
};

/**
 * v2 opcodes (PyTorch 2.1+; numbering is append-only upstream). 0x40 and up are rdzv's own extensions,
 * far from upstream's range; clients use them only after probing (see `EXTENSION_PROBE_KEY`).
 */
export const V2_OPCODES: Readonly<Partial<Record<Command, number>>> = {
  validate: 0x00,
  set: 0x01,
  compareSet: 0x02,
  get: 0x03,
  add: 0x04,
  check: 0x05,
  wait: 0x06,
  getNumKeys: 0x07,
  deleteKey: 0x08,
  append: 0x09,
  multiGet: 0x0a,
  multiSet: 0x0b,
  cancelWait: 0x0c,
  ping: 0x0d,
  queuePush: 0x0e,
  queuePop: 0x0f,
  queueLen: 0x10,
  listKeys: 0x11,
  barrier: 0x12,
  onDisconnectSet: 0x40,
  onDisconnectClear: 0x41,
  auth: 0x42,
  taggedReplies: 0x43,
  waitAsync: 0x44,
  cancelAsync: 0x45,
  getAsync: 0x46,
};

/** Indexed by opcode (0-255): an array, which the decoder reads once per request (cheaper than a Map). */
function invert(table: Readonly<Partial<Record<Command, number>>>): readonly (Command | undefined)[] {
  const out = new Array<Command | undefined>(256).fill(undefined);
  for (const [name, code] of Object.entries(table)) out[code as number] = name as Command;
  return out;
}

/** opcode -> command, per dialect (undefined for an opcode the dialect does not have). */
export const COMMAND_BY_OPCODE: Readonly<Record<Dialect, readonly (Command | undefined)[]>> = {
  v1: invert(V1_OPCODES),
  v2: invert(V2_OPCODES),
};

/**
 * A key that rdzv's server reports as present in CHECK (and nowhere else: it is not stored, counted or
 * listed). A client learns from `CHECK [probe]` whether it talks to an rdzv server with extensions, without
 * sending anything a PyTorch server would reject.
 */
export const EXTENSION_PROBE_KEY = "\u0000rdzv/ext/1";

/**
 * A key that rdzv's server reports as present in CHECK exactly when it requires authentication (AUTH before
 * anything but VALIDATE, PING and these probes). Like `EXTENSION_PROBE_KEY` it is never stored, and a
 * PyTorch server reports it absent. A client without a token learns from it why it would be refused.
 */
export const AUTH_PROBE_KEY = "\u0000rdzv/auth/1";

/**
 * AUTH replies; a connection that is not accepted is closed right after the reply. `Throttled` is followed
 * by a u32, the ms until this client's address may try again: too many wrong tokens came from it, and
 * this token was not checked (docs/security.md). rdzv clients older than it read it as a rejection.
 */
export const AuthResponse = { Accepted: 0, Rejected: 1, Throttled: 2 } as const;

/** CHECK replies. */
export const CheckResponse = { Ready: 0, NotReady: 1 } as const;
/** WAIT / BARRIER / CANCEL_WAIT replies. */
export const WaitResponse = { StopWaiting: 0, WaitCanceled: 1 } as const;
/** v1 watch notifications. */
export const WatchResponse = {
  KeyUpdated: 0,
  KeyCreated: 1,
  KeyDeleted: 2,
  KeyCallbackRegistered: 3,
} as const;
/**
 * Reply markers of a connection in tagged mode (after `TAGGED_REPLIES`): every reply the server writes is
 * preceded by one of them. `InOrder`: the next in-order reply follows, shaped as usual. `WaitDone`: a u32
 * id follows; the `WAIT_ASYNC` of that id is over (its keys all exist). `GetDone`: a u32 id and a value
 * (u64 length, bytes) follow; the `GET_ASYNC` of that id read it. `Failed`: the next in-order request
 * failed and changed nothing (an ADD or BARRIER on a value that is not a 64-bit integer); its reason
 * (u64 length, at most `MAX_FAILED_REASON_BYTES` of UTF-8) follows in place of its reply, and the
 * connection stays open. PyTorch's servers, and rdzv's on an untagged connection, close it instead.
 */
export const ReplyTag = { InOrder: 0, WaitDone: 1, GetDone: 2, Failed: 3 } as const;
/** The longest reason a `Failed` frame may carry; a longer one is a protocol error. */
export const MAX_FAILED_REASON_BYTES = 4096;
/** CANCEL_ASYNC replies: the wait was pending and is dropped, or nothing of that id was pending. */
export const CancelAsyncResponse = { Canceled: 1, NotPending: 0 } as const;
/** Acknowledgement byte of the rdzv extension commands. */
export const EXTENSION_ACK = 0;

/** A decoded request. Keys are byte strings (see module doc); values are raw bytes. */
export type Request =
  | { readonly type: "validate"; readonly magic: number }
  | { readonly type: "set"; readonly key: string; readonly value: Uint8Array }
  | {
      readonly type: "compareSet";
      readonly key: string;
      readonly expected: Uint8Array;
      readonly desired: Uint8Array;
    }
  | { readonly type: "get"; readonly key: string }
  | { readonly type: "add"; readonly key: string; readonly delta: bigint }
  | { readonly type: "check"; readonly keys: readonly string[] }
  | { readonly type: "wait"; readonly keys: readonly string[] }
  | { readonly type: "getNumKeys" }
  | { readonly type: "watchKey"; readonly key: string }
  | { readonly type: "deleteKey"; readonly key: string }
  | { readonly type: "append"; readonly key: string; readonly value: Uint8Array }
  | { readonly type: "multiGet"; readonly keys: readonly string[] }
  | { readonly type: "multiSet"; readonly keys: readonly string[]; readonly values: readonly Uint8Array[] }
  | { readonly type: "cancelWait" }
  | { readonly type: "ping"; readonly nonce: number }
  | { readonly type: "queuePush"; readonly key: string; readonly value: Uint8Array }
  | { readonly type: "queuePop"; readonly key: string }
  | { readonly type: "queueLen"; readonly key: string }
  | { readonly type: "listKeys" }
  | { readonly type: "barrier"; readonly key: string; readonly worldSize: bigint }
  | { readonly type: "onDisconnectSet"; readonly key: string; readonly value: Uint8Array }
  | { readonly type: "onDisconnectClear"; readonly key: string }
  | { readonly type: "auth"; readonly token: Uint8Array }
  | { readonly type: "taggedReplies" }
  | { readonly type: "waitAsync"; readonly id: number; readonly keys: readonly string[] }
  | { readonly type: "cancelAsync"; readonly id: number }
  | { readonly type: "getAsync"; readonly id: number; readonly key: string };

/** Limits a decoder enforces on incoming requests. */
export interface ProtocolLimits {
  /** Largest key in bytes (default 64 KiB). */
  maxKeyBytes: number;
  /** Largest value in bytes (default 64 MiB). */
  maxValueBytes: number;
  /** Most keys in one CHECK/WAIT/MULTI_GET/MULTI_SET (default 128 Ki, as PyTorch's libuv server). */
  maxKeysPerRequest: number;
}

/** Default protocol limits. Generous enough for every PyTorch client; bounded against garbage. */
export const DEFAULT_PROTOCOL_LIMITS: Readonly<ProtocolLimits> = {
  maxKeyBytes: 64 * 1024,
  maxValueBytes: 64 * 1024 * 1024,
  maxKeysPerRequest: 128 * 1024,
};

/** Converts a byte string (latin1) to bytes. */
export function byteStringToBytes(key: string): Buffer {
  return Buffer.from(key, "latin1");
}

/** Converts bytes to a byte string (latin1). */
export function bytesToByteString(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}
