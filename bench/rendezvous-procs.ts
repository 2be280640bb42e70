/**
 * Child processes of bench/rendezvous.ts: rdzv's store server, rdzv node workers (forked, IPC), and
 * PyTorch processes (line protocol on stdin/stdout). Every child is killed when the bench exits.
 */

import { type ChildProcess, fork, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { RoundTimeline } from "./rendezvous-server.js";
import type { FromWorker, ToWorker } from "./rendezvous-worker.js";

const HERE = fileURLToPath(new URL(".", import.meta.url));

function findRepoRoot(): string {
  for (let dir = HERE; ; dir = dirname(dir)) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, "utf8")) as { name?: string }).name === "rdzv")
      return dir;
    if (dirname(dir) === dir) return process.cwd();
  }
}

/** The repository root: the folder above this file holding rdzv's package.json. */
export const REPO_ROOT = findRepoRoot();
/** bench/py in the source tree. */
export const PY_DIR = join(REPO_ROOT, "bench", "py");

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

function track(child: ChildProcess): void {
  children.add(child);
  child.once("exit", () => children.delete(child));
}

/** Resolves with the next item a queue receives, or rejects after `timeoutMs`. */
class Inbox<T> {
  readonly #items: T[] = [];
  readonly #takers: ((item: T) => void)[] = [];
  #closed: string | undefined;
  #onClose: ((reason: string) => void)[] = [];

  push(item: T): void {
    const taker = this.#takers.shift();
    if (taker === undefined) this.#items.push(item);
    else taker(item);
  }

  close(reason: string): void {
    this.#closed ??= reason;
    for (const f of this.#onClose) f(reason);
    this.#onClose = [];
  }

  next(timeoutMs: number, what: string): Promise<T> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise<T>((resolve, reject) => {
      const fail = (reason: string): void => {
        clearTimeout(timer);
        reject(new Error(`${what}: ${reason}`));
      };
      if (this.#closed !== undefined) return fail(this.#closed);
      const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);
      this.#onClose.push(fail);
      this.#takers.push((it) => {
        clearTimeout(timer);
        resolve(it);
      });
    });
  }
}

/** Extra flags for node children (`--cpu-prof` into `cpuProfDir`). */
function nodeFlags(cpuProfDir: string | undefined): string[] {
  return cpuProfDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${cpuProfDir}`];
}

/** Stats line of bench/rendezvous-server.ts. */
export interface ServerStatsLine {
  connections: number;
  connectionsTotal: number;
  peakConnections: number;
  problems: number;
  opsByType: Record<string, number>;
}

/** Our server in a child process. */
export interface OurServer {
  readonly port: number;
  readonly pid: number;
  stats(): Promise<ServerStatsLine>;
  /** Per `<runId>/r<round>`: what the server saw of the round. */
  timeline(): Promise<Record<string, RoundTimeline>>;
  close(): Promise<void>;
}

export async function startOurServer(cpuProfDir: string | undefined): Promise<OurServer> {
  const script = join(HERE, "rendezvous-server.js");
  const child = spawn(process.execPath, [...nodeFlags(cpuProfDir), script], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  track(child);
  const inbox = new Inbox<string>();
  createInterface({ input: child.stdout }).on("line", (line) => inbox.push(line));
  child.once("exit", (code) => inbox.close(`server exited with ${code}`));
  const { port, pid } = JSON.parse(await inbox.next(10_000, "server start")) as { port: number; pid: number };
  return {
    port,
    pid,
    stats: async () => {
      child.stdin.write("stats\n");
      return JSON.parse(await inbox.next(10_000, "server stats")) as ServerStatsLine;
    },
    timeline: async () => {
      child.stdin.write("timeline\n");
      return JSON.parse(await inbox.next(10_000, "server timeline")) as Record<string, RoundTimeline>;
    },
    close: async () => {
      if (child.exitCode !== null) return;
      const exited = once(child, "exit");
      child.stdin.end();
      await exited;
    },
  };
}

/** TCP counters of this network namespace (/proc/net/netstat), e.g. ListenOverflows, TCPSynRetrans. */
export function tcpCounters(): Record<string, number> {
  try {
    const lines = readFileSync("/proc/net/netstat", "utf8").split("\n");
    const i = lines.findIndex((l) => l.startsWith("TcpExt:"));
    const names = lines[i]!.split(" ").slice(1);
    const values = lines[i + 1]!.split(" ").slice(1).map(Number);
    return Object.fromEntries(names.map((n, j) => [n, values[j]!]));
  } catch {
    return {};
  }
}

/** A forked rdzv node worker. */
export interface NodeWorker {
  readonly pid: number;
  send(message: ToWorker): void;
  next<K extends FromWorker["type"]>(type: K, timeoutMs: number): Promise<Extract<FromWorker, { type: K }>>;
  /** SIGKILL (no profile, no goodbye: the server sees connections reset). */
  kill(): void;
  /** Asks the worker to exit and waits for it. */
  close(): Promise<void>;
}

export function forkWorker(cpuProfDir: string | undefined): NodeWorker {
  const child = fork(join(HERE, "rendezvous-worker.js"), [], {
    execArgv: nodeFlags(cpuProfDir),
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  track(child);
  const inbox = new Inbox<FromWorker>();
  child.on("message", (m: FromWorker) => inbox.push(m));
  child.once("exit", (code, signal) => inbox.close(`worker exited (${code ?? signal})`));
  return {
    pid: child.pid ?? -1,
    send: (message) => child.send(message),
    next: async (type, timeoutMs) => {
      const m = await inbox.next(timeoutMs, `worker ${child.pid} ${type}`);
      if (m.type !== type) throw new Error(`worker ${child.pid}: expected ${type}, got ${m.type}`);
      return m as Extract<FromWorker, { type: typeof type }>;
    },
    kill: () => child.kill("SIGKILL"),
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      if (child.connected) child.send({ type: "exit" } satisfies ToWorker);
      else child.kill("SIGKILL");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** A PyTorch process of bench/py/rendezvous_torch.py. */
export interface PyProc {
  next(timeoutMs: number, what: string): Promise<Record<string, unknown>>;
  writeLine(line: string): void;
  kill(): Promise<void>;
}

const MARK = "@@rdzv ";

export function spawnPy(python: string, args: readonly string[]): PyProc {
  const child = spawn(python, [join(PY_DIR, "rendezvous_torch.py"), ...args], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
  });
  track(child);
  const inbox = new Inbox<Record<string, unknown>>();
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-2000);
  });
  createInterface({ input: child.stdout }).on("line", (line) => {
    if (line.startsWith(MARK)) inbox.push(JSON.parse(line.slice(MARK.length)) as Record<string, unknown>);
  });
  child.once("exit", (code, signal) =>
    inbox.close(`python exited (${code ?? signal}): ${stderr.slice(-600)}`),
  );
  return {
    next: (timeoutMs, what) => inbox.next(timeoutMs, what),
    writeLine: (line) => child.stdin.write(`${line}\n`),
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGKILL");
      await exited;
    },
  };
}
