/** Polling for a condition in tests that watch other processes (files they write, output they print). */

import { setTimeout as delay } from "node:timers/promises";

/**
 * Resolves with `probe()`'s first value other than `undefined` and `false`, checked every 25 ms; rejects
 * with "timed out waiting for WHAT" after `timeoutMs`.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | false,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(25);
  }
}
