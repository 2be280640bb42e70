/**
 * Starts a real `redis-server` for tests on a random loopback port with a temporary directory, killed
 * (and the directory removed) by `stop()` and when this process exits. `restart()` kills it with
 * SIGKILL and starts it again on the same port and directory. A missing binary fails with the command
 * that installs it.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { Redis } from "ioredis";
import { pickFreePort } from "../../src/rendezvous/free-port.js";

function redisBinary(): string {
  for (const path of ["/usr/bin/redis-server", "/usr/local/bin/redis-server"])
    if (existsSync(path)) return path;
  const dir = (process.env.PATH ?? "")
    .split(":")
    .find((d) => d !== "" && existsSync(join(d, "redis-server")));
  if (dir === undefined) {
    throw new Error(
      "redis-server is not installed: these tests run a real Redis; install it with: apt-get install -y redis-server",
    );
  }
  return join(dir, "redis-server");
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/** Options of `RedisTestServer.start`. */
export interface RedisTestOptions {
  /** Persist every write to an append-only file (fsync always), so a restart keeps the data. */
  persistent?: boolean;
  /** More redis-server arguments (TLS ports, ACL users, `--requirepass`). */
  args?: readonly string[];
  /** The default user's password, for the helper's own probe when `args` sets `--requirepass`. */
  password?: string;
}

/** redis-server exited before it served (typically: its port was taken meanwhile). */
class ExitedEarly extends Error {}

/** A running redis-server. */
export class RedisTestServer {
  readonly port: number;
  readonly #dir: string;
  readonly #persistent: boolean;
  readonly #args: readonly string[];
  readonly #password: string | undefined;
  #process: ChildProcess | undefined;

  private constructor(port: number, dir: string, options: RedisTestOptions) {
    this.port = port;
    this.#dir = dir;
    this.#persistent = options.persistent ?? false;
    this.#args = options.args ?? [];
    this.#password = options.password;
  }

  /**
   * Starts a server on a free port. A port picked free can be taken by another process (tests run side by
   * side) before redis-server binds it, and then it exits at once: it starts again on a new port, up to 5
   * times.
   */
  static async start(options: RedisTestOptions = {}): Promise<RedisTestServer> {
    redisBinary();
    for (let attempt = 1; ; attempt++) {
      const dir = await mkdtemp(join(tmpdir(), "rdzv-redis-"));
      const server = new RedisTestServer(await pickFreePort("127.0.0.1"), dir, options);
      try {
        await server.#spawn();
        return server;
      } catch (err) {
        await server.stop();
        if (!(err instanceof ExitedEarly) || attempt >= 5) throw err;
      }
    }
  }

  get endpoint(): string {
    return `127.0.0.1:${this.port}`;
  }

  async #spawn(): Promise<void> {
    const persistence = this.#persistent
      ? ["--appendonly", "yes", "--appendfsync", "always"]
      : ["--appendonly", "no"];
    const child = spawn(
      redisBinary(),
      [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--dir",
        this.#dir,
        "--save",
        "",
        ...persistence,
      ].concat(this.#args),
      { stdio: "ignore" },
    );
    let exited = false;
    child.once("exit", () => {
      exited = true;
      live.delete(child);
    });
    live.add(child);
    this.#process = child;
    const deadline = Date.now() + 10_000;
    const probe = new Redis({
      port: this.port,
      host: "127.0.0.1",
      lazyConnect: true,
      retryStrategy: () => null,
      ...(this.#password === undefined ? {} : { password: this.#password }),
    });
    probe.on("error", () => undefined);
    try {
      for (;;) {
        try {
          await probe.connect();
          await probe.ping();
          return;
        } catch (err) {
          probe.disconnect();
          if (exited)
            throw new ExitedEarly(`redis-server on port ${this.port} exited at start (port taken?)`);
          if (Date.now() > deadline)
            throw new Error(`redis-server on port ${this.port} did not start: ${String(err)}`);
          await delay(30);
        }
      }
    } finally {
      probe.disconnect();
    }
  }

  /** Kills the server (SIGKILL). */
  async kill(): Promise<void> {
    const child = this.#process;
    if (child === undefined) return;
    this.#process = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }

  /** Kills the server and starts it again on the same port and directory. */
  async restart(): Promise<void> {
    await this.kill();
    await this.#spawn();
  }

  async stop(): Promise<void> {
    await this.kill();
    await rm(this.#dir, { recursive: true, force: true });
  }
}
