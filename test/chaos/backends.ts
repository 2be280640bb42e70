/**
 * What the chaos soak runs against: a rendezvous backend and the server behind it. The soak itself
 * (driver, nodes, checker) only needs the `RendezvousParameters` its nodes pass to
 * `createRendezvousHandler`, so another backend is one more `ChaosBackend`: start its server on a free
 * port, return `{ backend: <registered name>, endpoint }`, stop it. For etcd that is an `etcd` child
 * process with a temporary `--data-dir` and `--listen-client-urls http://127.0.0.1:PORT` plus the name the
 * etcd backend registers (src/backends/etcd*.ts), added to `CHAOS_BACKENDS` below.
 */

import type { RendezvousParameters } from "../../src/index.js";
import { type ServeProcess, startServe } from "../helpers/serve-process.js";

/** A rendezvous backend for the soak. */
export interface ChaosBackend {
  /** Name for test titles and reports. */
  readonly name: string;
  /** Starts the server; resolves with what nodes pass to `createRendezvousHandler` (runId, sizes aside). */
  start(): Promise<Pick<RendezvousParameters, "backend" | "endpoint" | "config">>;
  /** Stops the server (idempotent). */
  stop(): Promise<void>;
}

/** The `c10d` backend over `rdzv serve` (a child process running the compiled CLI). */
export function tcpStoreBackend(): ChaosBackend {
  let server: ServeProcess | undefined;
  return {
    name: "c10d over rdzv serve",
    async start() {
      server = await startServe();
      return {
        backend: "c10d",
        endpoint: `127.0.0.1:${server.port}`,
        config: { is_host: false, read_timeout: 30 },
      };
    },
    async stop() {
      await server?.kill();
    },
  };
}

/** Every backend the soak runs against, by the name `RDZV_CHAOS_BACKEND` selects. */
export const CHAOS_BACKENDS: Readonly<Record<string, () => ChaosBackend>> = {
  tcp: tcpStoreBackend,
};
