/**
 * `rdzv run` end to end, for what passes between the agent and its workers besides the rendezvous: their
 * output (bytes as written), their input and their environment. Real agent processes (the compiled CLI)
 * with `--standalone`, real worker processes.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, describe, it } from "node:test";
import { createTCPStoreServer } from "../src/store/tcp/server.js";
import { REPO_ROOT } from "./helpers/torch.js";
import { waitFor } from "./helpers/wait-for.js";

const MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const WORKER = join(REPO_ROOT, "test", "fixtures", "io-worker.mjs");

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

const children: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "rdzv-launcher-io-"));
  dirs.push(dir);
  return dir;
}

interface RdzvOptions {
  /** Written to its input, which is then closed (without it, its input is /dev/null). */
  readonly stdin?: Buffer | string;
  /** On top of ours; `undefined` removes a variable. */
  readonly env?: Record<string, string | undefined>;
  /** Stop reading its stdout (and stderr) at once, or after its first output, as `| head -1` does. */
  readonly closeOutput?: "at-once" | "after-first";
  readonly closeStderr?: boolean;
}

interface Started {
  readonly child: ChildProcess;
  readonly done: Promise<Finished>;
  /** Its stdout so far. */
  stdout(): Buffer;
}

/** Starts `rdzv ARGS` as `options` say; it is killed after 30 s, or after the test. */
function start(args: readonly string[], options: RdzvOptions = {}): Started {
  const child = spawn(process.execPath, [MAIN, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...options.env },
    stdio: [options.stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
  });
  children.push(child);
  child.stdin?.end(options.stdin);
  const stdout: Buffer[] = [];
  let stderr = "";
  const closeOutput = (): void => {
    child.stdout!.destroy();
    if (options.closeStderr === true) child.stderr!.destroy();
  };
  if (options.closeOutput === "at-once") closeOutput();
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout.push(chunk);
    if (options.closeOutput === "after-first") closeOutput();
  });
  child.stderr!.setEncoding("utf8").on("data", (text: string) => (stderr += text));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const done = new Promise<Finished>((resolve) => {
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(stdout), stderr });
    });
  });
  return { child, done, stdout: () => Buffer.concat(stdout) };
}

/** Runs `rdzv ARGS` as `options` say, to its end. */
function rdzv(args: readonly string[], options: RdzvOptions = {}): Promise<Finished> {
  return start(args, options).done;
}

const RUN = ["run", "--standalone", "--no-status"] as const;

describe("rdzv run: worker output", () => {
  it("passes a worker's binary output through untouched with --no-prefix-output", async () => {
    const file = join(tempDir(), "rand.bin");
    const data = randomBytes(100_000);
    writeFileSync(file, data);
    const { code, stdout, stderr } = await rdzv([...RUN, "--no-prefix-output", "--", "cat", file]);
    assert.equal(code, 0, stderr);
    assert.equal(stdout.length, data.length);
    assert.ok(stdout.equals(data));
  });
});

describe("rdzv: a reader that goes away (EPIPE)", () => {
  it("run: the workers keep running and the agent finishes cleanly once nobody reads its stdout", async () => {
    const dir = tempDir();
    const { code, stderr } = await rdzv(
      [...RUN, "--no-prefix-output", "--nproc-per-node", "2", "--", "node", WORKER],
      { env: { IO_DIR: dir, IO_LINES: "20000" }, closeOutput: "after-first" },
    );
    assert.equal(code, 0, stderr);
    assert.doesNotMatch(stderr, /EPIPE|Error|not left cleanly/);
    assert.match(stderr, /all workers succeeded/);
    assert.ok(existsSync(join(dir, "done-0")) && existsSync(join(dir, "done-1")), "a worker did not finish");
  });

  it("run: the same with its stderr gone too (2>&1 | head -1)", async () => {
    const dir = tempDir();
    const { code } = await rdzv([...RUN, "--prefix-output", "--nproc-per-node", "2", "--", "node", WORKER], {
      env: { IO_DIR: dir, IO_LINES: "20000" },
      closeOutput: "after-first",
      closeStderr: true,
    });
    assert.equal(code, 0);
    assert.ok(existsSync(join(dir, "done-0")) && existsSync(join(dir, "done-1")), "a worker did not finish");
  });

  it("status --watch exits quietly, with 141 as a program killed by SIGPIPE", async () => {
    const server = await createTCPStoreServer({ host: "127.0.0.1", port: 0 });
    try {
      const { code, stderr } = await rdzv(
        ["status", "--watch", "--interval-ms", "50", "--endpoint", `127.0.0.1:${server.port}`],
        { closeOutput: "at-once" },
      );
      assert.equal(stderr, "");
      assert.equal(code, 141);
    } finally {
      await server.close();
    }
  });
});

describe("rdzv run: worker input", () => {
  it("workers read the agent's stdin, as torchrun's do (echo hello | rdzv run -- cat)", async () => {
    const { code, stdout, stderr } = await rdzv([...RUN, "--no-prefix-output", "--", "cat"], {
      stdin: "hello\n",
    });
    assert.equal(code, 0, stderr);
    assert.equal(stdout.toString(), "hello\n");
  });
});

describe("rdzv run: worker environment", () => {
  it("a Python worker's output shows while it runs (PYTHONUNBUFFERED), not only once it exits", async () => {
    const agent = start(
      [...RUN, "--no-prefix-output", "--", "python3", "-c", "import time; print('ready'); time.sleep(60)"],
      { env: { PYTHONUNBUFFERED: undefined } },
    );
    await waitFor("the worker's line", () => agent.stdout().toString().includes("ready"), 10_000);
    agent.child.kill("SIGTERM");
    const { code, stderr } = await agent.done;
    assert.equal(code, 143, stderr);
  });
});
