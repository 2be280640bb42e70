/**
 * The dashboard's token check: `Authorization: Bearer TOKEN`, or HTTP Basic with the token as password,
 * behind the per-address brute-force throttle it shares with the store's AUTH (auth-throttle.ts).
 */

import { timingSafeEqual } from "node:crypto";
import type { Logger } from "../log.js";
import type { AuthThrottle } from "../store/tcp/auth-throttle.js";
import { tokenDigest } from "../store/tcp/server-state.js";

/** What `DashboardAuth.check` decided about one request. */
export type AuthVerdict =
  | { readonly kind: "ok" }
  /** No credentials, or wrong ones (401). */
  | { readonly kind: "unauthorized" }
  /** The client's address is locked out for `retryAfterS` more seconds (429, `Retry-After`). */
  | { readonly kind: "throttled"; readonly retryAfterS: number };

/** Counts of a dashboard's refusals, for its metrics. */
export interface DashboardAuthCounters {
  /** A request presented a wrong token. */
  failed(): void;
  /** A request was refused unchecked: its address was locked out. */
  throttled(): void;
}

/** Checks requests against one token. */
export interface DashboardAuth {
  /**
   * The verdict on `request`, from `address` (the peer's IP; undefined when unknown, which all such
   * requests share as one address). A locked-out address is refused before its credentials are read; a
   * wrong token counts against its address, a request without credentials (a browser's first) does not.
   */
  check(request: Request, address: string | undefined): AuthVerdict;
}

/**
 * A check of `token` (SHA-256 digests compared with `timingSafeEqual`, so neither the token's bytes nor
 * its length leak), throttled by `throttle`. A lockout is logged once, to `logger`.
 */
export function createDashboardAuth(
  token: string,
  throttle: AuthThrottle,
  counters: DashboardAuthCounters,
  logger?: Logger,
): DashboardAuth {
  const expected = digest(token);
  return {
    check(request, address) {
      const waitMs = throttle.retryAfterMs(address);
      if (waitMs > 0) {
        counters.throttled();
        return { kind: "throttled", retryAfterS: Math.ceil(waitMs / 1000) };
      }
      const given = presentedToken(request);
      if (given === undefined) return { kind: "unauthorized" };
      const givenDigest = digest(given);
      if (timingSafeEqual(expected, givenDigest)) return { kind: "ok" };
      counters.failed();
      const { key, lockedMs } = throttle.failed(address, givenDigest);
      if (lockedMs > 0) {
        logger?.warn("dashboard: too many wrong auth tokens from one address: refusing it unchecked", {
          address: key,
          maxFailures: throttle.maxFailures,
          lockedMs,
        });
      }
      return { kind: "unauthorized" };
    },
  };
}

/**
 * The token a request presents: Bearer's, or Basic's password; "" for an `Authorization` header of
 * another form (a wrong token); undefined for none.
 */
function presentedToken(request: Request): string | undefined {
  const header = request.headers.get("authorization");
  if (header === null) return undefined;
  const match = /^(bearer|basic)\s+(\S+)\s*$/i.exec(header);
  if (match === null) return "";
  const given = match[2]!;
  if (match[1]!.toLowerCase() !== "basic") return given;
  const decoded = Buffer.from(given, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  return colon < 0 ? "" : decoded.slice(colon + 1);
}

/** The digest the store's AUTH compares (server-state.ts), of a token as UTF-8. */
function digest(text: string): Buffer {
  return tokenDigest(Buffer.from(text, "utf8"));
}
