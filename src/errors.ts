/**
 * Error types of rdzv. Every error carries a stable string `code`; callers branch on `code`
 * (or on the subclass), never on message text.
 *
 * Mirrors PyTorch's `torch.distributed.elastic.rendezvous.api` error hierarchy
 * (`RendezvousError`, `RendezvousClosedError`, `RendezvousTimeoutError`, ...), plus store errors.
 */

/** Every error code rdzv raises. */
export const ErrorCode = {
  /** Generic rendezvous failure. */
  Rendezvous: "RDZV_ERROR",
  /** The rendezvous was closed (PyTorch `RendezvousClosedError`). */
  Closed: "RDZV_CLOSED",
  /** A rendezvous or store operation ran past its deadline. */
  Timeout: "RDZV_TIMEOUT",
  /** The backend or store server could not be reached, or the connection broke. */
  Connection: "RDZV_CONNECTION",
  /** The rendezvous state is corrupt or inconsistent. */
  State: "RDZV_STATE",
  /** The node left the rendezvous on purpose (shutdown). */
  GracefulExit: "RDZV_GRACEFUL_EXIT",
  /** The operation was aborted through an `AbortSignal`. */
  Aborted: "RDZV_ABORTED",
  /** Bad arguments or options. */
  InvalidArgument: "RDZV_INVALID_ARGUMENT",
  /** A store operation failed on the server side (e.g. `add` on a non-numeric value). */
  Store: "RDZV_STORE",
  /** A configured limit was exceeded (key/value size, connections, waiters). */
  LimitExceeded: "RDZV_LIMIT_EXCEEDED",
  /** Malformed bytes on the wire. */
  Protocol: "RDZV_PROTOCOL",
  /** A non-blocking queue pop found the queue empty. */
  QueueEmpty: "RDZV_QUEUE_EMPTY",
  /** The resource was closed by its owner. */
  ResourceClosed: "RDZV_RESOURCE_CLOSED",
  /** Authentication failed: a missing or wrong shared-secret token, or a TLS certificate that does not verify. */
  Auth: "RDZV_AUTH",
} as const;

/** Union of all error code strings. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Options accepted by every rdzv error constructor. */
export interface RendezvousErrorOptions {
  cause?: unknown;
}

/** Base class of every error rdzv throws. */
export class RendezvousError extends Error {
  readonly code: ErrorCode;

  constructor(message: string, code: ErrorCode = ErrorCode.Rendezvous, options?: RendezvousErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.name = new.target.name;
  }
}

/** The rendezvous is closed: no further rounds will form. */
export class RendezvousClosedError extends RendezvousError {
  constructor(message = "The rendezvous is closed.", options?: RendezvousErrorOptions) {
    super(message, ErrorCode.Closed, options);
  }
}

/** A rendezvous or blocking store call did not complete in time. */
export class RendezvousTimeoutError extends RendezvousError {
  constructor(message: string, options?: RendezvousErrorOptions) {
    super(message, ErrorCode.Timeout, options);
  }
}

/** The store server or backend cannot be reached, or the connection dropped. */
export class RendezvousConnectionError extends RendezvousError {
  constructor(message: string, options?: RendezvousErrorOptions) {
    super(message, ErrorCode.Connection, options);
  }
}

/**
 * The store server is gone for good, not just unreachable for a while: a client's give-up rule decided so
 * (a TCP store refused connections for its whole `giveUp` budget, client-give-up.ts) or an agent found the
 * store unreachable past its bound (agent-monitor.ts). Its code stays `RDZV_CONNECTION`; callers that
 * retry connection errors branch on this class (`findStoreGone`) to stop retrying.
 */
export class RendezvousStoreGoneError extends RendezvousConnectionError {}

/**
 * The `RendezvousStoreGoneError` that `err` is or was caused by (its `cause` chain, 8 deep at most: callers
 * may wrap it), else `undefined`.
 */
export function findStoreGone(err: unknown): RendezvousStoreGoneError | undefined {
  return findCause(err, (e) => e instanceof RendezvousStoreGoneError);
}

/** The first of `err` and its `cause` chain (8 deep at most) that `test` accepts, else `undefined`. */
export function findCause<T extends Error>(err: unknown, test: (e: Error) => e is T): T | undefined;
export function findCause(err: unknown, test: (e: Error) => boolean): Error | undefined;
export function findCause(err: unknown, test: (e: Error) => boolean): Error | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (test(e)) return e;
  }
  return undefined;
}

/** The rendezvous state is corrupt, or a state transition is invalid. */
export class RendezvousStateError extends RendezvousError {
  constructor(message: string, options?: RendezvousErrorOptions) {
    super(message, ErrorCode.State, options);
  }
}

/** This node left the rendezvous on purpose (after `shutdown()`). */
export class RendezvousGracefulExitError extends RendezvousError {
  constructor(message = "The node exited the rendezvous gracefully.", options?: RendezvousErrorOptions) {
    super(message, ErrorCode.GracefulExit, options);
  }
}

/** A blocking call was cancelled through its `AbortSignal`. */
export class AbortedError extends RendezvousError {
  constructor(message = "The operation was aborted.", options?: RendezvousErrorOptions) {
    super(message, ErrorCode.Aborted, options);
  }
}

/** Bad arguments or options; the message names the bad value. */
export class InvalidArgumentError extends RendezvousError {
  constructor(message: string, options?: RendezvousErrorOptions) {
    super(message, ErrorCode.InvalidArgument, options);
  }
}

/** A store operation failed (the server rejected it, or the value was not what the operation needs). */
export class StoreError extends RendezvousError {
  constructor(message: string, code: ErrorCode = ErrorCode.Store, options?: RendezvousErrorOptions) {
    super(message, code, options);
  }
}

/**
 * The server refused this client's credentials (token or TLS certificate); retrying cannot help. Except
 * when `retryAfterMs` is set: the server's brute-force throttle refused this client's address without
 * checking its token (too many wrong tokens came from it), for that many ms more.
 */
export class RendezvousAuthError extends RendezvousError {
  /** Set when the address was throttled: ms until it may try again. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options?: RendezvousErrorOptions & { retryAfterMs?: number }) {
    super(message, ErrorCode.Auth, options);
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/** True when `err` is an rdzv error with the given code. */
export function hasErrorCode(err: unknown, code: ErrorCode): err is RendezvousError {
  return err instanceof RendezvousError && err.code === code;
}
