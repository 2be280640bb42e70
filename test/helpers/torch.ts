/**
 * Test helpers that run real PyTorch: locating the interpreters (1.13 for the v1 dialect, 2.x for v2),
 * running the batched driver scripts of `test/py/`, and remote-controlling a PyTorch process (an "agent",
 * optionally hosting PyTorch's own master TCPStore server) line by line.
 *
 * A missing PyTorch never skips a test: `findTorch1` / `findTorch2` reject with the exact command that
 * installs it. Every Python process is killed when its handle closes, on timeout, and when this process
 * exits; agents also exit on their own when their stdin closes.
 */

import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";

/** A Python interpreter with a working `import torch`. */
export interface TorchPython {
  readonly python: string;
  /** `torch.__version__`, e.g. "1.13.0a0" or "2.13.0+cpu". */
  readonly version: string;
  readonly major: number;
}

/** Marks machine-readable lines of the drivers (see `test/py/harness.py`). */
const MARK = "@@rdzv ";
const PROBE_TIMEOUT_MS = 60_000;

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, "utf8")) as { name?: string }).name === "rdzv") {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error("test/helpers/torch: cannot find the rdzv repository root");
    dir = parent;
  }
}

/** The repository root (the folder holding rdzv's package.json). */
export const REPO_ROOT = findRepoRoot();
/** Folder of the Python driver scripts. */
export const PY_DIR = join(REPO_ROOT, "test", "py");

const INSTALL_TORCH1 = "apt-get install -y python3-torch   (Debian's PyTorch 1.13 for /usr/bin/python3)";
const INSTALL_TORCH2 =
  `cd ${REPO_ROOT} && python3 -m venv .venv-torch && .venv-torch/bin/pip install torch` +
  "   (or set RDZV_TORCH2_PYTHON to a python whose torch is 2.x)";

const PROBE_SCRIPT = [
  "import importlib.metadata, importlib.util",
  "assert importlib.util.find_spec('torch') is not None, 'no module named torch'",
  "print(importlib.metadata.version('torch'))",
].join("\n");

const probes = new Map<string, Promise<TorchPython>>();

function probe(python: string): Promise<TorchPython> {
  let cached = probes.get(python);
  if (cached === undefined) {
    // Reading the installed version is ~20x faster than `import torch` (1-2 s); a torch that is installed
    // but fails to import still fails the tests, through the drivers' stderr (see `failureHint`).
    cached = runCollect(python, ["-c", PROBE_SCRIPT], PROBE_TIMEOUT_MS).then(({ code, stdout, stderr }) => {
      const version = stdout.trim().split("\n").pop() ?? "";
      if (code !== 0 || !/^\d+\./.test(version)) {
        throw new Error(`${python} has no usable torch (exit ${code}): ${tail(stderr, 400)}`);
      }
      return { python, version, major: Number(version.split(".")[0]) };
    });
    probes.set(python, cached);
  }
  return cached;
}

/**
 * PyTorch 1.x at `/usr/bin/python3` (the v1 dialect). Rejects, saying how to install it, when missing or
 * not 1.x.
 */
export async function findTorch1(): Promise<TorchPython> {
  const python = "/usr/bin/python3";
  let found: TorchPython;
  try {
    found = await probe(python);
  } catch (err) {
    throw new Error(`PyTorch 1.13 is required for the v1 interop tests. Install it: ${INSTALL_TORCH1}`, {
      cause: err,
    });
  }
  if (found.major !== 1) {
    throw new Error(
      `${python} has torch ${found.version}, the v1 interop tests need 1.x. Install: ${INSTALL_TORCH1}`,
    );
  }
  return found;
}

/**
 * PyTorch 2.x (the v2 dialect): `$RDZV_TORCH2_PYTHON`, else `<repo>/.venv-torch/bin/python`. Rejects,
 * saying how to install it, when missing or not 2.x.
 */
export async function findTorch2(): Promise<TorchPython> {
  const python = process.env.RDZV_TORCH2_PYTHON || join(REPO_ROOT, ".venv-torch", "bin", "python");
  if (!existsSync(python)) {
    throw new Error(
      `PyTorch 2.x is required for the v2 interop tests; ${python} does not exist. Install it: ${INSTALL_TORCH2}`,
    );
  }
  let found: TorchPython;
  try {
    found = await probe(python);
  } catch (err) {
    throw new Error(`PyTorch 2.x at ${python} does not import. Install it: ${INSTALL_TORCH2}`, {
      cause: err,
    });
  }
  if (found.major < 2) {
    throw new Error(
      `${python} has torch ${found.version}, the v2 interop tests need 2.x. Install: ${INSTALL_TORCH2}`,
    );
  }
  return found;
}

// --- processes ----------------------------------------------------------------------------------------------

const live = new Set<ChildProcessWithoutNullStreams>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

function spawnPython(python: string, args: readonly string[]): ChildProcessWithoutNullStreams {
  const child = spawn(python, [...args], {
    cwd: PY_DIR,
    env: { ...process.env, PYTHONUNBUFFERED: "1", PYTHONDONTWRITEBYTECODE: "1", OMP_NUM_THREADS: "1" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  live.add(child);
  child.on("exit", () => live.delete(child));
  child.stdin.on("error", () => {}); // EPIPE after the child died is reported through its exit instead
  return child;
}

/** The end of a driver's stderr, plus how to (re)install torch when the failure was importing it. */
function failureDetail(torch: TorchPython, stderr: string): string {
  const broken = /ModuleNotFoundError|ImportError|No module named/.test(stderr);
  const hint = !broken
    ? ""
    : `\ntorch does not import; reinstall it: ${torch.major === 1 ? INSTALL_TORCH1 : INSTALL_TORCH2}`;
  return `${tail(stderr, 2000)}${hint}`;
}

function tail(text: string, max: number): string {
  return text.length <= max ? text : `...${text.slice(-max)}`;
}

/** Calls `onMessage` with each MARK line of `child`'s stdout, parsed; keeps the last 8 KB of stderr. */
function readMessages(
  child: ChildProcessWithoutNullStreams,
  onMessage: (msg: PyMessage) => void,
): () => string {
  let pending = "";
  let stderr = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => {
    pending += chunk;
    let nl = pending.indexOf("\n");
    while (nl >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.startsWith(MARK)) onMessage(JSON.parse(line.slice(MARK.length)) as PyMessage);
      nl = pending.indexOf("\n");
    }
  });
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk: string) => {
    stderr = tail(stderr + chunk, 8192);
  });
  return () => stderr;
}

function runCollect(
  python: string,
  args: readonly string[],
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(python, [...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr = tail(stderr + c, 8192)));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** One parsed MARK line. */
export type PyMessage = Record<string, unknown>;

/** Outcome of one case of a driver script. */
export interface DriverCase {
  name: string;
  ok: boolean;
  ms: number;
  error?: { type: string; mro: string[]; message: string };
  traceback?: string;
}

/** The final result of `test/py/suite.py`. */
export interface SuiteResult {
  torch: string;
  flavor: "v1" | "v2";
  init_adds: number;
  /** `torch.distributed.TCPStore`'s public API in that PyTorch, and the methods the cases called. */
  api: { methods: string[]; properties: string[]; called: string[] };
  cases: DriverCase[];
}

/**
 * Asserts that the suite called every public `TCPStore` method of its PyTorch version (so a method that a
 * newer PyTorch adds fails here until a case covers it). Properties are read by the suite's `attributes` case.
 */
export function assertApiCovered(result: SuiteResult): void {
  const { methods, properties, called } = result.api;
  assert.ok(
    methods.length > 0 && properties.includes("host"),
    `no TCPStore API found: ${JSON.stringify(result.api)}`,
  );
  const missed = methods.filter((m) => !called.includes(m));
  assert.deepEqual(missed, [], `TCPStore ${result.torch} methods no suite case calls`);
}

/**
 * Runs `test/py/<script>` with `args` and resolves with the payload of its final `{"result": ...}` line.
 * Rejects (with the end of its stderr) when it exits without one or runs past `timeoutMs` (then it is
 * killed).
 */
export function runDriver<T = unknown>(
  torch: TorchPython,
  script: string,
  args: readonly string[],
  timeoutMs = 60_000,
): Promise<T> {
  return new Promise((resolvePromise, reject) => {
    const child = spawnPython(torch.python, [join(PY_DIR, script), ...args]);
    let result: T | undefined;
    const stderr = readMessages(child, (msg) => {
      if ("result" in msg) result = msg.result as T;
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `${script} (torch ${torch.version}) ran past ${timeoutMs} ms\n${failureDetail(torch, stderr())}`,
        ),
      );
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (result !== undefined) resolvePromise(result);
      else {
        const detail = failureDetail(torch, stderr());
        const how = signal === null ? `exited ${code}` : `died of ${signal}`;
        const err = new Error(`${script} (torch ${torch.version}) ${how} without a result\n${detail}`);
        reject(Object.assign(err, { signal }));
      }
    });
  });
}

// --- agent --------------------------------------------------------------------------------------------------

/** A timedelta argument for the agent. */
export function td(seconds: number): { td: number } {
  return { td: seconds };
}

/** Error raised in Python, as reported by the agent. */
export interface PyError {
  type: string;
  mro: string[];
  message: string;
}

/** Reply of one agent command. `value` has bytes decoded to `Buffer`. */
export type PyReply = { ok: true; value: unknown; ms: number } | { ok: false; error: PyError; ms: number };

function encodeArg(value: unknown): unknown {
  if (value instanceof Uint8Array) return { b64: Buffer.from(value).toString("base64") };
  if (Array.isArray(value)) return value.map(encodeArg);
  return value;
}

function decodeValue(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(decodeValue);
  if (value !== null && typeof value === "object" && "b64" in value) {
    return Buffer.from(String((value as { b64: string }).b64), "base64");
  }
  return value;
}

/** Options of `startAgent`. */
export interface AgentOptions {
  /** Host PyTorch's own master TCPStore server on a free port (see `PyAgent.port`). */
  master?: boolean;
  /** For a 2.x master: `use_libuv` (PyTorch's default is true). */
  useLibuv?: boolean;
  /** How long to wait for the agent to start, ms (default 60 000). */
  startTimeoutMs?: number;
  /**
   * Another script speaking the agent protocol (a ready event, then one reply per command id, "exit" op),
   * e.g. the benchmark worker; `master` and `useLibuv` are then passed on as its flags.
   */
  script?: string;
  /** Extra command-line arguments for the script. */
  args?: readonly string[];
}

/** A remote-controlled PyTorch process (see `test/py/agent.py`). */
export class PyAgent implements AsyncDisposable {
  readonly torch: TorchPython;
  /** Port of PyTorch's master server when started with `master`, else null. */
  port: number | null = null;
  /** The process id of the Python process. */
  readonly pid: number | undefined;
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #stderr: () => string;
  readonly #pending = new Map<number, (reply: PyReply) => void>();
  #nextId = 1;
  #exited = false;
  readonly #ready: Promise<void>;

  constructor(torch: TorchPython, options: AgentOptions = {}) {
    this.torch = torch;
    const args = [options.script ?? join(PY_DIR, "agent.py"), ...(options.args ?? [])];
    if (options.master) args.push("--master");
    if (options.useLibuv !== undefined) args.push("--use-libuv", options.useLibuv ? "1" : "0");
    this.#child = spawnPython(torch.python, args);
    this.pid = this.#child.pid;
    let onReady: (() => void) | undefined;
    this.#stderr = readMessages(this.#child, (msg) => {
      if (msg.event === "ready") {
        this.port = (msg.port as number | null) ?? null;
        onReady?.();
        return;
      }
      const id = msg.id as number;
      const settle = this.#pending.get(id);
      this.#pending.delete(id);
      const ms = msg.ms as number;
      settle?.(
        msg.ok
          ? { ok: true, value: decodeValue(msg.value), ms }
          : { ok: false, error: msg.error as PyError, ms },
      );
    });
    this.#ready = new Promise<void>((resolvePromise, reject) => {
      const timeoutMs = options.startTimeoutMs ?? 60_000;
      const timer = setTimeout(
        () => reject(this.#failure(`did not start within ${timeoutMs} ms`)),
        timeoutMs,
      );
      onReady = () => {
        clearTimeout(timer);
        resolvePromise();
      };
      this.#child.on("close", (code) => {
        clearTimeout(timer);
        reject(this.#failure(`exited ${code} before it was ready`));
      });
    });
    this.#ready.catch(() => {});
    this.#child.on("close", (code) => {
      this.#exited = true;
      for (const settle of this.#pending.values()) {
        settle({
          ok: false,
          error: { type: "AgentExited", mro: [], message: `agent exited ${code}` },
          ms: 0,
        });
      }
      this.#pending.clear();
    });
  }

  /** Resolves once the agent (and its master server, if any) is up. */
  ready(): Promise<void> {
    return this.#ready;
  }

  #failure(what: string): Error {
    return new Error(
      `PyTorch agent (torch ${this.torch.version}) ${what}\n${failureDetail(this.torch, this.#stderr())}`,
    );
  }

  /** Sends one raw command; resolves with its reply (never rejects for Python errors). */
  command(cmd: Record<string, unknown>, timeoutMs = 30_000): Promise<PyReply> {
    if (this.#exited) return Promise.reject(this.#failure("has exited"));
    const id = this.#nextId++;
    return new Promise<PyReply>((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(this.#failure(`gave no reply to ${JSON.stringify(cmd).slice(0, 200)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, (reply) => {
        clearTimeout(timer);
        resolvePromise(reply);
      });
      this.#child.stdin.write(`${JSON.stringify({ ...cmd, id })}\n`);
    });
  }

  /** Opens a client `TCPStore(host, port, is_master=False, timeout=timeoutS, **kwargs)` named `name`. */
  async open(name: string, host: string, port: number, timeoutS = 10, kwargs: Record<string, unknown> = {}) {
    return this.#value(
      await this.command({ op: "open", name, host, port, timeout_s: timeoutS, kwargs }),
      `open ${name}`,
    );
  }

  /** `store.clone()` registered as `as`. */
  async clone(store: string, as: string): Promise<void> {
    await this.#value(await this.command({ op: "clone", store, as }), `clone ${store}`);
  }

  /** `PrefixStore(prefix, store)` registered as `as`. */
  async prefix(store: string, prefix: string, as: string): Promise<void> {
    await this.#value(await this.command({ op: "prefix", store, prefix, as }), `prefix ${store}`);
  }

  /** Calls `store.method(*args, **kwargs)`; resolves with the reply, error or not. */
  call(
    store: string,
    method: string,
    args: unknown[] = [],
    kwargs: Record<string, unknown> = {},
    timeoutMs?: number,
  ) {
    const enc = Object.fromEntries(Object.entries(kwargs).map(([k, v]) => [k, encodeArg(v)]));
    return this.command({ op: "call", store, method, args: args.map(encodeArg), kwargs: enc }, timeoutMs);
  }

  /** Like `call`, but resolves with the value and rejects when Python raised. */
  async ok(store: string, method: string, ...args: unknown[]): Promise<unknown> {
    return this.#value(
      await this.call(store, method, args),
      `${store}.${method}(${JSON.stringify(args).slice(1, 120)})`,
    );
  }

  #value(reply: PyReply, what: string): unknown {
    if (reply.ok) return reply.value;
    throw new Error(`python ${what} raised ${reply.error.type}: ${reply.error.message}`);
  }

  /** Ends the agent: asks it to exit, kills it after 2 s. Idempotent. */
  async close(): Promise<void> {
    if (this.#exited) return;
    const closed = new Promise<void>((resolvePromise) => this.#child.once("close", () => resolvePromise()));
    this.#child.stdin.end(`${JSON.stringify({ op: "exit" })}\n`);
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), 2000);
    await closed;
    clearTimeout(timer);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Starts an agent and waits until it is ready (kills it when it fails to start). */
export async function startAgent(torch: TorchPython, options: AgentOptions = {}): Promise<PyAgent> {
  const agent = new PyAgent(torch, options);
  try {
    await agent.ready();
  } catch (err) {
    await agent.close();
    throw err;
  }
  return agent;
}

/** PyTorch's own master TCPStore server (in an agent) on a free loopback port. */
export async function startTorchServer(
  torch: TorchPython,
  options: { useLibuv?: boolean } = {},
): Promise<PyAgent & { port: number }> {
  const agent = await startAgent(torch, { master: true, ...options });
  if (agent.port === null) throw new Error("the PyTorch master reported no port");
  return agent as PyAgent & { port: number };
}

/** Renders a failed driver case for an assertion message. */
export function describeCase(c: DriverCase): string {
  if (c.ok) return `${c.name}: ok`;
  return `${c.name}: ${c.error?.type}: ${c.error?.message}\n${c.traceback ?? ""}`;
}

/**
 * Reports every case of a suite run as a subtest of `t`. Cases named in `knownFailures` (name -> why) are
 * not asserted: their outcome is logged as a diagnostic instead.
 */
export async function reportSuite(
  t: TestContext,
  result: SuiteResult,
  knownFailures: Readonly<Record<string, string>> = {},
): Promise<void> {
  assert.ok(result.cases.length > 0, "the suite ran no case");
  for (const c of result.cases) {
    await t.test(`${c.name} (${c.ms} ms)`, (sub) => {
      const why = knownFailures[c.name];
      if (why !== undefined) {
        sub.diagnostic(`not asserted (${why}): ${c.ok ? "passed" : `failed: ${c.error?.message}`}`);
        return;
      }
      assert.ok(c.ok, describeCase(c));
    });
  }
}

/** The absolute path of a script in `test/py/`. */
export function pyScript(name: string): string {
  return resolve(PY_DIR, name);
}
