/** Maps ioredis errors to rdzv's coded errors at the boundary. */

import {
  ErrorCode,
  RendezvousAuthError,
  RendezvousConnectionError,
  RendezvousError,
  StoreError,
} from "../../errors.js";

/**
 * `err` as an rdzv error: a refused password (`NOAUTH`, `WRONGPASS`) -> `RDZV_AUTH`; the scripts' own
 * errors -> `RDZV_STORE`; any other server reply -> `RDZV_STORE`; everything else (closed or refused
 * connections, retries exhausted) -> `RDZV_CONNECTION`. rdzv errors pass through unchanged.
 */
export function mapRedisError(err: unknown, what: string, address: string): RendezvousError {
  if (err instanceof RendezvousError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const name = err instanceof Error ? err.name : "";
  if (/^(NOAUTH|WRONGPASS)/.test(message)) {
    return new RendezvousAuthError(`${what}: Redis at ${address} refused the credentials: ${message}`, {
      cause: err,
    });
  }
  if (name === "ReplyError") {
    const text = message.replace(/^ERR /, "");
    return new StoreError(`${what}: ${text}`, ErrorCode.Store, { cause: err });
  }
  return new RendezvousConnectionError(`${what}: cannot reach Redis at ${address}: ${message}`, {
    cause: err,
  });
}
