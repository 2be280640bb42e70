/**
 * The chaos soak: node processes run the dynamic rendezvous in a loop while the driver SIGKILLs,
 * restarts and hangs (SIGSTOP/SIGCONT) them at random; the checker then verifies every node's reports
 * (see test/chaos/checker.ts for the properties), over rdzv's TCP store and over etcd. Bounded: 45 s per
 * backend by default.
 *
 *   RDZV_CHAOS_SECONDS=600     run longer (per backend)
 *   RDZV_CHAOS_SEED=1234       replay a seed's fault schedule (printed on failure)
 *   RDZV_CHAOS_BACKEND=etcd    which backends (comma-separated names of CHAOS_BACKENDS: tcp, etcd, redis;
 *                              default DEFAULT_CHAOS_BACKENDS)
 *   RDZV_CHAOS_REPORT=FILE     write the figures (and the verdict) as JSON
 *   RDZV_CHAOS_TIMELINE=FILE   write the whole timeline (pass or fail), one line per event
 *
 * On failure the whole record (every report, fault and handler log line) is kept in a temporary file named
 * in the message and printed as a timeline (one line per event) for logs of machines nobody can look
 * into; the failure message itself carries the violations and the timeline around them, since a CI log
 * may keep only its tail.
 */

import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CHAOS_BACKENDS, DEFAULT_CHAOS_BACKENDS } from "./chaos/backends.js";
import { checkSoak } from "./chaos/checker.js";
import { runSoak } from "./chaos/driver.js";
import { failureExcerpt, timeline } from "./chaos/record.js";

const seconds = Number(process.env.RDZV_CHAOS_SECONDS ?? "45");
const seed = Number(process.env.RDZV_CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31));
const names = (process.env.RDZV_CHAOS_BACKEND ?? DEFAULT_CHAOS_BACKENDS.join(",")).split(",");
const SETTLE_DEADLINE_MS = 30_000;

if (!Number.isFinite(seconds) || seconds <= 0)
  throw new Error(`RDZV_CHAOS_SECONDS must be > 0, got ${seconds}`);
if (!Number.isSafeInteger(seed)) throw new Error(`RDZV_CHAOS_SEED must be an integer, got ${seed}`);

describe("chaos soak: nodes killed, restarted and hung at random", () => {
  for (const name of names) {
    const make = CHAOS_BACKENDS[name];
    it(`keeps every rendezvous property (${name}, ${seconds} s, seed ${seed})`, {
      timeout: seconds * 1000 + 5 * 60_000,
    }, async (t) => {
      assert.ok(
        make !== undefined,
        `unknown RDZV_CHAOS_BACKEND ${name}; known: ${Object.keys(CHAOS_BACKENDS)}`,
      );
      const record = await runSoak({
        backend: make(),
        seed,
        durationMs: seconds * 1000,
        nodes: 6,
        minNodes: 2,
        maxNodes: 5,
        settleDeadlineMs: SETTLE_DEADLINE_MS,
        log: (line) => t.diagnostic(line),
      });
      const verdict = checkSoak(record);
      t.diagnostic(`figures: ${JSON.stringify(verdict.stats)}`);
      if (process.env.RDZV_CHAOS_REPORT) {
        writeFileSync(
          process.env.RDZV_CHAOS_REPORT,
          JSON.stringify({ params: record.params, ...verdict }, null, 2),
        );
      }
      if (process.env.RDZV_CHAOS_TIMELINE) {
        writeFileSync(process.env.RDZV_CHAOS_TIMELINE, `${timeline(record).join("\n")}\n`);
      }
      if (verdict.violations.length > 0) {
        const kept = join(mkdtempSync(join(tmpdir(), "rdzv-chaos-")), "record.json");
        writeFileSync(kept, JSON.stringify(record));
        // The file stays on the machine that ran it (a CI runner): the log gets the whole story too.
        for (const line of timeline(record)) t.diagnostic(line);
        assert.fail(
          [
            `chaos soak failed (replay: RDZV_CHAOS_SEED=${seed} RDZV_CHAOS_BACKEND=${name}); record in ${kept}`,
            ...verdict.violations.map((v) => `violation: ${v}`),
            "timeline around it (ms from the soak's start):",
            ...failureExcerpt(record, verdict.violations),
          ].join("\n"),
        );
      }
      // A soak that formed no rounds or injected no faults proves nothing.
      assert.ok(verdict.stats.rounds >= 3, `only ${verdict.stats.rounds} rounds formed (seed ${seed})`);
      assert.ok((verdict.stats.faults.kill ?? 0) + (verdict.stats.faults.stop ?? 0) > 0, "no fault injected");
    });
  }
});
