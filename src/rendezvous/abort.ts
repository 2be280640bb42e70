/** Abort checks of the dynamic rendezvous. */

import { AbortedError } from "../errors.js";

/**
 * Rejects with `AbortedError` once `signal` fired. Quick (non-blocking) store calls run without the
 * signal, checked after them instead: a call given a signal or a timeout leaves the TCP client's pipelined
 * fast path for a timer and an abort listener per request, which dominated the client's CPU with
 * thousands of nodes per process. They are bounded by the store's own timeout all the same.
 */
export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new AbortedError("the rendezvous call was aborted", { cause: signal.reason });
}
