/** Timeouts and cancellation for blocking calls. */

import { AbortedError, InvalidArgumentError, RendezvousTimeoutError } from "../errors.js";
import type { CallOptions } from "./store.js";

/** Longest key a timeout message shows, in characters; a longer one is cut and its length given. */
const SHOWN_KEY_CHARS = 100;
/** Most keys a timeout message lists; the others are counted. */
const SHOWN_KEYS = 8;

/**
 * The message of a blocking call on keys that ran out of time, one form for every store: "get timeout
 * after 100ms, keys: a" (PyTorch's TCPStore says "wait timeout after 100ms, keys: /a" for any call that
 * waits; here `op` is the call the user made, and the keys are the user's, without the TCP wire's "/").
 * Bounded: at most 8 keys of at most 100 characters each are shown, control characters escaped.
 */
export function keysTimeoutMessage(op: string, keys: readonly string[]): (timeoutMs: number) => string {
  return (timeoutMs) => `${op} timeout after ${timeoutMs}ms, keys: ${shownKeys(keys)}`;
}

function shownKeys(keys: readonly string[]): string {
  const shown = keys.slice(0, SHOWN_KEYS).map(shownKey).join(", ");
  return keys.length > SHOWN_KEYS ? `${shown} (and ${keys.length - SHOWN_KEYS} more)` : shown;
}

function shownKey(key: string): string {
  const escaped = key.replace(/\p{Cc}/gu, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  const chars = [...escaped];
  if (chars.length <= SHOWN_KEY_CHARS) return escaped;
  return `${chars.slice(0, SHOWN_KEY_CHARS).join("")}... (${[...key].length} characters)`;
}

/** Validates a timeout in milliseconds (finite, >= 0), naming `what` in the error. */
export function checkTimeoutMs(timeoutMs: number, what = "timeoutMs"): number {
  if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
    throw new InvalidArgumentError(`${what} must be a finite number >= 0, got ${String(timeoutMs)}`);
  }
  return timeoutMs;
}

/**
 * The options of a wait's first read, a quick call: the longer of the store's timeout and the call's (a
 * short wait still gets its read done; a store whose default is 0 still serves a call that asks for
 * more), and the call's signal.
 */
export function firstReadOptions(options: CallOptions | undefined, storeTimeoutMs: number): CallOptions {
  const timeoutMs = Math.max(storeTimeoutMs, checkTimeoutMs(options?.timeoutMs ?? storeTimeoutMs));
  return options?.signal === undefined ? { timeoutMs } : { timeoutMs, signal: options.signal };
}

/** Throws an `AbortedError` when `signal` has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(undefined, { cause: signal.reason });
}

/**
 * Runs `start(settle)` and resolves or rejects with whatever it settles with, unless the timeout passes
 * (`RendezvousTimeoutError` with `describe()` as message) or the signal fires (`AbortedError`) first.
 * `cancel` runs when the call is given up, so the caller can drop its registration.
 */
export function blockingCall<T>(
  options: CallOptions | undefined,
  defaultTimeoutMs: number,
  describe: (timeoutMs: number) => string,
  start: (resolve: (value: T) => void, reject: (err: unknown) => void) => void,
  cancel: () => void,
): Promise<T> {
  const timeoutMs = checkTimeoutMs(options?.timeoutMs ?? defaultTimeoutMs);
  const signal = options?.signal;
  return new Promise<T>((resolve, reject) => {
    throwIfAborted(signal);
    let done = false;
    const finish = (): boolean => {
      if (done) return false;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      return true;
    };
    const onAbort = (): void => {
      if (!finish()) return;
      cancel();
      reject(new AbortedError(undefined, { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      if (!finish()) return;
      cancel();
      reject(new RendezvousTimeoutError(describe(timeoutMs)));
    }, timeoutMs);
    signal?.addEventListener("abort", onAbort, { once: true });
    start(
      (value) => {
        if (finish()) resolve(value);
      },
      (err) => {
        if (finish()) reject(err);
      },
    );
  });
}

/** Resolves after `ms` (timer unref'd); rejects with `AbortedError` when `signal` fires first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new AbortedError(undefined, { cause: signal.reason }));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new AbortedError(undefined, { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    timer.unref();
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
