/**
 * The TCP store client's give-up rule (option `giveUp`): when may a server that cannot be reached be
 * called gone for good? Only when nothing is there: every connect attempt for `afterRefusedMs` was refused
 * (nothing listens at the address: `ECONNREFUSED`) or the network answered that the host cannot be reached
 * (`EHOSTUNREACH`, `ENETUNREACH`). A connect that timed out may be a slow or overloaded server, and one that
 * connected but failed its handshake reached something: either ends the streak, and so do successes. Pure:
 * the session (client-session.ts) feeds it the outcome of each attempt and the time.
 */

import { findCause, InvalidArgumentError, RendezvousStoreGoneError } from "../../errors.js";

/** A streak of refused connects that a give-up rule judges. */
export interface Refusal {
  /** `host:port` of the server. */
  readonly peer: string;
  /** When the first attempt of the streak was refused (epoch ms). */
  readonly sinceMs: number;
  /** The last attempt's error code: `ECONNREFUSED`, `EHOSTUNREACH` or `ENETUNREACH`. */
  readonly code: string;
  /** The rule's budget, for messages. */
  readonly afterRefusedMs: number;
}

/** When a `TCPStore` stops retrying a server for good (option `giveUp`). */
export interface GiveUpRule {
  /**
   * How long every connect attempt must have been refused (no other outcome between) before the store
   * counts the server gone, ms > 0. Attempts are made by calls (a store with no calls tries nothing), so
   * the rule fires at the first refused attempt after this much time.
   */
  readonly afterRefusedMs: number;
  /**
   * The message of the error every call then fails with (say why the server is gone and what to do);
   * default: the peer, since when and for how long it refused.
   */
  readonly message?: (refusal: Refusal) => string;
}

/** What one connect attempt found. */
export type ConnectOutcome =
  | { readonly kind: "connected" }
  | { readonly kind: "refused"; readonly code: string }
  | { readonly kind: "other" };

/** An ongoing streak of refusals, or `undefined` when the last attempt was anything else. */
export type RefusalStreak = { readonly sinceMs: number; readonly code: string } | undefined;

const NOTHING_THERE = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH"]);

/**
 * The outcome of a failed attempt: `refused` when its error, or one in its `cause` chain (the client wraps
 * Node's socket errors), carries one of the "nothing there" codes; else `other`.
 */
export function classifyConnectFailure(err: unknown): ConnectOutcome {
  const refused = findCause(err, (e) => NOTHING_THERE.has(String((e as NodeJS.ErrnoException).code)));
  return refused === undefined
    ? { kind: "other" }
    : { kind: "refused", code: String((refused as NodeJS.ErrnoException).code) };
}

/** The streak after an attempt with `outcome` at `nowMs`: refusals extend it, anything else ends it. */
export function nextStreak(streak: RefusalStreak, outcome: ConnectOutcome, nowMs: number): RefusalStreak {
  if (outcome.kind !== "refused") return undefined;
  return { sinceMs: streak?.sinceMs ?? nowMs, code: outcome.code };
}

/** Whether `rule` counts the server gone after `streak`, at `nowMs`. */
export function givesUp(rule: GiveUpRule, streak: NonNullable<RefusalStreak>, nowMs: number): boolean {
  return nowMs - streak.sinceMs >= rule.afterRefusedMs;
}

/** The error of every call once `rule` gave up on `peer` after `streak`. */
export function goneError(
  rule: GiveUpRule,
  peer: string,
  streak: NonNullable<RefusalStreak>,
): RendezvousStoreGoneError {
  const refusal: Refusal = {
    peer,
    sinceMs: streak.sinceMs,
    code: streak.code,
    afterRefusedMs: rule.afterRefusedMs,
  };
  return new RendezvousStoreGoneError((rule.message ?? defaultMessage)(refusal));
}

function defaultMessage(r: Refusal): string {
  return (
    `the TCPStore server at ${r.peer} is gone: every connect was refused (${r.code}) since ` +
    `${new Date(r.sinceMs).toISOString()}, for longer than the ${r.afterRefusedMs}ms the store waits (giveUp)`
  );
}

/** Validates a `giveUp` option (the message names the bad value); `undefined` turns the rule off. */
export function checkGiveUpRule(rule: GiveUpRule | undefined): GiveUpRule | undefined {
  if (rule === undefined) return undefined;
  if (rule === null || typeof rule !== "object") {
    throw new InvalidArgumentError(`TCPStore giveUp must be an object, got ${String(rule)}`);
  }
  const { afterRefusedMs, message } = rule;
  if (typeof afterRefusedMs !== "number" || !Number.isFinite(afterRefusedMs) || afterRefusedMs <= 0) {
    throw new InvalidArgumentError(
      `TCPStore giveUp.afterRefusedMs must be a positive number of ms, got ${String(afterRefusedMs)}`,
    );
  }
  if (message !== undefined && typeof message !== "function") {
    throw new InvalidArgumentError(`TCPStore giveUp.message must be a function, got ${typeof message}`);
  }
  return rule;
}
