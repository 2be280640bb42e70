/**
 * PyTorch's own launcher against `rdzv serve`, end to end: two `torchrun` processes (two "nodes" on
 * loopback, 2 workers each) use an rdzv server (a child process running the compiled CLI) as their
 * `c10d` rendezvous endpoint with `is_host=false`. Their workers (test/fixtures/torchrun_worker.py) record
 * the environment torchrun gave them and the result of a gloo all-reduce; a worker that crashes once makes
 * torchrun restart the job through our server. Runs with Debian's PyTorch 1.13 and with PyTorch 2.x.
 * Also: torchrun and `rdzv run` leave the same root-cause record in the launcher's TORCHELASTIC_ERROR_FILE.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { connectTCPStore } from "../src/store/tcp/client.js";
import { type ServeProcess, startServe } from "./helpers/serve-process.js";
import { findTorch1, findTorch2, REPO_ROOT, type TorchPython } from "./helpers/torch.js";

const WORKER = join(REPO_ROOT, "test", "fixtures", "torchrun_worker.py");
const RECORD_WORKER = join(REPO_ROOT, "test", "fixtures", "record_worker.py");
const MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const RUN_TIMEOUT_MS = 180_000;
const TEST_TIMEOUT_MS = 240_000;

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/**
 * Runs `python -m torch.distributed.run ARGS` (one node); resolves when it exits, killing it past
 * RUN_TIMEOUT_MS. Debian's 1.13 on Python 3.11 crashes with its default `--redirects 0 --tee 0`.
 */
function torchrun(
  torch: TorchPython,
  args: readonly string[],
  env: Record<string, string>,
): Promise<Finished> {
  const quirks = torch.major === 1 ? ["--redirects", "2", "--tee", "1"] : [];
  return finished(torch.python, ["-m", "torch.distributed.run", ...quirks, ...args], {
    ...env,
    PYTHONUNBUFFERED: "1",
    OMP_NUM_THREADS: "1",
  });
}

/** Runs `rdzv run ARGS` (the compiled CLI); resolves when it exits, killing it past RUN_TIMEOUT_MS. */
function rdzvRun(args: readonly string[], env: Record<string, string>): Promise<Finished> {
  return finished(process.execPath, [MAIN, "run", ...args], env);
}

/**
 * Runs `command ARGS` with `env` over ours; resolves with its output once it exits (killed past
 * RUN_TIMEOUT_MS).
 */
function finished(command: string, args: readonly string[], env: Record<string, string>): Promise<Finished> {
  const child = spawn(command, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (t: string) => (output += t));
  child.stderr.setEncoding("utf8").on("data", (t: string) => (output += t));
  const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
  return new Promise((resolve) => {
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output });
    });
  });
}

/** A launcher's error file record, its timestamp left out (the two launchers run at different times). */
function untimed(file: string): unknown {
  const record = JSON.parse(readFileSync(file, "utf8")) as { message: { extraInfo: { timestamp?: string } } };
  assert.match(record.message.extraInfo.timestamp ?? "", /^\d+$/);
  delete record.message.extraInfo.timestamp;
  return record;
}

interface WorkerEnv {
  RANK: string;
  LOCAL_RANK: string;
  WORLD_SIZE: string;
  LOCAL_WORLD_SIZE: string;
  GROUP_RANK: string;
  GROUP_WORLD_SIZE: string;
  TORCHELASTIC_RESTART_COUNT: string;
  TORCHELASTIC_MAX_RESTARTS: string;
  TORCHELASTIC_RUN_ID: string;
}

interface Report {
  pid: number;
  rank: number;
  world?: number;
  sum?: number;
  env: WorkerEnv;
}

function reports(dir: string, prefix: "start" | "done"): Report[] {
  return readdirSync(dir)
    .filter((f) => f.startsWith(`${prefix}-`) && f.endsWith(".json"))
    .map((f) => JSON.parse(readFileSync(join(dir, f), "utf8")) as Report);
}

/** Runs a 2-node x 2-worker job against `server`; both torchruns must exit 0. */
async function runJob(
  torch: TorchPython,
  server: ServeProcess,
  runId: string,
  extra: { maxRestarts: number; crashRank?: number },
): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), "rdzv-torchrun-"));
  dirs.push(out);
  const args = [
    "--nnodes",
    "2",
    "--nproc_per_node",
    "2",
    "--rdzv_backend",
    "c10d",
    "--rdzv_endpoint",
    `127.0.0.1:${server.port}`,
    "--rdzv_id",
    runId,
    "--rdzv_conf",
    "is_host=false",
    "--monitor_interval",
    "1",
    "--max_restarts",
    String(extra.maxRestarts),
    WORKER,
  ];
  const env: Record<string, string> = { RDZV_TEST_OUT: out };
  if (extra.crashRank !== undefined) env.RDZV_TEST_CRASH_RANK = String(extra.crashRank);
  const nodes = await Promise.all([torchrun(torch, args, env), torchrun(torch, args, env)]);
  nodes.forEach((n, i) => {
    assert.equal(n.code, 0, `torchrun ${i} exited ${n.code ?? n.signal}:\n${n.output.slice(-6000)}`);
  });
  // The rendezvous went through our server: torchrun's c10d backend keeps its state there.
  await using store = await connectTCPStore({ host: "127.0.0.1", port: server.port, timeoutMs: 10_000 });
  assert.ok(
    await store.check([`torch.rendezvous.${runId}`]),
    "torchrun's rendezvous state is not on rdzv serve",
  );
  return out;
}

/** Asserts one finished worker per rank 0..3 with torchrun's environment of a 2 x 2 job and the sum. */
function assertJobDone(done: readonly Report[], runId: string, maxRestarts: number): void {
  assert.deepEqual(done.map((r) => r.rank).sort(), [0, 1, 2, 3], `finished workers: ${JSON.stringify(done)}`);
  for (const r of done) {
    const e = r.env;
    assert.equal(Number(e.RANK), r.rank);
    assert.equal(r.world, 4);
    assert.equal(r.sum, 10, "all_reduce of 1+2+3+4");
    assert.equal(e.WORLD_SIZE, "4");
    assert.equal(e.LOCAL_WORLD_SIZE, "2");
    assert.equal(e.GROUP_WORLD_SIZE, "2");
    assert.equal(Number(e.RANK), Number(e.GROUP_RANK) * 2 + Number(e.LOCAL_RANK));
    assert.equal(e.TORCHELASTIC_RUN_ID, runId);
    assert.equal(e.TORCHELASTIC_MAX_RESTARTS, String(maxRestarts));
  }
}

for (const [label, find] of [
  ["PyTorch 1.13 (Debian)", findTorch1],
  ["PyTorch 2.x (.venv-torch)", findTorch2],
] as const) {
  describe(`torchrun ${label} with rdzv serve as its c10d endpoint`, () => {
    it("runs a 2-node job: ranks 0..3, WORLD_SIZE 4, a gloo all_reduce", {
      timeout: TEST_TIMEOUT_MS,
    }, async () => {
      const torch = await find();
      await using server = await startServe();
      const runId = `job-ok-${torch.major}`;
      const out = await runJob(torch, server, runId, { maxRestarts: 0 });
      const done = reports(out, "done");
      assertJobDone(done, runId, 0);
      assert.ok(done.every((r) => r.env.TORCHELASTIC_RESTART_COUNT === "0"));
      assert.equal(reports(out, "start").length, 4, "each worker started once");
    });

    it("leaves the same root-cause record in the launcher's TORCHELASTIC_ERROR_FILE as rdzv run", {
      timeout: TEST_TIMEOUT_MS,
    }, async () => {
      const torch = await find();
      const out = mkdtempSync(join(tmpdir(), "rdzv-torchrun-errfile-"));
      dirs.push(out);
      // A worker whose @record main raises on rank 1 (test/fixtures/record_worker.py).
      const env = { BOOM: `boom-${randomUUID()}`, FAIL_RANK: "1" };
      // TMPDIR: torchrun's log folder and the error files rdzv keeps of a failure stay in `out`.
      const viaTorchrun = await torchrun(torch, ["--standalone", "--nproc_per_node", "2", RECORD_WORKER], {
        ...env,
        TMPDIR: out,
        TORCHELASTIC_ERROR_FILE: join(out, "torchrun.json"),
      });
      assert.equal(viaTorchrun.code, 1, viaTorchrun.output.slice(-4000));
      const viaRdzv = await rdzvRun(
        ["--standalone", "--nproc-per-node", "2", "--stop-timeout", "5", "--", torch.python, RECORD_WORKER],
        { ...env, TMPDIR: out, TORCHELASTIC_ERROR_FILE: join(out, "rdzv.json") },
      );
      assert.equal(viaRdzv.code, 1, viaRdzv.output.slice(-4000));
      const expected = untimed(join(out, "torchrun.json"));
      assert.match(JSON.stringify(expected), new RegExp(`"message":"ValueError: ${env.BOOM}"`));
      assert.deepEqual(untimed(join(out, "rdzv.json")), expected);
    });

    it("restarts the job through rdzv serve after a worker crash, then completes", {
      timeout: TEST_TIMEOUT_MS,
    }, async () => {
      const torch = await find();
      await using server = await startServe();
      const runId = `job-crash-${torch.major}`;
      // torchrun's own restart is racy, with PyTorch's store as with ours (measured beside a busy test
      // run: 1 of 4 jobs on PyTorch's own c10d store failed in gloo's connectFullMesh after the restart;
      // with rdzv serve 1 of 4 failed so and 1 of 4 hung in the group's set-up; a clean-clone CI run
      // failed so with 3 restarts to spare): the agent whose worker did not fail keeps restart count 0,
      // so its new workers can meet the keys of its old ones. So the worker keeps each attempt's group
      // under a prefix of its own (test/fixtures/torchrun_worker.py); the budget stays for the rest.
      const out = await runJob(torch, server, runId, { maxRestarts: 3, crashRank: 1 });
      assert.ok(existsSync(join(out, "crashed")), "the worker of rank 1 did not crash");
      const done = reports(out, "done");
      assertJobDone(done, runId, 3);
      // The agent whose worker failed used a restart; the other restarted for the new round.
      assert.ok(
        done.some((r) => Number(r.env.TORCHELASTIC_RESTART_COUNT) >= 1),
        `no worker of a restarted agent finished: ${JSON.stringify(done.map((r) => r.env))}`,
      );
      // Both nodes' workers were restarted: every rank started at least twice.
      const starts = reports(out, "start");
      for (let rank = 0; rank < 4; rank++) {
        const n = starts.filter((s) => s.rank === rank).length;
        assert.ok(n >= 2, `rank ${rank} started ${n} time(s); the job was not restarted as a whole`);
      }
    });
  });
}
