/**
 * `rdzv run` end to end for torchrun's worker error files (`TORCHELASTIC_ERROR_FILE`): real agent
 * processes (the compiled CLI), real workers that write error files (test/fixtures/worker-probe.mjs in Node,
 * writing the JSON itself; test/fixtures/record_worker.py with PyTorch's own `@record`, 2.x and 1.13), a
 * real store for the two-node case.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, afterEach, describe, it } from "node:test";
import { createTCPStoreServer, type TCPStoreServer } from "../src/store/tcp/server.js";
import { findTorch1, findTorch2, REPO_ROOT, type TorchPython } from "./helpers/torch.js";
import { waitFor } from "./helpers/wait-for.js";

const MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const PROBE = join(REPO_ROOT, "test", "fixtures", "worker-probe.mjs");
const RECORD_WORKER = join(REPO_ROOT, "test", "fixtures", "record_worker.py");
const FAST = "last_call_timeout=0.5,keep_alive_interval=0.2,join_timeout=20";

interface Finished {
  code: number | null;
  stderr: string;
}

const children: ChildProcess[] = [];
/** The agents' TMPDIR: where their error file folders go, and the files a failure keeps stay. */
const agentTmp = mkdtempSync(join(tmpdir(), "rdzv-error-file-tmp-"));
const dirs: string[] = [agentTmp];
const servers: TCPStoreServer[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const s of servers.splice(0)) await s.close();
});
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Starts `rdzv run ARGS` with `env` on top of ours; killed after 60 s or after the test. */
function run(
  args: readonly string[],
  env: Record<string, string>,
): { child: ChildProcess; done: Promise<Finished> } {
  const child = spawn(process.execPath, [MAIN, "run", ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, TMPDIR: agentTmp, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  children.push(child);
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const done = new Promise<Finished>((resolve) => {
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
  return { child, done };
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "rdzv-error-file-"));
  dirs.push(dir);
  return dir;
}

/** The environment the probe workers recorded (`r<round>-rank<rank>.json`), by rank. */
function probes(dir: string): Record<string, string>[] {
  return readdirSync(dir)
    .filter((f) => /^r\d+-rank\d+\.json$/.test(f))
    .map((f) => JSON.parse(readFileSync(join(dir, f), "utf8")) as Record<string, string>)
    .sort((a, b) => Number(a.RANK) - Number(b.RANK));
}

function readJson(file: string): unknown {
  return JSON.parse(readFileSync(file, "utf8"));
}

/** What PyTorch's `@record` writes, with a unique message. */
function workerRecord(tag: string) {
  return {
    message: {
      message: `RuntimeError: shard ${tag} is corrupt`,
      extraInfo: {
        py_callstack:
          "Traceback (most recent call last):\n" +
          '  File "train.py", line 42, in load_shard\n' +
          "    check(shard)\n" +
          `RuntimeError: shard ${tag} is corrupt\n`,
        timestamp: "1700000000",
      },
    },
  };
}

/** The error file's folder of the run (three levels above a worker's file: attempt_N/<local rank>/error.json). */
function runFolder(errorFile: string): string {
  return dirname(dirname(dirname(errorFile)));
}

describe("rdzv run: worker error files (TORCHELASTIC_ERROR_FILE)", () => {
  it("reports the failed worker's error file as the root cause and copies it to the agent's own", async () => {
    const dir = tempDir();
    const tag = randomUUID();
    const agentFile = join(dir, "agent-error.json");
    const { code, stderr } = await run(["--standalone", "--nproc-per-node", "2", "--", "node", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "1",
      PROBE_CODE: "5",
      PROBE_ERROR_FILE: JSON.stringify(workerRecord(tag)),
      TORCHELASTIC_ERROR_FILE: agentFile,
    }).done;
    assert.equal(code, 1, stderr);
    const files = probes(dir).map((p) => p.TORCHELASTIC_ERROR_FILE ?? "");
    assert.equal(files.length, 2);
    for (const [rank, f] of files.entries()) assert.match(f, new RegExp(`/attempt_0/${rank}/error\\.json$`));
    assert.equal(runFolder(files[0]!), runFolder(files[1]!));
    assert.match(
      stderr,
      new RegExp(`rank 1 \\(local rank 1, pid \\d+\\) failed: exit code 5: RuntimeError: shard ${tag}`),
    );
    assert.match(stderr, /first failure: rank 1 \(local rank 1 on node 0, .*\): exit code 5\n/);
    assert.match(stderr, new RegExp(`\\n {4}error {5}: RuntimeError: shard ${tag} is corrupt\\n`));
    assert.match(stderr, /\n {4}time {6}: 2023-11-14T22:13:20Z\n/);
    assert.ok(stderr.includes(`\n    error file: ${files[1]}\n`), stderr);
    assert.match(
      stderr,
      /\n {4}traceback : Traceback \(most recent call last\):\n {18}File "train\.py", line 42, in load_shard\n/,
    );
    assert.doesNotMatch(stderr, /last stderr lines/);
    // torchrun's dump_error_file: the worker's record, with the exit code added.
    const expected = workerRecord(tag);
    assert.deepEqual(readJson(agentFile), { message: { ...expected.message, errorCode: 5 } });
    // The file the report names is still there (as torchrun's are, in its log folder); nothing else is.
    assert.deepEqual(readJson(files[1]!), expected);
    assert.deepEqual(readdirSync(runFolder(files[0]!), { recursive: true }).map(String).sort(), [
      "attempt_0",
      join("attempt_0", "1"),
      join("attempt_0", "1", "error.json"),
    ]);
    assert.match(stderr, /kept the failed workers' error files/);
  });

  it("a job that succeeds leaves no error file folder", async () => {
    const dir = tempDir();
    const { code, stderr } = await run(["--standalone", "--nproc-per-node", "2", "--", "node", PROBE], {
      PROBE_DIR: dir,
    }).done;
    assert.equal(code, 0, stderr);
    const files = probes(dir).map((p) => p.TORCHELASTIC_ERROR_FILE ?? "");
    assert.equal(files.length, 2);
    assert.equal(existsSync(runFolder(files[0]!)), false, "the error file folder outlived the agent");
  });

  it("a malformed error file gives a note and the stderr tail; the agent records the failure itself", async () => {
    const dir = tempDir();
    const agentFile = join(dir, "agent-error.json");
    const { code, stderr } = await run(["--standalone", "--", "node", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "0",
      PROBE_STDERR: "the last words",
      PROBE_ERROR_FILE: '{"message": {"message": "half wri',
      TORCHELASTIC_ERROR_FILE: agentFile,
    }).done;
    assert.equal(code, 1, stderr);
    const note = /\n {4}note {6}: error file (\S+\/attempt_0\/0\/error\.json) is not JSON \(.+\)\n/.exec(
      stderr,
    );
    assert.ok(note, stderr);
    // The malformed file the note names is kept for a look.
    assert.equal(readFileSync(note[1]!, "utf8"), '{"message": {"message": "half wri');
    assert.match(stderr, /last stderr lines:\n {4}the last words/);
    const record = readJson(agentFile) as {
      message: { message: string; extraInfo: { py_callstack: string } };
    };
    assert.match(
      record.message.message,
      /^rank 0 \(local rank 0 on node 0, 127\.0\.0\.1\) failed: exit code 1$/,
    );
    assert.match(record.message.extraInfo.py_callstack, /the last words/);
  });

  it("the other node prints the error from the store's record, and writes it to its own error file", async () => {
    const server = await createTCPStoreServer({ host: "127.0.0.1", port: 0 });
    servers.push(server);
    const dir = tempDir();
    const tag = randomUUID();
    const args = [
      "--nnodes",
      "2",
      "--rdzv-endpoint",
      `127.0.0.1:${server.port}`,
      "--rdzv-id",
      `error-file-${tag}`,
      "--rdzv-conf",
      FAST,
      "--stop-timeout",
      "2",
      "--",
      "node",
      PROBE,
    ];
    const env = (name: string) => ({
      PROBE_DIR: dir,
      PROBE_MODE: "fail",
      PROBE_RANKS: "1",
      PROBE_CODE: "4",
      PROBE_ERROR_FILE: JSON.stringify(workerRecord(tag)),
      TORCHELASTIC_ERROR_FILE: join(dir, `${name}.json`),
    });
    const results = await Promise.all([run(args, env("a")).done, run(args, env("b")).done]);
    for (const r of results) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /first failure: rank 1 .*: exit code 4\n/);
      assert.match(r.stderr, new RegExp(`\\n {4}error {5}: RuntimeError: shard ${tag} is corrupt\\n`));
      assert.match(r.stderr, /\n {18}File "train\.py", line 42, in load_shard\n/);
    }
    assert.equal(results.filter((r) => r.stderr.includes("reported by another node")).length, 1);
    const expected = { message: { ...workerRecord(tag).message, errorCode: 4 } };
    assert.deepEqual(readJson(join(dir, "a.json")), expected);
    assert.deepEqual(readJson(join(dir, "b.json")), expected);
  });

  it("a SIGKILLed agent's error file folder is removed by its reaper", async () => {
    const dir = tempDir();
    const agent = run(["--standalone", "--stop-timeout", "0.5", "--", "node", PROBE], {
      PROBE_DIR: dir,
      PROBE_MODE: "sleep",
    });
    const file = await waitFor("the worker", () => probes(dir)[0]?.TORCHELASTIC_ERROR_FILE);
    const folder = runFolder(file);
    assert.ok(existsSync(dirname(file)), `${dirname(file)} does not exist while the worker runs`);
    agent.child.kill("SIGKILL");
    await agent.done;
    await waitFor(`${folder} to be removed`, () => !existsSync(folder), 10_000);
  });

  for (const [name, find] of [
    ["2.x", findTorch2],
    ["1.13", findTorch1],
  ] as const) {
    it(`reports the exception a PyTorch ${name} worker's @record wrote, and copies it to the agent's file`, async () => {
      const torch: TorchPython = await find();
      const dir = tempDir();
      const boom = `boom-${randomUUID()}`;
      const agentFile = join(dir, "agent-error.json");
      const { code, stderr } = await run(
        ["--standalone", "--nproc-per-node", "2", "--stop-timeout", "2", "--", torch.python, RECORD_WORKER],
        { BOOM: boom, FAIL_RANK: "1", TORCHELASTIC_ERROR_FILE: agentFile },
      ).done;
      assert.equal(code, 1, stderr);
      assert.match(stderr, new RegExp(`\\n {4}error {5}: ValueError: ${boom}\\n`));
      assert.match(stderr, /\n {18}File "[^"]*record_worker\.py", line \d+, in explode\n/);
      assert.match(stderr, new RegExp(`\\n {16}ValueError: ${boom}\\n`));
      const record = readJson(agentFile) as {
        message: {
          message: string;
          extraInfo: { py_callstack: string; timestamp: string };
          errorCode: number;
        };
      };
      assert.equal(record.message.message, `ValueError: ${boom}`);
      assert.match(record.message.extraInfo.py_callstack, /record_worker\.py", line \d+, in explode/);
      assert.match(record.message.extraInfo.timestamp, /^\d+$/);
      assert.equal(record.message.errorCode, 1);
    });
  }
});
