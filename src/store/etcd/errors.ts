/** Maps etcd3 (gRPC) errors to rdzv's coded errors at the boundary. */

import { isBrokenCircuitError } from "cockatiel";
import {
  ClientClosedError,
  EtcdAuthenticationFailedError,
  EtcdInvalidAuthTokenError,
  EtcdPermissionDeniedError,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCUnauthenticatedError,
  isRecoverableError,
} from "etcd3";
import {
  ErrorCode,
  RendezvousAuthError,
  RendezvousConnectionError,
  RendezvousError,
  RendezvousTimeoutError,
  StoreError,
} from "../../errors.js";

/**
 * `err` as an rdzv error: deadline -> `RDZV_TIMEOUT`; authentication or permission -> `RDZV_AUTH`; a
 * closed client -> `RDZV_RESOURCE_CLOSED`; anything etcd3 deems recoverable (unavailable member, broken
 * stream) -> `RDZV_CONNECTION`; the rest -> `RDZV_STORE`. rdzv errors pass through unchanged.
 */
export function mapEtcdError(err: unknown, what: string, hosts: readonly string[]): RendezvousError {
  if (err instanceof RendezvousError) return err;
  // gRPC ends a failed connect's message with "Resolution note: " and nothing after it when name
  // resolution had nothing to say: dropped, so the message does not end in a dangling label.
  const message = (err instanceof Error ? err.message : String(err)).replace(/\s*Resolution note:\s*$/, "");
  const where = `etcd at ${hosts.join(",")}`;
  if (err instanceof GRPCDeadlineExceededError) {
    return new RendezvousTimeoutError(`${what}: ${where} did not answer in time`, { cause: err });
  }
  if (
    err instanceof EtcdAuthenticationFailedError ||
    err instanceof EtcdInvalidAuthTokenError ||
    err instanceof EtcdPermissionDeniedError ||
    err instanceof GRPCUnauthenticatedError
  ) {
    return new RendezvousAuthError(`${what}: ${where} refused the credentials: ${message}`, { cause: err });
  }
  if (err instanceof ClientClosedError) {
    return new StoreError(`${what}: the etcd client is closed`, ErrorCode.ResourceClosed, { cause: err });
  }
  if (isTooLarge(err)) {
    return new StoreError(
      `${what}: ${where} refused the request as too large (etcd's --max-request-bytes, 1.5 MiB by default): ${message}`,
      ErrorCode.LimitExceeded,
      { cause: err },
    );
  }
  if (
    err instanceof Error &&
    (isRecoverableError(err) || isUnsent(err) || /unavailable|ECONNREFUSED|No connection/i.test(message))
  ) {
    return new RendezvousConnectionError(`${what}: cannot reach ${where}: ${message}`, { cause: err });
  }
  return new StoreError(`${what}: ${where} failed: ${message}`, ErrorCode.Store, { cause: err });
}

/**
 * Whether `err` says etcd could not answer now (a member down or unreachable, a broken stream, a leader
 * election), as opposed to a refusal, a wrong request, or a missed deadline (which says nothing about a
 * member's health, and leaves no time to try again).
 */
export function isMemberFailure(err: unknown): boolean {
  return (
    err instanceof Error &&
    isRecoverableError(err) &&
    !(err instanceof GRPCDeadlineExceededError) &&
    !isOwnCancel(err) &&
    !isTooLarge(err)
  );
}

/**
 * Whether `err` says the request was too big: etcd's own "request is too large" (over its
 * --max-request-bytes), or gRPC's RESOURCE_EXHAUSTED "received message larger than max" (over the
 * member's gRPC limit, --max-request-bytes plus 512 KiB), which etcd3 counts as recoverable. Sending it
 * again fails the same way, and it says nothing about the member's health.
 */
export function isTooLarge(err: unknown): boolean {
  return (
    err instanceof Error && /etcdserver: request is too large|message larger than max/i.test(err.message)
  );
}

/** Whether `err` is gRPC's status for a call this process cancelled itself ("Cancelled on client"). */
export function isOwnCancel(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  return (code === 1 || err instanceof GRPCCancelledError) && /Cancelled on client/i.test(err.message);
}

/**
 * Whether `err` is etcd's "leader changed": the member answered, but the cluster elected a new leader
 * while the request waited. It says nothing about that member's health.
 */
export function isLeaderChange(err: unknown): boolean {
  return err instanceof Error && /etcdserver: leader changed/.test(err.message);
}

/**
 * Whether `err` proves the call never left this process: etcd3 found every member's circuit open, or
 * gRPC had no connection to send it on.
 */
export function isUnsent(err: unknown): boolean {
  return isBrokenCircuitError(err) || (err instanceof Error && /No connection established/.test(err.message));
}
