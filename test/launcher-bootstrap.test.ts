/**
 * `rdzv run` with workers that bootstrap from the agent's store (`use_agent_store`, the static backend's
 * default): each attempt gets a store of its own, as PyTorch 2.x's `env://` expects (it no longer puts an
 * attempt under `/worker/attempt_<N>`), so a restarted group never reads the previous attempt's keys.
 * The worker (test/fixtures/bootstrap-probe.mjs) does what `init_process_group` does there: it writes
 * unprefixed keys into MASTER_ADDR:MASTER_PORT.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { pickFreePort } from "../src/rendezvous/free-port.js";
import { REPO_ROOT } from "./helpers/torch.js";

const MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const PROBE = join(REPO_ROOT, "test", "fixtures", "bootstrap-probe.mjs");

/** Runs `rdzv run ARGS` to its end (SIGKILLed past 30 s). */
function runToEnd(args: readonly string[]): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [MAIN, "run", "--no-status", ...args], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (t: string) => (output += t));
  child.stderr.setEncoding("utf8").on("data", (t: string) => (output += t));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  return new Promise((resolve) => {
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/** The `attempt N: True ADDR:PORT` lines the workers printed, by attempt. */
function bootstraps(output: string): Map<string, string> {
  return new Map(
    [...output.matchAll(/^attempt (\d+): (True|False) (\S+)$/gm)].map((m) => [m[1]!, `${m[2]} ${m[3]}`]),
  );
}

describe("rdzv run: the agent's store as bootstrap store (use_agent_store)", () => {
  it("static: a restarted group bootstraps from a new store, not the failed attempt's", async () => {
    const port = await pickFreePort();
    const common = ["--nnodes", "2", "--rdzv-backend", "static", "--rdzv-endpoint", `127.0.0.1:${port}`];
    const nodes = await Promise.all(
      [0, 1].map((rank) =>
        runToEnd([...common, "--node-rank", String(rank), "--max-restarts", "1", "--", "node", PROBE]),
      ),
    );
    for (const node of nodes) {
      assert.equal(node.code, 0, node.output);
      assert.doesNotMatch(node.output, /previous attempt's keys/);
    }
    // Every worker of an attempt, on either node, bootstraps from the same store, which is not the
    // rendezvous endpoint and changes with the attempt. (A worker stopped before it printed, because the
    // other node's failed first, says nothing.)
    const seen = new Map<string, Set<string>>();
    for (const node of nodes) {
      for (const [attempt, store] of bootstraps(node.output)) {
        seen.set(attempt, (seen.get(attempt) ?? new Set()).add(store));
      }
    }
    const [first, second] = [seen.get("0"), seen.get("1")].map((stores) => [...(stores ?? [])]);
    assert.equal(first!.length, 1, JSON.stringify(first));
    assert.equal(second!.length, 1, JSON.stringify(second));
    assert.match(first![0]!, /^True 127\.0\.0\.1:\d+$/);
    assert.notEqual(first![0], second![0]);
    assert.notEqual(first![0], `True 127.0.0.1:${port}`);
  });

  it("c10d with use_agent_store=true: the same, through the launcher store", async () => {
    const port = await pickFreePort();
    const { code, output } = await runToEnd([
      "--rdzv-endpoint",
      `127.0.0.1:${port}`,
      "--rdzv-id",
      "bootstrap",
      "--rdzv-conf",
      "use_agent_store=true,last_call_timeout=0.5",
      "--local-addr",
      "127.0.0.1",
      "--max-restarts",
      "1",
      "--",
      "node",
      PROBE,
    ]);
    assert.equal(code, 0, output);
    const seen = bootstraps(output);
    assert.equal(seen.size, 2, output);
    assert.notEqual(seen.get("0"), seen.get("1"));
  });
});
