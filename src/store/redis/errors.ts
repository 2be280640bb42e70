/** Maps ioredis errors to rdzv's coded errors at the boundary. */

import {
  ErrorCode,
  RendezvousAuthError,
  RendezvousConnectionError,
  RendezvousError,
  StoreError,
} from "../../errors.js";

/**
 * `err` as an rdzv error: a refused password (`NOAUTH`, `WRONGPASS`) or a server certificate that does not
 * verify -> `RDZV_AUTH`; a key holding
 * another Redis type than a string (`WRONGTYPE`, or the scripts' "RDZV_WRONGTYPE <i>" for `keys[i - 1]`)
 * -> `RDZV_STORE` naming the key; the scripts' own errors -> `RDZV_STORE`; any other server reply ->
 * `RDZV_STORE`; everything else (closed or refused connections, retries exhausted) -> `RDZV_CONNECTION`.
 * rdzv errors pass through unchanged. `keys` are the store keys of the call, for the messages.
 */
export function mapRedisError(
  err: unknown,
  what: string,
  address: string,
  keys: readonly string[] = [],
): RendezvousError {
  if (err instanceof RendezvousError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const name = err instanceof Error ? err.name : "";
  const wrongType = /(?:RDZV_WRONGTYPE (\d+))|WRONGTYPE/.exec(message);
  if (wrongType !== null) {
    const key = keys[wrongType[1] === undefined ? 0 : Number(wrongType[1]) - 1];
    const which = key === undefined ? "a key" : `key ${JSON.stringify(key)}`;
    return new StoreError(
      `${what}: ${which} holds a Redis value of another type than string (a list, a hash, ...), which ` +
        "rdzv never writes: another Redis client wrote it there",
      ErrorCode.Store,
      { cause: err },
    );
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? "";
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT_ALTNAME/.test(code)) {
    // As rdzv's TCP store: a certificate that does not verify is refused credentials, not an outage.
    return new RendezvousAuthError(
      `${what}: the TLS certificate of Redis at ${address} does not verify: ${message}`,
      { cause: err },
    );
  }
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
