/**
 * Starts real etcd servers for tests: one member, or a cluster of several on loopback, each on random
 * ports with a temporary data directory, killed (and the directories removed) by `stop()` and when this
 * process exits. A missing etcd binary fails with the command that installs it.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { Etcd3 } from "etcd3";
import { pickFreePort } from "../../src/rendezvous/free-port.js";

/** Where Debian's etcd-server puts the binary; else `etcd` on the PATH. */
function etcdBinary(): string {
  for (const path of ["/usr/bin/etcd", "/usr/local/bin/etcd"]) if (existsSync(path)) return path;
  const onPath = (process.env.PATH ?? "").split(":").find((d) => d !== "" && existsSync(join(d, "etcd")));
  if (onPath === undefined) {
    throw new Error(
      "etcd is not installed: these tests run a real etcd server; install it with: apt-get install -y etcd-server",
    );
  }
  return join(onPath, "etcd");
}

interface Member {
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  process: ChildProcess | undefined;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/** A running etcd cluster. */
export class EtcdTestCluster {
  readonly #members: Member[];
  readonly #initialCluster: string;
  readonly #root: string;
  /** Why a member could not bind its ports, once one could not (see `start`). */
  #bindFailure: string | undefined;

  private constructor(members: Member[], root: string) {
    this.#members = members;
    this.#root = root;
    this.#initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(",");
  }

  /**
   * Starts `size` members (default 1) and waits until the cluster serves requests. A port picked free can
   * be taken by another process (tests run side by side) before etcd binds it: then it starts again on
   * new ports, up to 5 times.
   */
  static async start(size = 1): Promise<EtcdTestCluster> {
    const binary = etcdBinary();
    for (let attempt = 1; ; attempt++) {
      const root = await mkdtemp(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "rdzv-etcd-"));
      const members: Member[] = [];
      for (let i = 0; i < size; i++) {
        members.push({
          name: `m${i}`,
          clientPort: await pickFreePort("127.0.0.1"),
          peerPort: await pickFreePort("127.0.0.1"),
          dataDir: join(root, `m${i}`),
          process: undefined,
        });
      }
      const cluster = new EtcdTestCluster(members, root);
      for (const m of members) cluster.#spawn(binary, m);
      try {
        await cluster.waitReady();
        return cluster;
      } catch (err) {
        await cluster.stop();
        if (cluster.#bindFailure === undefined || attempt >= 5) throw err;
      }
    }
  }

  /** Client URLs of every member, comma-separated (the backend's endpoint syntax). */
  get endpoints(): string {
    return this.#members.map((m) => `127.0.0.1:${m.clientPort}`).join(",");
  }

  /** Client URL of member `i`. */
  endpoint(i: number): string {
    return `127.0.0.1:${this.#member(i).clientPort}`;
  }

  get size(): number {
    return this.#members.length;
  }

  #member(i: number): Member {
    const m = this.#members[i];
    if (m === undefined) throw new Error(`no etcd member ${i}`);
    return m;
  }

  #spawn(binary: string, m: Member): void {
    const client = `http://127.0.0.1:${m.clientPort}`;
    const peer = `http://127.0.0.1:${m.peerPort}`;
    const child = spawn(
      binary,
      [
        `--name=${m.name}`,
        `--data-dir=${m.dataDir}`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=${this.#initialCluster}`,
        "--initial-cluster-state=new",
        "--initial-cluster-token=rdzv-test",
        // Fast elections, so that a killed leader is replaced within a second.
        "--heartbeat-interval=50",
        "--election-timeout=500",
        "--logger=zap",
        "--log-level=error",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    child.once("exit", (code, signal) => {
      live.delete(child);
      if (m.process === child) m.process = undefined;
      if (code !== 0 && code !== null && signal === null) {
        if (stderr.includes("address already in use")) this.#bindFailure ??= `${m.name}: ${stderr}`;
        else process.stderr.write(`etcd member ${m.name} exited with code ${code}: ${stderr}\n`);
      }
    });
    live.add(child);
    m.process = child;
  }

  /** Waits until member `i` (or every member) answers a read. */
  async waitReady(i?: number, timeoutMs = 20_000): Promise<void> {
    const hosts = (i === undefined ? this.#members : [this.#member(i)]).map(
      (m) => `http://127.0.0.1:${m.clientPort}`,
    );
    const deadline = Date.now() + timeoutMs;
    for (const host of hosts) {
      const client = new Etcd3({ hosts: host, dialTimeout: 1000 });
      try {
        for (;;) {
          try {
            await client
              .get("ready-probe")
              .options({ deadline: new Date(Date.now() + 1000) })
              .exec();
            break;
          } catch (err) {
            if (this.#bindFailure !== undefined)
              throw new Error(`etcd could not bind its ports: ${this.#bindFailure}`);
            if (Date.now() > deadline)
              throw new Error(`etcd at ${host} did not become ready: ${String(err)}`);
            await delay(50);
          }
        }
      } finally {
        client.close();
      }
    }
  }

  /** Index of the member that leads the cluster now. */
  async leader(): Promise<number> {
    for (const [i, m] of this.#members.entries()) {
      if (m.process === undefined) continue;
      const client = new Etcd3({ hosts: `http://127.0.0.1:${m.clientPort}`, dialTimeout: 1000 });
      try {
        const status = await client.maintenance.status({});
        if (status.leader === status.header.member_id) return i;
      } catch {
        // not answering: not the leader we can kill
      } finally {
        client.close();
      }
    }
    throw new Error("no etcd member leads the cluster");
  }

  /** Kills member `i` with SIGKILL (its data directory stays, so it can restart). */
  async kill(i: number): Promise<void> {
    const child = this.#member(i).process;
    if (child === undefined) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }

  /** Restarts a killed member `i` from its data directory and waits until it serves. */
  async restart(i: number): Promise<void> {
    const m = this.#member(i);
    if (m.process !== undefined) throw new Error(`etcd member ${i} is running`);
    this.#spawn(etcdBinary(), m);
    await this.waitReady(i);
  }

  /** Kills every member and removes the data directories. Idempotent. */
  async stop(): Promise<void> {
    await Promise.all(this.#members.map((_, i) => this.kill(i)));
    await rm(this.#root, { recursive: true, force: true });
  }
}
