/**
 * `rdzv serve` as a child process (the compiled CLI, dist/src/cli/main.js), for tests that need a server
 * they can SIGKILL, SIGSTOP or restart: torchrun end to end, the chaos soak and the durability tests.
 * Every process started here is SIGKILLed when this process exits.
 */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { REPO_ROOT } from "./torch.js";

/** The compiled `rdzv` command of the same build as this file (dist/src/cli/main.js). */
export const RDZV_MAIN = fileURLToPath(new URL("../../src/cli/main.js", import.meta.url));

const LISTENING = /rdzv store listening on (\S+):(\d+)/;
const live = new Set<ChildProcessWithoutNullStreams>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** A running `rdzv serve`. */
export interface ServeProcess extends AsyncDisposable {
  readonly child: ChildProcessWithoutNullStreams;
  readonly port: number;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Resolves with the exit code (or signal name) once it exited. */
  readonly exited: Promise<number | string>;
  /** SIGKILLs it (when still running) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<number | string>;
}

/**
 * Starts `rdzv serve --port PORT ARGS` (port 0 by default: a free one; `env` over this process's; with
 * `openFileLimit`, under that `ulimit -n`) and resolves once it listens.
 * Rejects with its output when it exits first or does not listen within `startTimeoutMs`.
 */
export async function startServe(
  args: readonly string[] = [],
  options: { port?: number; startTimeoutMs?: number; env?: NodeJS.ProcessEnv; openFileLimit?: number } = {},
): Promise<ServeProcess> {
  const command = [RDZV_MAIN, "serve", "--port", String(options.port ?? 0), "--log-level", "warn", ...args];
  const spawnOptions = {
    cwd: REPO_ROOT,
    stdio: ["pipe", "pipe", "pipe"] as ["pipe", "pipe", "pipe"],
    env: { ...process.env, ...options.env },
  };
  // With an open-file limit: through bash's ulimit, which then execs the server (same pid).
  const child =
    options.openFileLimit === undefined
      ? spawn(process.execPath, command, spawnOptions)
      : spawn(
          "bash",
          ["-c", `ulimit -n ${options.openFileLimit} && exec "$0" "$@"`, process.execPath, ...command],
          spawnOptions,
        );
  live.add(child);
  let text = "";
  const exited = new Promise<number | string>((resolve) => {
    child.on("exit", (code, signal) => {
      live.delete(child);
      resolve(code ?? signal ?? "unknown");
    });
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`rdzv serve did not listen within ${options.startTimeoutMs ?? 20_000} ms:\n${text}`));
    }, options.startTimeoutMs ?? 20_000);
    const onData = (chunk: Buffer): void => {
      text += chunk.toString("utf8");
      const m = LISTENING.exec(text);
      if (m !== null) {
        clearTimeout(timer);
        resolve(Number(m[2]));
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    void exited.then((how) => {
      clearTimeout(timer);
      reject(new Error(`rdzv serve exited (${how}) before listening:\n${text}`));
    });
  });
  const kill = async (signal: NodeJS.Signals = "SIGKILL"): Promise<number | string> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  return {
    child,
    port,
    output: () => text,
    exited,
    kill,
    [Symbol.asyncDispose]: async () => {
      await kill();
    },
  };
}

/** Runs `rdzv serve ARGS` expecting it to fail at start; resolves with its exit code and output. */
export async function serveFailure(
  args: readonly string[],
): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [RDZV_MAIN, "serve", "--port", "0", ...args], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (c: Buffer) => (output += c.toString("utf8")));
  child.stderr.on("data", (c: Buffer) => (output += c.toString("utf8")));
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const [code] = (await once(child, "close")) as [number | null];
  clearTimeout(timer);
  return { code, output };
}
