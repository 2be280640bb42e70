/**
 * `rdzv run` end to end, for what passes between the agent and its workers besides the rendezvous: their
 * output (bytes as written), their input and their environment. Real agent processes (the compiled CLI)
 * with `--standalone`, real worker processes.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, describe, it } from "node:test";
import { REPO_ROOT } from "./helpers/torch.js";

const MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");

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

/** Runs `rdzv ARGS`; `stdin` is written to its input and closed (its input is /dev/null without it). */
function rdzv(args: readonly string[], options: { stdin?: Buffer | string } = {}): Promise<Finished> {
  const child = spawn(process.execPath, [MAIN, ...args], {
    cwd: REPO_ROOT,
    stdio: [options.stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
  });
  children.push(child);
  child.stdin?.end(options.stdin);
  const stdout: Buffer[] = [];
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => stdout.push(chunk));
  child.stderr!.setEncoding("utf8").on("data", (text: string) => (stderr += text));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  return new Promise((resolve) => {
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(stdout), stderr });
    });
  });
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
