/**
 * `rdzv serve --data-dir` across real restarts of the server process (the compiled CLI): SIGKILL and
 * restart keep every key, and every multi-set whole or not at all; a bad last record is dropped with a warning; corruption elsewhere stops the
 * server with an error naming the file; a directory in use is refused; and a server SIGKILLed and
 * restarted while a round runs loses no completed round: the round survives, and the next one is the
 * next number, with the membership everyone agrees on (test/chaos/node.ts processes, test/chaos/checker.ts).
 */

import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { encodeMutation, HEADER_BYTES } from "../src/store/journal-codec.js";
import { connectTCPStore } from "../src/store/tcp/client.js";
import { checkSoak } from "./chaos/checker.js";
import type { FaultEvent, NodeEvent } from "./chaos/record.js";
import { RDZV_MAIN, type ServeProcess, serveFailure, startServe } from "./helpers/serve-process.js";

const NODE = fileURLToPath(new URL("./chaos/node.js", import.meta.url));
const dirs: string[] = [];
const children: ChildProcessWithoutNullStreams[] = [];
const servers: ServeProcess[] = [];
after(async () => {
  for (const c of children) c.kill("SIGKILL");
  for (const s of servers) await s.kill();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "rdzv-data-"));
  dirs.push(dir);
  return dir;
}

const text = (b: Uint8Array): string => Buffer.from(b).toString("utf8");

/** Writes one of every kind of mutation through rdzv's client. */
async function writeSome(port: number): Promise<void> {
  await using c = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 10_000 });
  await c.set("plain", "v1");
  await c.add("counter", 7);
  await c.append("log", "a");
  await c.append("log", "b");
  await c.multiSet(["m/1", "m/2"], ["x", "y"]);
  await c.compareSet("cas", "", "won");
  await c.set("doomed", "1");
  await c.deleteKey("doomed");
  await c.queuePush("jobs", "j1");
  await c.queuePush("jobs", "j2");
  await c.queuePop("jobs");
}

/**
 * A data directory that an rdzv serve SIGKILLed after `writeSome` left: the directory, its journal-0 and
 * that journal's bytes.
 */
async function killedAfterSome(): Promise<{ dir: string; journal: string; intact: Buffer }> {
  const dir = dataDir();
  await using first = await startServe(["--data-dir", dir]);
  await writeSome(first.port);
  await first.kill("SIGKILL");
  const journal = join(dir, "journal-0");
  return { dir, journal, intact: readFileSync(journal) };
}

async function assertSome(port: number): Promise<void> {
  await using c = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 10_000 });
  assert.equal(text(await c.get("plain")), "v1");
  assert.equal(text(await c.get("counter")), "7");
  assert.equal(text(await c.get("log")), "ab");
  assert.deepEqual((await c.multiGet(["m/1", "m/2"])).map(text), ["x", "y"]);
  assert.equal(text(await c.get("cas")), "won");
  assert.equal(await c.check(["doomed"]), false);
  assert.equal(await c.queueLen("jobs"), 1);
  assert.equal(text(await c.queuePop("jobs")), "j2");
}

describe("rdzv serve --data-dir across restarts", () => {
  it("keeps every key when SIGKILLed and restarted on the same directory", async () => {
    const dir = dataDir();
    await using first = await startServe(["--data-dir", dir]);
    await writeSome(first.port);
    assert.equal(await first.kill("SIGKILL"), "SIGKILL");
    await using second = await startServe(["--data-dir", dir], { port: first.port });
    await assertSome(second.port);
    assert.match(second.output(), /6 keys restored/);
    assert.equal(await second.kill("SIGTERM"), 0);
    await using third = await startServe(["--data-dir", dir, "--fsync", "always"]);
    await using c = await connectTCPStore({ host: "127.0.0.1", port: third.port, timeoutMs: 10_000 });
    assert.equal(text(await c.get("plain")), "v1");
    await c.close();
    await third.kill("SIGTERM");
  });

  it("restores every multi-set all or nothing when SIGKILLed in the middle of a stream of them", async () => {
    const dir = dataDir();
    const keys = Array.from({ length: 32 }, (_, i) => `group/${i}`);
    const pad = "x".repeat(200);
    for (let trial = 0; trial < 4; trial++) {
      await using server = await startServe(["--data-dir", dir, "--fsync", "never"]);
      const client = await connectTCPStore({ host: "127.0.0.1", port: server.port, timeoutMs: 10_000 });
      // Every multi-set writes one round number to all the keys: a half-restored one leaves two.
      let round = trial * 1_000_000;
      let stopped = false;
      let done = 0;
      const stream = (async () => {
        while (!stopped) {
          const burst = Array.from({ length: 64 }, () => {
            const value = `${round++} ${pad}`;
            return client.multiSet(
              keys,
              keys.map(() => value),
            );
          });
          const settled = await Promise.allSettled(burst);
          done += settled.filter((r) => r.status === "fulfilled").length;
        }
      })();
      const journal = join(dir, "journal-0");
      const startSize = statSync(journal).size;
      while (done === 0 || statSync(journal).size < startSize + 2_000_000 + trial * 300_000) await delay(5);
      assert.equal(await server.kill("SIGKILL"), "SIGKILL");
      stopped = true;
      await client.close().catch(() => {}); // fails the calls in flight at once
      await stream;
      await using after = await startServe(["--data-dir", dir]);
      await using reader = await connectTCPStore({ host: "127.0.0.1", port: after.port, timeoutMs: 10_000 });
      const values = new Set((await reader.multiGet(keys)).map((v) => text(v).split(" ")[0]));
      assert.equal(values.size, 1, `trial ${trial}: the keys hold rounds ${[...values].join(", ")}`);
      await reader.close();
      await after.kill("SIGTERM");
    }
  });

  it("drops a torn or damaged last record with a warning; refuses corruption elsewhere, naming the file", async () => {
    const { dir, journal, intact } = await killedAfterSome();
    appendFileSync(journal, Buffer.from([40, 0, 0, 0, 1, 2, 3, 4, 1, 3])); // a record cut short
    await using second = await startServe(["--data-dir", dir]);
    await assertSome(second.port);
    assert.match(second.output(), /torn last record/);
    assert.match(second.output(), /\(a last record cut short, 10 bytes, dropped\)/);
    await second.kill("SIGKILL");
    // A full-length last record whose checksum is wrong: damaged, not cut short; its bytes are kept.
    const damaged = Buffer.from([5, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 3, 1, 0, 0, 0]);
    const saved = join(dir, `journal-0.dropped-${statSync(journal).size}`);
    appendFileSync(journal, damaged);
    await using third = await startServe(["--data-dir", dir]);
    await using c = await connectTCPStore({ host: "127.0.0.1", port: third.port, timeoutMs: 10_000 });
    assert.equal(text(await c.get("cas")), "won");
    assert.match(third.output(), /damaged last record/);
    assert.ok(
      third.output().includes(`(a damaged last record of 13 bytes dropped; its bytes are in ${saved})`),
      third.output(),
    );
    assert.deepEqual(readFileSync(saved), damaged);
    await third.kill("SIGKILL");
    const bad = Buffer.from(intact);
    bad[30] = bad[30]! ^ 0x55; // inside the first record
    writeFileSync(journal, bad);
    const refused = await serveFailure(["--data-dir", dir]);
    assert.equal(refused.code, 1, refused.output);
    assert.match(refused.output, new RegExp(`${journal} is corrupt: bad record at byte 16`));
    writeFileSync(journal, ""); // as `: > journal-0`: not a fresh store
    const empty = await serveFailure(["--data-dir", dir]);
    assert.equal(empty.code, 1, empty.output);
    assert.match(empty.output, new RegExp(`${journal} is empty \\(0 bytes\\)`));
  });

  it("starts on a last record cut short inside a record-shaped value; --repair starts on a corrupt journal", async () => {
    const { dir, journal, intact } = await killedAfterSome();
    // A value holding the journal's own records, its record cut short in the middle of them.
    const carrier = encodeMutation({ op: "set", key: "/carrier", value: intact.subarray(HEADER_BYTES) });
    appendFileSync(journal, carrier.subarray(0, carrier.length - 20));
    await using second = await startServe(["--data-dir", dir]);
    await assertSome(second.port);
    assert.match(
      second.output(),
      /\(a last record cut short, \d+ bytes, dropped; its bytes are in .*dropped-/,
    );
    await second.kill("SIGKILL");

    const bad = readFileSync(journal); // assertSome's pop after `intact`
    const third = HEADER_BYTES + 8 + bad.readUInt32LE(HEADER_BYTES);
    const fourth = third + 8 + bad.readUInt32LE(third); // "plain" and "counter" come before
    bad[fourth + 9] = bad[fourth + 9]! ^ 0x40;
    writeFileSync(journal, bad);
    const refused = await serveFailure(["--data-dir", dir]);
    assert.equal(refused.code, 1, refused.output);
    assert.match(refused.output, new RegExp(`${journal} is corrupt: bad record at byte ${fourth} of`));
    assert.match(refused.output, /Nothing was changed\. To start anyway, run again with --repair/);
    assert.deepEqual(readFileSync(journal), bad);
    await using repaired = await startServe(["--data-dir", dir, "--repair"]);
    const saved = join(dir, `journal-0.dropped-${fourth}`);
    assert.ok(
      repaired
        .output()
        .includes(
          `(repaired: ${journal} is corrupt: bad record at byte ${fourth} of ${bad.length}: intact records follow`,
        ),
      repaired.output(),
    );
    assert.ok(
      repaired.output().includes(`kept the records before byte ${fourth}, dropped the`),
      repaired.output(),
    );
    assert.ok(repaired.output().includes(`; they are in ${saved})`), repaired.output());
    assert.deepEqual(readFileSync(saved), bad.subarray(fourth));
    await using c = await connectTCPStore({ host: "127.0.0.1", port: repaired.port, timeoutMs: 10_000 });
    assert.equal(text(await c.get("plain")), "v1");
    assert.equal(text(await c.get("counter")), "7");
    assert.equal(await c.check(["log"]), false, "the record at the damage and those after it are gone");
    await c.close();
    await repaired.kill("SIGTERM");
  });

  it("stops with a storage error naming the file when the journal cannot be written (a file-size limit)", async () => {
    const dir = dataDir();
    // 64 KiB of file for this server: a 100 KB value's record fails with EFBIG (Node ignores SIGXFSZ).
    const child = spawn(
      "bash",
      [
        "-c",
        'ulimit -f 64 && exec "$0" "$@"',
        process.execPath,
        RDZV_MAIN,
        "serve",
        "--port",
        "0",
        "--data-dir",
        dir,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    for (const stream of [child.stdout, child.stderr])
      stream.on("data", (c: Buffer) => (output += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    while (!/listening on \S+:(\d+)/.test(output)) {
      assert.equal(child.exitCode, null, output);
      await delay(20);
    }
    const port = Number(/listening on \S+:(\d+)/.exec(output)![1]);
    await using marker = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 10_000 });
    await marker.setOnDisconnect("gone", "1"); // run when the server closes connections
    await using writer = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 10_000 });
    await writer.set("small", "kept");
    await assert.rejects(writer.set("big", "x".repeat(100_000)), { code: "RDZV_CONNECTION" });
    assert.equal(await exited, 1, output);
    const file = join(dir, "journal-0");
    assert.ok(
      output.includes(
        `ERROR journal: storage error; every mutation is refused from now on {"file":"${file}","step":"write","errno":"EFBIG"`,
      ),
      output,
    );
    assert.ok(output.includes("stopping the server (exit status 1)"), output);
    assert.doesNotMatch(output, /bad input/);
    assert.doesNotMatch(output, /\n\s+at /, "no uncaught exception's stack");
    await using again = await startServe(["--data-dir", dir]);
    assert.match(again.output(), /a last record cut short, \d+ bytes, dropped/);
    await using reader = await connectTCPStore({ host: "127.0.0.1", port: again.port, timeoutMs: 10_000 });
    assert.equal(text(await reader.get("small")), "kept");
    assert.equal(await reader.check(["big"]), false);
  });

  it("refuses a data directory another live server holds, and bad options", async () => {
    const dir = dataDir();
    await using holder = await startServe(["--data-dir", dir]);
    const refused = await serveFailure(["--data-dir", dir]);
    assert.equal(refused.code, 1);
    assert.match(refused.output, new RegExp(`in use by process ${holder.child.pid}`));
    await holder.kill("SIGTERM");
    const usage = await serveFailure(["--data-dir", dir, "--fsync", "sometimes"]);
    assert.equal(usage.code, 2);
    assert.match(usage.output, /--fsync must be one of always, interval, never/);
    assert.equal((await serveFailure(["--fsync", "always"])).code, 2);
    const file = join(dir, "journal-0");
    const notDir = await serveFailure(["--data-dir", file]);
    assert.equal(notDir.code, 1);
    assert.match(notDir.output, new RegExp(`data directory ${file} is a file, not a directory`));
  });

  it("loses no completed round when the server is SIGKILLed and restarted during a round", {
    timeout: 120_000,
  }, async () => {
    const dir = dataDir();
    let server = await startServe(["--data-dir", dir]);
    servers.push(server);
    const port = server.port;
    const runId = "restart";
    const params = {
      backend: "c10d",
      endpoint: `127.0.0.1:${port}`,
      runId,
      minNodes: 2,
      maxNodes: 3,
      localAddr: "127.0.0.1",
      // Keep-alives must outlast the restart: 8 x 0.5 s before a silent member counts as dead.
      config: {
        is_host: false,
        read_timeout: 30,
        keep_alive_interval: 0.5,
        keep_alive_max_attempt: 8,
        // Round 0 completes at max = 3 at once; a last call longer than the three processes' start-up
        // spread on a busy machine keeps it from completing with two. Round 1 (two survivors) waits it out.
        last_call_timeout: 5,
      },
    };
    const events: NodeEvent[] = [];
    const faults: FaultEvent[] = [];
    const nodes = ["a", "b", "c"].map((id) => {
      const child = spawn(process.execPath, [NODE], {
        env: { ...process.env, CHAOS_ID: id, CHAOS_PARAMS: JSON.stringify(params) },
        stdio: ["pipe", "pipe", "pipe"],
      });
      children.push(child);
      createInterface({ input: child.stdout }).on("line", (line) =>
        events.push(JSON.parse(line) as NodeEvent),
      );
      faults.push({ kind: "spawn", id, t: Date.now() });
      return { id, child };
    });
    const until = async (what: string, done: () => boolean, timeoutMs = 30_000): Promise<void> => {
      const deadline = Date.now() + timeoutMs;
      while (!done()) {
        assert.ok(Date.now() < deadline, `${what}; events: ${JSON.stringify(events)}`);
        await delay(50);
      }
    };
    const reported = (ev: string, round: number) => events.filter((e) => e.ev === ev && e.round === round);
    await until("round 0 did not form", () => reported("members", 0).length === 3);

    assert.equal(await server.kill("SIGKILL"), "SIGKILL");
    server = await startServe(["--data-dir", dir], { port });
    servers.push(server);
    await using store = await connectTCPStore({ host: "127.0.0.1", port, timeoutMs: 10_000 });
    assert.ok(await store.check([`rdzv/${runId}/r0/outcome`]), "round 0's outcome was lost");
    // The members ride out the restart: their round goes on (nobody ends it, no round 1 forms).
    await delay(3000);
    assert.deepEqual(reported("ended", 0), [], "round 0 ended because of the restart");
    assert.deepEqual(reported("completed", 1), []);

    nodes[2]!.child.kill("SIGKILL");
    faults.push({ kind: "kill", id: "c", t: Date.now() });
    await until("the survivors did not form round 1", () => reported("completed", 1).length === 2);
    const verdict = checkSoak({
      params: {
        backend: "c10d over rdzv serve --data-dir",
        seed: 0,
        durationMs: 0,
        nodes: 3,
        minNodes: 2,
        maxNodes: 3,
        settleDeadlineMs: 30_000,
        config: params.config,
      },
      startedAt: faults[0]!.t,
      endedAt: Date.now(),
      events,
      faults,
      settles: [],
      noise: [],
    });
    assert.deepEqual(verdict.violations, []);
    assert.deepEqual(
      reported("completed", 1).map((e) => e.worldSize),
      [2, 2],
    );
    await store.close();
    await server.kill("SIGTERM");
  });
});
