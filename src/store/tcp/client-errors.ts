/** Error messages of the TCPStore client's connections: requests described, socket errors mapped. */

import { RendezvousConnectionError, RendezvousError } from "../../errors.js";
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
  else if (head !== undefined || asyncWaits > 0) {
    message +=
      " (a server closes a connection whose request breaks its limits: key or value size, keys per request," +
      " waiters per connection; an rdzv server also closes one whose write its data directory could not" +
      " record; it logs which)";
  }
  return new RendezvousConnectionError(message);
}
