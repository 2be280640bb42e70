/** Maps etcd3 (gRPC) errors to rdzv's coded errors at the boundary. */

import {
  ClientClosedError,
  EtcdAuthenticationFailedError,
  EtcdInvalidAuthTokenError,
  EtcdPermissionDeniedError,
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
  const message = err instanceof Error ? err.message : String(err);
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
  if (
    err instanceof Error &&
    (isRecoverableError(err) || /unavailable|ECONNREFUSED|No connection/i.test(message))
  ) {
    return new RendezvousConnectionError(`${what}: cannot reach ${where}: ${message}`, { cause: err });
  }
  return new StoreError(`${what}: ${where} failed: ${message}`, ErrorCode.Store, { cause: err });
}
