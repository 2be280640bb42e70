/** Error messages of the TCPStore client's connections: requests described, socket errors mapped. */

import { RendezvousConnectionError, RendezvousError, StoreError } from "../../errors.js";
import { CounterValueError } from "../kv-engine.js";
import type { Request } from "./protocol.js";

/** Describes a request for error messages, keys shown as sent (with their `/`). */
export function describeRequest(req: Request): string {
  if ("key" in req) return `${req.type} ${printable(req.key)}`;
  if ("keys" in req) return `${req.type} [${req.keys.map(printable).join(", ")}]`;
  return req.type;
}

/** A byte-string key as readable text (UTF-8 decoded). */
export function printable(key: string): string {
  return Buffer.from(key, "latin1").toString("utf8");
}

/** A key as sent (a "/"-key, byte string) as its user wrote it: "/" stripped, UTF-8 decoded. */
export function userKey(key: string): string {
  return printable(key.startsWith("/") ? key.slice(1) : key);
}

/**
 * The error of a request that rdzv's server answered with a `Failed` frame (tagged connections): a
 * `StoreError` (`RDZV_STORE`; for an add, the `CounterValueError` every store throws) naming the key as its user wrote it, worded as every store words it
 * (`add "word": the stored value "hello" is not an integer`).
 */
export function requestFailed(req: Request, reason: string): RendezvousError {
  if (req.type === "add") return new CounterValueError(userKey(req.key), reason);
  const what = "key" in req ? `${req.type} ${JSON.stringify(userKey(req.key))}` : req.type;
  return new StoreError(`${what}: ${reason}`);
}

/** Maps a Node socket error (ECONNREFUSED, ECONNRESET, EPIPE, ETIMEDOUT, ...) to a connection error. */
export function socketError(peer: string, err: Error): RendezvousError {
  if (err instanceof RendezvousError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  return new RendezvousConnectionError(`TCPStore connection to ${peer} failed: ${code ?? err.message}`, {
    cause: err,
  });
}

/**
 * The error of pending requests when the server closed the connection; `head` is the oldest of them,
 * `asyncWaits` the number of `WAIT_ASYNC`s outstanding.
 */
export function closedByServer(peer: string, head: Request | undefined, asyncWaits = 0): RendezvousError {
  let message = `the TCPStore server at ${peer} closed the connection`;
  if (head !== undefined) message += ` while a reply to ${describeRequest(head)} was pending`;
  else if (asyncWaits > 0) message += ` while ${asyncWaits} wait(s) were pending`;
  if (head?.type === "add") message += " (likely because the stored value is not an integer)";
  else if (head !== undefined) {
    message +=
      " (the server stopped or restarted, or it closed the connection for a request that broke its limits:" +
      " key or value size, keys per request, waiters per connection, or on an rdzv server the store's total" +
      " size or a write its data directory could not record; it logs which)";
  } else if (asyncWaits > 0) {
    // A wait is registered by its request: the one just sent may have broken a limit.
    message +=
      " (the server stopped or restarted, or it closed the connection for a wait that broke its limits:" +
      " keys per request, waiters per connection; it logs which)";
  }
  return new RendezvousConnectionError(message);
}
