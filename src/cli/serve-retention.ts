/**
 * `rdzv serve --run-ttl DURATION`: the run retention option, its help text, and starting retention
 * (src/server/run-retention.ts) on the server's engine.
 */

import type { Logger } from "../log.js";
import { type RunRetention, startRunRetention } from "../server/run-retention.js";
import type { KvEngine } from "../store/kv-engine.js";
import { durationOption } from "./args.js";

/** parseArgs definitions of the retention option. */
export const RETENTION_OPTIONS = {
  "run-ttl": { type: "string" },
} as const;

/** Default of `--run-ttl`: a day. */
export const DEFAULT_RUN_TTL_MS = 24 * 3_600_000;

/** Help lines of the retention option. */
export const RETENTION_HELP = `  --run-ttl DURATION       delete a rendezvous run once none of its keys was written for DURATION
                           (seconds, or 30m, 24h, 7d; default 24h; 0 keeps every run): its keys in
                           rdzv's layout (rdzv/<run id>/...) or torchrun's (torch.rendezvous.<run id>
                           and its rounds' keys), no other key. Live agents write every few seconds;
                           after a restart every run's clock starts anew
`;

/** The parsed values of `RETENTION_OPTIONS`. */
export interface RetentionValues {
  "run-ttl"?: string | undefined;
}

/** The TTL `--run-ttl` asks for, ms; 0 when disabled. Throws `UsageError` naming the option. */
export function runTtlMs(values: RetentionValues): number {
  return durationOption("run-ttl", values["run-ttl"], DEFAULT_RUN_TTL_MS, "keeps every run");
}

/** Starts retention on `engine` with `ttlMs` (undefined when 0: disabled). */
export function startServeRetention(
  engine: KvEngine,
  ttlMs: number,
  logger: Logger,
): RunRetention | undefined {
  return ttlMs === 0 ? undefined : startRunRetention(engine, { ttlMs, logger });
}
