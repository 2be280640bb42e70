/** `rdzv serve --run-ttl`: parsing, and real `rdzv serve` processes with retention on and off. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { serveFailure, startServe } from "../../test/helpers/serve-process.js";
import { ErrorCode } from "../errors.js";
import { utf8ToByteString } from "../server/key-reader.js";
import { startRunRetention } from "../server/run-retention.js";
import { KvEngine } from "../store/kv-engine.js";
import { connectTCPStore, type TCPStore } from "../store/tcp/client.js";
import { createServeLogger } from "./serve-log.js";
import { DEFAULT_RUN_TTL_MS, runTtlMs } from "./serve-retention.js";

describe("rdzv serve --run-ttl", () => {
  it("takes whole seconds or a number with s, m, h or d; 0 disables; the default is a day", () => {
    assert.equal(runTtlMs({}), DEFAULT_RUN_TTL_MS);
    assert.equal(DEFAULT_RUN_TTL_MS, 86_400_000);
    const cases: [string, number][] = [
      ["0", 0],
      ["0h", 0],
      ["90", 90_000],
      ["45s", 45_000],
      ["30m", 1_800_000],
      ["24h", 86_400_000],
      [" 7d ", 604_800_000],
    ];
    for (const [value, ms] of cases) assert.equal(runTtlMs({ "run-ttl": value }), ms, value);
  });

  it("rejects anything else with an error naming the flag and the value", () => {
    for (const value of ["", "abc", "-5", "1.5h", "5x", "1e3", "h", "24 h", "99999999999999d"]) {
      assert.throws(
        () => runTtlMs({ "run-ttl": value }),
        (err: Error & { code?: string }) =>
          err.code === ErrorCode.InvalidArgument &&
          err.message.startsWith("--run-ttl must be a duration") &&
          err.message.includes(JSON.stringify(value)),
        value,
      );
    }
  });

  it("logs one line per expired run, with its id escaped, its key count and idle time", async () => {
    const lines: string[] = [];
    const engine = new KvEngine();
    let clock = 0;
    const retention = startRunRetention(engine, {
      ttlMs: 60_000,
      sweepIntervalMs: 3_600_000,
      now: () => clock,
      logger: createServeLogger("info", (line) => lines.push(line)),
    });
    try {
      const id = "evil\n\u009b31m\u202ejob";
      for (const path of ["open", "r0/hb/0", "r0/store/MASTER_ADDR"]) {
        engine.set(`/${utf8ToByteString(`rdzv/${id}/${path}`)}`, Buffer.from("1"));
      }
      assert.deepEqual(await retention.sweep(), []);
      clock = 90_000;
      assert.deepEqual(await retention.sweep(), [id]);
      assert.equal(lines.length, 1);
      const [line = ""] = lines;
      assert.doesNotMatch(line, /[\n\u009b\u202e]/);
      assert.ok(line.includes('"runId":"evil\\n\\u009b31m\\u202ejob"'), line);
      assert.match(line, /INFO rdzv store: run expired .*"layout":"rdzv","keys":3,"idleS":90,"ttlS":60/);
    } finally {
      retention.close();
    }
  });

  it("a bad value stops rdzv serve before it listens, with a usage error", { timeout: 30_000 }, async () => {
    const { code, output } = await serveFailure(["--run-ttl", "3 days"]);
    assert.equal(code, 2, output);
    assert.match(output, /--run-ttl must be a duration.*got "3 days"/);
    assert.doesNotMatch(output, /listening/);
  });

  it("a real server deletes an idle run after the TTL and keeps user keys; with 0 it keeps the run", {
    timeout: 60_000,
  }, async () => {
    await using short = await startServe(["--run-ttl", "1s"]);
    await using never = await startServe(["--run-ttl", "0"]);
    const clients: TCPStore[] = [];
    try {
      for (const port of [short.port, never.port]) {
        const c = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 10_000 });
        clients.push(c);
        await c.add("rdzv/idle/open", 0);
        await c.add("rdzv/idle/r0/hb/0", 1);
        await c.set("torch.rendezvous.tidle", "state");
        await c.set("worker/attempt_0/rank0", "user");
      }
      const [a, b] = clients as [TCPStore, TCPStore];
      const start = Date.now();
      while ((await a.listKeys()).some((k) => k.startsWith("rdzv/") || k.startsWith("torch."))) {
        assert.ok(Date.now() - start < 40_000, `runs still there: ${(await a.listKeys()).join(" ")}`);
        await sleep(100);
      }
      assert.deepEqual(await a.listKeys(), ["worker/attempt_0/rank0"]);
      // As long again on the server without retention, and longer than its TTL would have been.
      await sleep(Math.max(Date.now() - start, 1500));
      assert.deepEqual((await b.listKeys()).sort(), [
        "rdzv/idle/open",
        "rdzv/idle/r0/hb/0",
        "torch.rendezvous.tidle",
        "worker/attempt_0/rank0",
      ]);
    } finally {
      for (const c of clients) await c.close();
    }
  });
});
