/**
 * `rdzv run` end to end: real agent processes (the compiled CLI), real worker processes
 * (test/fixtures/worker-probe.mjs and the examples), a real store. Workers record their environment and
 * pid in a temporary folder, which is how the tests see ranks, rounds and restarts.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, describe, it, type TestContext } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { pickFreePort } from "../src/rendezvous/free-port.js";
import { connectTCPStore } from "../src/store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../src/store/tcp/server.js";
import { EtcdTestCluster } from "./helpers/etcd.js";
import { RedisTestServer } from "./helpers/redis.js";
import { startServe } from "./helpers/serve-process.js";
import { findTorch1, REPO_ROOT } from "./helpers/torch.js";
import { waitFor } from "./helpers/wait-for.js";

const MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const PROBE = join(REPO_ROOT, "test", "fixtures", "worker-probe.mjs");
const FAST = "last_call_timeout=0.5,keep_alive_interval=0.2,join_timeout=20";

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Agent {
  readonly child: ChildProcess;
  readonly done: Promise<Finished>;
  stderr(): string;
}

const started: Agent[] = [];
const dirs: string[] = [];
const servers: TCPStoreServer[] = [];

afterEach(async () => {
  for (const a of started.splice(0))
    if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill("SIGKILL");
  for (const s of servers.splice(0)) await s.close();
});
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Starts `rdzv run ARGS` with `env` on top of ours; it is killed after the test if still running. */
function run(args: readonly string[], env: Record<string, string> = {}, timeoutMs = 30_000): Agent {
  const child = spawn(process.execPath, [MAIN, "run", ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (t: string) => (stdout += t));
  child.stderr!.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const done = new Promise<Finished>((resolve) => {
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
  const agent = { child, done, stderr: () => stderr };
  started.push(agent);
  return agent;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "rdzv-launcher-"));
  dirs.push(dir);
  return dir;
}

/** The options that put an agent in run `runId` on `server`, with fast rendezvous settings. */
function rendezvous(server: TCPStoreServer, runId: string): string[] {
  return ["--rdzv-endpoint", `127.0.0.1:${server.port}`, "--rdzv-id", runId, "--rdzv-conf", FAST];
}

async function storeServer(): Promise<TCPStoreServer> {
  const server = await createTCPStoreServer({ host: "127.0.0.1", port: 0 });
  servers.push(server);
  return server;
}

/** A worker's record: its launcher variables (strings), its pid, and the file it wrote. */
interface Probe {
  readonly [variable: string]: string | undefined;
}

function pidOf(p: Probe): number {
  return Number((p as unknown as { pid: number }).pid);
}

/** The records workers wrote so far (file `r<round>-rank<rank>.json`). */
function probes(dir: string): Probe[] {
  return readdirSync(dir)
    .filter((f) => /^r\d+-rank\d+\.json$/.test(f))
    .map((file) => ({ ...(JSON.parse(readFileSync(join(dir, file), "utf8")) as Probe), file }));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function sums(output: string): string[] {
  return output
    .split("\n")
    .filter((l) => l.includes("sum ="))
    .sort();
}

describe("rdzv run", () => {
  it("--standalone starts 4 workers with torchrun's environment and RDZV_* variables", async () => {
    const dir = tempDir();
    const agent = run(["--standalone", "--nproc-per-node", "4", "--", "node", PROBE], { PROBE_DIR: dir });
    const { code, stderr } = await agent.done;
    assert.equal(code, 0, stderr);
    const records = probes(dir).sort((a, b) => Number(a.RANK) - Number(b.RANK));
    assert.deepEqual(
      records.map((r) => [r.RANK, r.LOCAL_RANK, r.RDZV_RANK]),
      [0, 1, 2, 3].map((i) => [String(i), String(i), String(i)]),
    );
    const runId = records[0]!.TORCHELASTIC_RUN_ID!;
    for (const r of records) {
      assert.equal(r.WORLD_SIZE, "4");
      assert.equal(r.LOCAL_WORLD_SIZE, "4");
      assert.equal(r.GROUP_RANK, "0");
      assert.equal(r.GROUP_WORLD_SIZE, "1");
      assert.equal(r.ROLE_RANK, r.RANK);
      assert.equal(r.ROLE_NAME, "default");
      assert.equal(r.MASTER_ADDR, "127.0.0.1");
      assert.match(r.MASTER_PORT!, /^\d+$/);
      assert.equal(r.TORCHELASTIC_RESTART_COUNT, "0");
      assert.equal(r.TORCHELASTIC_MAX_RESTARTS, "0");
      assert.equal(r.TORCHELASTIC_RUN_ID, runId);
      assert.equal(r.TORCHELASTIC_USE_AGENT_STORE, "False");
      assert.equal(r.RDZV_ROUND, "0");
      assert.equal(r.RDZV_STORE_ADDR, "127.0.0.1");
      assert.equal(r.RDZV_STORE_PREFIX, `rdzv/${runId}/r0/store`);
      assert.equal(r.OMP_NUM_THREADS, "1");
    }
    assert.match(runId, /^[0-9a-f-]{36}$/);
  });

  it("runs the Node example: an all-reduce through the round's store, output prefixed by rank", async () => {
    const agent = run([
      "--standalone",
      "--nproc-per-node",
      "4",
      "--prefix-output",
      "--",
      "node",
      "examples/allreduce.mjs",
    ]);
    const { code, stdout, stderr } = await agent.done;
    assert.equal(code, 0, stderr);
    assert.deepEqual(
      sums(stdout),
      [0, 1, 2, 3].map((r) => `[rank${r}]: rank ${r}/4: sum = 10`),
    );
  });

  it("runs the Python example: a gloo all_reduce through torch.distributed (env://)", async () => {
    const torch = await findTorch1();
    const agent = run([
      "--standalone",
      "--nproc-per-node",
      "2",
      "--",
      torch.python,
      "examples/allreduce_gloo.py",
    ]);
    const { code, stdout, stderr } = await agent.done;
    assert.equal(code, 0, stderr);
    assert.deepEqual(sums(stdout), ["rank 0/2: sum = 3", "rank 1/2: sum = 3"]);
  });

  it("two agents form one 2-node job over a shared store: 4 ranks, one all-reduce", async () => {
    const server = await storeServer();
    const args = [
      "--nnodes",
      "2",
      "--nproc-per-node",
      "2",
      ...rendezvous(server, "two-nodes"),
      "--",
      "node",
      "examples/allreduce.mjs",
    ];
    const results = await Promise.all([run(args).done, run(args).done]);
    for (const r of results) {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /workers succeeded; waiting for the other nodes\n/);
      assert.match(r.stderr, /all workers succeeded \(round 0, 0 restarts\)\n/);
    }
    assert.deepEqual(
      sums(results.map((r) => r.stdout).join("")),
      [0, 1, 2, 3].map((r) => `rank ${r}/4: sum = 10`),
    );
  });

  it("a worker that crashes once is restarted within --max-restarts, and the job succeeds", async () => {
    const dir = tempDir();
    const agent = run(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--", "node", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "crash-once",
      PROBE_RANKS: "1",
    });
    const { code, stderr } = await agent.done;
    assert.equal(code, 0, stderr);
    assert.match(stderr, /rank 1 \(local rank 1, pid \d+\) failed: exit code 3/);
    assert.match(stderr, /all workers succeeded \(round 1, 1 restart\)\n/);
    // One node: no other node to wait for, and no line saying so.
    assert.doesNotMatch(stderr, /waiting for the other nodes/);
    const second = probes(dir).filter((p) => p.RDZV_ROUND === "1");
    assert.equal(second.length, 2);
    for (const p of second) assert.equal(p.TORCHELASTIC_RESTART_COUNT, "1");
  });

  it("agents failing in the same attempt spend one job-wide restart, not one each", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [
      "--nnodes",
      "2",
      "--nproc-per-node",
      "2",
      "--max-restarts",
      "1",
      ...rendezvous(server, "shared-count"),
      "--",
      "node",
      PROBE,
    ];
    const env = { PROBE_DIR: dir, PROBE_MODE: "crash-once", PROBE_RANKS: "0,2" };
    const results = await Promise.all([run(args, env).done, run(args, env).done]);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    const second = probes(dir).filter((p) => p.RDZV_ROUND === "1");
    assert.equal(second.length, 4);
    for (const p of second) assert.equal(p.TORCHELASTIC_RESTART_COUNT, "1");
  });

  it("when restarts run out it exits 1 with a summary: rank, exit code, stderr tail", async () => {
    const dir = tempDir();
    const agent = run(
      [
        "--standalone",
        "--nproc-per-node",
        "3",
        "--max-restarts",
        "1",
        "--stop-timeout",
        "2",
        "--",
        "node",
        PROBE,
      ],
      {
        PROBE_DIR: dir,
        PROBE_MODE: "fail",
        PROBE_RANKS: "2",
        PROBE_CODE: "7",
        PROBE_STDERR: "fatal: rank two exploding",
      },
    );
    const { code, stderr } = await agent.done;
    assert.equal(code, 1, stderr);
    assert.match(stderr, /job failed after 1 restart \(--max-restarts 1\)/);
    assert.match(
      stderr,
      /first failure: rank 2 \(local rank 2 on node 0, 127\.0\.0\.1, pid \d+, round 1\): exit code 7/,
    );
    assert.match(stderr, /last stderr lines:\n {4}fatal: rank two exploding/);
    assert.deepEqual([...new Set(probes(dir).map((p) => p.RDZV_ROUND))].sort(), ["0", "1"]);
  });

  it("reports a worker killed by a signal, and --max-restarts 0 means no restart", async () => {
    const dir = tempDir();
    const agent = run(["--standalone", "--nproc-per-node", "2", "--", "node", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "0",
      PROBE_SIGNAL: "SIGKILL",
    });
    const { code, stderr } = await agent.done;
    assert.equal(code, 1, stderr);
    assert.match(stderr, /job failed after 0 restarts/);
    assert.match(stderr, /rank 0 .*: killed by signal SIGKILL/);
    assert.ok(probes(dir).every((p) => p.RDZV_ROUND === "0"));
  });

  it("a failure on one node ends the job on every node with the same summary", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [
      "--nnodes",
      "2",
      ...rendezvous(server, "fail-everywhere"),
      "--stop-timeout",
      "2",
      "--",
      "node",
      PROBE,
    ];
    const env = {
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "1",
      PROBE_CODE: "5",
      PROBE_STDERR: "bad shard",
    };
    const results = await Promise.all([run(args, env).done, run(args, env).done]);
    for (const r of results) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /first failure: rank 1 .*: exit code 5/);
      assert.match(r.stderr, /bad shard/);
    }
    assert.equal(results.filter((r) => r.stderr.includes("reported by another node")).length, 1);
  });

  it("a failure on the node hosting the store (c10d) ends the job on the other node too", async () => {
    const port = await pickFreePort("127.0.0.1");
    const dir = tempDir();
    const common = ["--nnodes", "2", "--rdzv-endpoint", `127.0.0.1:${port}`, "--rdzv-id", "host-fails"];
    const tail = ["--stop-timeout", "2", "--", "node", PROBE];
    const host = run([...common, "--rdzv-conf", FAST, ...tail], {
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "0,1",
      PROBE_CODE: "6",
    });
    // The other node never hosts, and its worker runs until stopped.
    const other = run([...common, "--rdzv-conf", `${FAST},is_host=false`, ...tail], {
      PROBE_DIR: dir,
      PROBE_MODE: "sleep",
    });
    const [h, o] = await Promise.all([host.done, other.done]);
    assert.equal(h.code, 1, h.stderr);
    assert.match(h.stderr, /first failure: rank \d .*: exit code 6/);
    // It lost the store with the host before it saw the job end, and hung (killed after 30 s).
    assert.equal(o.code, 1, o.stderr);
    assert.match(o.stderr, /first failure: rank \d .*: exit code 6[\s\S]*reported by another node/);
    // The round ended because the job did: no restart is announced.
    assert.doesNotMatch(o.stderr, /restarting the workers/);
  });

  it("a SIGKILLed agent hosting the store (c10d): the other node fails at once, naming the cause", async () => {
    const port = await pickFreePort("127.0.0.1");
    const dir = tempDir();
    const common = ["--nnodes", "2", "--rdzv-endpoint", `127.0.0.1:${port}`, "--rdzv-id", "host-dies"];
    const tail = ["--stop-timeout", "2", "--", "node", PROBE];
    const env = { PROBE_DIR: dir, PROBE_MODE: "sleep" };
    const host = run([...common, "--rdzv-conf", `${FAST},is_host=true`, ...tail], env);
    const other = run([...common, "--rdzv-conf", `${FAST},is_host=false`, ...tail], env);
    await waitFor("both workers", () => probes(dir).length === 2 || undefined);
    host.child.kill("SIGKILL");
    // Before: the other node retried the dead store for good (killed here after 30 s); its message
    // then said only that no connect succeeded within read_timeout (60 s).
    const o = await other.done;
    assert.equal(o.code, 1, o.stderr);
    assert.match(o.stderr, /the rendezvous store at 127\.0\.0\.1:\d+, hosted by node .*'s agent .*, is gone/);
    assert.match(o.stderr, /use rdzv serve \(or etcd\/redis\)/);
    assert.doesNotMatch(o.stderr, /restarting the workers/);
  });

  /** A store of each backend that a test can stop for good: where it is, and how to stop it. */
  const stoppableStores: Record<
    string,
    (t: TestContext) => Promise<{ args: string[]; shown: RegExp; stop: () => Promise<void> }>
  > = {
    c10d: async () => {
      const server = await storeServer();
      return {
        args: ["--rdzv-endpoint", `127.0.0.1:${server.port}`],
        shown: /c10d at 127\.0\.0\.1:\d+/,
        stop: () => server.close(),
      };
    },
    etcd: async (t) => {
      const etcd = await EtcdTestCluster.start();
      t.after(() => etcd.stop());
      return {
        args: ["--rdzv-backend", "etcd", "--rdzv-endpoint", etcd.endpoints],
        shown: /etcd at 127\.0\.0\.1:\d+/,
        stop: () => etcd.kill(0),
      };
    },
    redis: async (t) => {
      const redis = await RedisTestServer.start();
      t.after(() => redis.stop());
      return {
        args: ["--rdzv-backend", "redis", "--rdzv-endpoint", redis.endpoint],
        shown: /redis at 127\.0\.0\.1:\d+/,
        stop: () => redis.kill(),
      };
    },
  };

  for (const [backend, start] of Object.entries(stoppableStores)) {
    it(`a store that stops for good (${backend}): the node stops its workers and fails after store_unreachable_timeout`, async (t) => {
      const store = await start(t);
      const dir = tempDir();
      const conf = `${FAST},store_unreachable_timeout=2,read_timeout=1`;
      const agent = run(
        [...store.args, "--rdzv-id", "store-stops", "--rdzv-conf", conf].concat([
          "--stop-timeout",
          "2",
          "--",
          "node",
          PROBE,
        ]),
        { PROBE_DIR: dir, PROBE_MODE: "sleep" },
      );
      const [probe] = await waitFor("the worker", () => (probes(dir).length === 1 ? probes(dir) : undefined));
      const stoppedAt = Date.now();
      await store.stop();
      // Before: the agent warned "watching the round failed; retrying" for good (killed here after 30 s).
      const r = await agent.done;
      const tookMs = Date.now() - stoppedAt;
      assert.equal(r.code, 1, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `could not reach the rendezvous store \\(${store.shown.source}\\) for [\\d.]+ s \\(since .*\\), longer than store_unreachable_timeout \\(2 s\\)`,
        ),
      );
      assert.match(r.stderr, /raise store_unreachable_timeout \(seconds\) in --rdzv-conf/);
      assert.equal(alive(pidOf(probe!)), false);
      // Within the bound plus stopping the worker and leaving: measured, not asserted (a noisy machine).
      t.diagnostic(`${backend} store stopped for good: rdzv run exited ${tookMs} ms later (bound 2000 ms)`);
    });
  }

  it("a node that joins late is admitted by a restart (--nnodes 1:2)", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [
      "--nnodes",
      "1:2",
      ...rendezvous(server, "late"),
      "--monitor-interval",
      "0.2",
      "--",
      "node",
      PROBE,
    ];
    const env = (tag: string) => ({ PROBE_DIR: dir, PROBE_MODE: "hold", PROBE_WORLD: "2", PROBE_TAG: tag });
    const first = run(args, env("a"));
    await waitFor("the first node's round", () => probes(dir).find((p) => p.GROUP_WORLD_SIZE === "1"));
    const second = run(args, env("b"));
    const results = await Promise.all([first.done, second.done]);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    assert.match(results[0]!.stderr, /restarting the workers: nodes are waiting to join/);
    const joint = probes(dir).filter((p) => p.GROUP_WORLD_SIZE === "2");
    assert.deepEqual(joint.map((p) => p.PROBE_TAG).sort(), ["a", "b"]);
    assert.equal(new Set(joint.map((p) => p.RDZV_ROUND)).size, 1);
  });

  it("a SIGKILLed node: the survivor re-forms alone, the dead node's workers are reaped", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [
      "--nnodes",
      "1:2",
      ...rendezvous(server, "sigkill"),
      "--stop-timeout",
      "1",
      "--",
      "node",
      PROBE,
    ];
    // Workers finish once they run in a later round of one node: after the other node died.
    const env = (tag: string) => ({
      PROBE_DIR: dir,
      PROBE_MODE: "hold",
      PROBE_WORLD: "1",
      PROBE_MIN_ROUND: "1",
      PROBE_TAG: tag,
    });
    const a = run(args, env("a"));
    const b = run(args, env("b"));
    const victim = await waitFor("both nodes in one round", () => {
      const joint = probes(dir).filter((p) => p.GROUP_WORLD_SIZE === "2");
      const round = joint.find((p) =>
        joint.some((q) => q.RDZV_ROUND === p.RDZV_ROUND && q.PROBE_TAG !== p.PROBE_TAG),
      );
      return round === undefined
        ? undefined
        : joint.find((p) => p.PROBE_TAG === "b" && p.RDZV_ROUND === round.RDZV_ROUND);
    });
    b.child.kill("SIGKILL");
    const survivor = await a.done;
    assert.equal(survivor.code, 0, survivor.stderr);
    assert.match(survivor.stderr, /restarting the workers: a node left, died or restarted/);
    const last = probes(dir).filter(
      (p) => p.PROBE_TAG === "a" && p.GROUP_WORLD_SIZE === "1" && Number(p.RDZV_ROUND) >= 1,
    );
    assert.ok(last.length > 0, "the survivor ran a round on its own");
    await waitFor("the killed node's worker to be reaped", () => !alive(pidOf(victim)), 5000);
  });

  it("SIGTERM stops every worker (SIGKILL after --stop-timeout) and leaves no orphans", async () => {
    const dir = tempDir();
    const agent = run(
      ["--standalone", "--nproc-per-node", "3", "--stop-timeout", "0.5", "--", "node", PROBE],
      {
        PROBE_DIR: dir,
        PROBE_MODE: "sleep",
        PROBE_RANKS: "1",
      },
    );
    const pids = await waitFor("3 workers", () => {
      const p = probes(dir);
      return p.length === 3 ? p.map(pidOf) : undefined;
    });
    assert.ok(pids.every(alive));
    agent.child.kill("SIGTERM");
    const { code, stderr } = await agent.done;
    assert.equal(code, 143, stderr);
    assert.match(stderr, /stopped by SIGTERM/);
    for (const pid of pids) assert.equal(alive(pid), false, `worker ${pid} outlived the agent`);
  });

  for (const [signal, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    it(`${signal} reaches the workers as ${signal}, as torchrun passes it on (Ctrl-C: KeyboardInterrupt)`, async () => {
      const dir = tempDir();
      const agent = run(["--standalone", "--nproc-per-node", "2", "--", "node", PROBE], {
        PROBE_DIR: dir,
        PROBE_MODE: "signal",
      });
      await waitFor("2 workers", () => probes(dir).length === 2 || undefined);
      agent.child.kill(signal);
      const done = await agent.done;
      assert.equal(done.code, code, done.stderr);
      for (const rank of [0, 1]) assert.equal(readFileSync(join(dir, `signal-rank${rank}`), "utf8"), signal);
    });
  }

  it("a node whose workers finished leaves without restarting the others' running workers", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [
      "--nnodes",
      "2",
      ...rendezvous(server, "finish-early"),
      "--exit-barrier-timeout",
      "1",
      "--",
      "node",
      PROBE,
    ];
    // The early node's barrier times out and it leaves; the late node's workers run on to their end.
    const early = run(args, { PROBE_DIR: dir, PROBE_MODE: "delay", PROBE_DELAY_MS: "0" });
    const late = run(args, { PROBE_DIR: dir, PROBE_MODE: "delay", PROBE_DELAY_MS: "4000" });
    const [a, b] = await Promise.all([early.done, late.done]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    assert.doesNotMatch(b.stderr, /restarting/);
    assert.deepEqual(
      probes(dir).map((p) => p.RDZV_ROUND),
      ["0", "0"],
    );
  });

  it("with the store gone, the exit barrier gives up in its time and workers that succeeded still succeed", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const agent = run(
      [...rendezvous(server, "store-gone"), "--exit-barrier-timeout", "2", "--", "node", PROBE],
      { PROBE_DIR: dir, PROBE_MODE: "delay", PROBE_DELAY_MS: "1500" },
    );
    await waitFor("the worker", () => probes(dir).length === 1);
    await server.close();
    const { code, stderr } = await agent.done;
    assert.equal(code, 0, stderr);
    assert.match(stderr, /exit barrier failed; the workers here succeeded/);
  });

  it("SIGTERM while joining through a store that went away stops the agent promptly", async () => {
    const server = await storeServer();
    const agent = run(["--nnodes", "2", ...rendezvous(server, "join-gone"), "--", "node", PROBE]);
    await waitFor("joining", () => /joining run/.test(agent.stderr()));
    await delay(300);
    await server.close();
    await delay(300);
    agent.child.kill("SIGTERM");
    // (It used to wait out every store call's connect budget: 113 s with the defaults.)
    const { code, stderr } = await agent.done;
    assert.equal(code, 143, stderr);
  });

  it("nodes that start different numbers of workers fail with a message, on every node, instead of overlapping ranks", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = (nproc: string) => [
      "--nnodes",
      "2",
      "--nproc-per-node",
      nproc,
      ...rendezvous(server, "mixed-nproc"),
      "--",
      "node",
      PROBE,
    ];
    const env = { PROBE_DIR: dir, PROBE_MODE: "sleep" };
    const results = await Promise.all([run(args("1"), env).done, run(args("3"), env).done]);
    // Either node may be the one that finds the mismatch: the other finds the rendezvous closed, and
    // says why instead of suggesting an earlier job under this --rdzv-id.
    const detected =
      /this node starts [13] workers? \(--nproc-per-node\) but another node of the job starts [13]/;
    const told =
      /closed by another node: node [01] \(.+\) starts [13] workers? .*another node of the job starts [13]/;
    for (const r of results) {
      assert.equal(r.code, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /earlier job under this --rdzv-id/);
    }
    assert.equal(
      results.filter((r) => detected.test(r.stderr)).length,
      1,
      results.map((r) => r.stderr).join("\n--\n"),
    );
    assert.equal(
      results.filter((r) => told.test(r.stderr)).length,
      1,
      results.map((r) => r.stderr).join("\n--\n"),
    );
  });

  it("a job that succeeded leaves no restart count behind for the next job under its run id", async () => {
    const server = await storeServer();
    const args = () => ["--max-restarts", "1", ...rendezvous(server, "reused"), "--", "node", PROBE];
    const first = tempDir();
    const one = await run(args(), { PROBE_DIR: first, PROBE_MODE: "crash-once", PROBE_RANKS: "0" }).done;
    assert.equal(one.code, 0, one.stderr);
    assert.ok(probes(first).some((p) => p.TORCHELASTIC_RESTART_COUNT === "1"));
    const second = tempDir();
    const two = await run(args(), { PROBE_DIR: second, PROBE_MODE: "exit" }).done;
    assert.equal(two.code, 0, two.stderr);
    assert.deepEqual(
      probes(second).map((p) => p.TORCHELASTIC_RESTART_COUNT),
      ["0"],
    );
  });

  it("a job that restarted several times keeps the launcher keys of its last 2 attempts only", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [
      "--nnodes",
      "2",
      "--max-restarts",
      "4",
      ...rendezvous(server, "pruned"),
      "--",
      "node",
      PROBE,
    ];
    const env = { PROBE_DIR: dir, PROBE_MODE: "crash-until", PROBE_CRASHES: "4", PROBE_RANKS: "1" };
    const results = await Promise.all([run(args, env).done, run(args, env).done]);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    assert.ok(probes(dir).some((p) => p.TORCHELASTIC_RESTART_COUNT === "4"));
    const prefix = "/rdzv/pruned/launcher/";
    const keys = [...server.engine.keys()]
      .filter((k) => k.startsWith(prefix))
      .map((k) => k.slice(prefix.length));
    // 5 attempts or more (restart counts 0 to 4; a round may also end without a failure): the keys of
    // the last two stay, the last one's among them.
    const attempts = [...new Set(keys.flatMap((k) => /r\d+\.c\d+/.exec(k) ?? []))];
    assert.ok(attempts.length <= 2, keys.join("\n"));
    assert.ok(
      attempts.some((a) => a.endsWith(".c4")),
      keys.join("\n"),
    );
  });

  it("a job under the run id of a job that failed is told that run is closed and why it may be", async () => {
    const server = await storeServer();
    const dir = tempDir();
    const args = [...rendezvous(server, "was-failed")];
    const failed = await run([...args, "--", "node", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "0",
    }).done;
    assert.equal(failed.code, 1, failed.stderr);
    const next = await run([...args, "--", "true"]).done;
    assert.equal(next.code, 1, next.stderr);
    assert.match(next.stderr, /run "was-failed" is closed: .*earlier job under this --rdzv-id ended/);
  });

  it("a node whose run id torchrun agents joined on the same store says why the round never completes", async () => {
    const server = await storeServer();
    // What a torchrun agent's c10d rendezvous leaves on the store: its pickled state under this key.
    const torchrun = await connectTCPStore({ host: "127.0.0.1", port: server.port });
    await torchrun.set("torch.rendezvous.mixed", "state");
    await torchrun.close();
    const agent = run([
      "--nnodes",
      "2",
      "--rdzv-endpoint",
      `127.0.0.1:${server.port}`,
      "--rdzv-id",
      "mixed",
      "--rdzv-conf",
      "join_timeout=1",
      "--",
      "node",
      PROBE,
    ]);
    const { code, stderr } = await agent.done;
    assert.equal(code, 1, stderr);
    assert.match(
      stderr,
      /did not complete within 1 s: .*torchrun agents .* joined run "mixed" .* cannot form one job/,
    );
  });

  it("warns once of --rdzv-conf keys the backend does not read, naming the nearest known key, and runs", async () => {
    const conf = "join-timeout=5,last_call_timout=1,keep_alive_interval=0.2,read_timeout=10";
    const { code, stderr } = await run(["--standalone", "--rdzv-conf", conf, "--", "true"]).done;
    assert.equal(code, 0, stderr);
    const warnings = stderr.split("\n").filter((l) => l.includes("is not read by"));
    assert.deepEqual(
      warnings.map((l) =>
        /'([^']+)' is not read by the c10d backend .*did you mean '([^']+)'/.exec(l)?.slice(1),
      ),
      [
        ["join-timeout", "join_timeout"],
        ["last_call_timout", "last_call_timeout"],
      ],
      stderr,
    );
  });

  it("rides out a rdzv serve --data-dir restart under a running job, and says that it lost the connection", async () => {
    const dataDir = tempDir();
    const first = await startServe(["--data-dir", dataDir]);
    const dir = tempDir();
    const agent = run(
      ["--rdzv-endpoint", `127.0.0.1:${first.port}`, "--rdzv-id", "serve-restart", "--", "node", PROBE],
      {
        PROBE_DIR: dir,
        PROBE_MODE: "delay",
        PROBE_DELAY_MS: "4000",
      },
    );
    await waitFor("the worker", () => probes(dir).length === 1 || undefined);
    await first.kill("SIGTERM");
    await using second = await startServe(["--data-dir", dataDir], { port: first.port });
    const r = await agent.done;
    assert.equal(r.code, 0, r.stderr);
    // The store client's warning, through rdzv run's handler logger (before: nothing showed the outage).
    assert.match(
      r.stderr,
      /WARN TCPStore connection lost \{"peer":"127\.0\.0\.1:\d+","error":"the TCPStore server at .* closed the connection/,
    );
    assert.match(r.stderr, /all workers succeeded \(round 0, 0 restarts\)/);
    assert.doesNotMatch(second.output(), /ERROR/);
  });

  it("says so while the store does not answer yet, then fails naming it (c10d, the hosting node absent)", async () => {
    const port = await pickFreePort("127.0.0.1");
    const r = await run([
      "--rdzv-endpoint",
      `127.0.0.1:${port}`,
      "--rdzv-conf",
      "is_host=false,read_timeout=2",
      "--",
      "true",
    ]).done;
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trimEnd().split("\n");
    assert.match(lines[0]!, /^rdzv run: joining run "none" \(c10d at 127\.0\.0\.1:\d+, 1:1 nodes\)$/);
    assert.equal(
      lines[1],
      `rdzv run: still connecting to the rendezvous store (c10d at 127.0.0.1:${port}) after 0.5 s: waiting for ` +
        "rdzv serve, or the node that hosts the store, to listen there (giving up after read_timeout, 2 s)",
    );
    assert.match(lines[2]!, /could not connect to the TCPStore server at 127\.0\.0\.1:\d+ within 2000ms/);
  });

  it("exits 2 for bad arguments: the error, the usage line and where the options are, not the whole help", async () => {
    const { code, stderr } = await run(["--nnodes", "3:1", "--", "true"]).done;
    assert.equal(code, 2);
    assert.equal(
      stderr,
      'rdzv run: --nnodes must be N or MIN:MAX with 1 <= MIN <= MAX, got "3:1"\n' +
        "Usage: rdzv run [options] -- COMMAND [ARGS...]\n" +
        "Run 'rdzv run --help' for its options.\n",
    );
  });

  it("--nproc-per-node gpu without a GPU is a usage error; auto falls back to one worker per CPU", async (t) => {
    if (existsSync("/proc/driver/nvidia/gpus")) {
      t.diagnostic("this machine has NVIDIA GPUs: the no-GPU case cannot be checked here");
      return;
    }
    const gpu = await run(["--standalone", "--nproc-per-node", "gpu", "--", "true"]).done;
    assert.equal(gpu.code, 2);
    assert.match(gpu.stderr, /--nproc-per-node gpu: no GPU found/);
    const dir = tempDir();
    const auto = await run(["--standalone", "--nproc-per-node", "auto", "--", "node", PROBE], {
      PROBE_DIR: dir,
    }).done;
    assert.equal(auto.code, 0, auto.stderr);
    assert.equal(probes(dir).length, availableParallelism());
  });
});
