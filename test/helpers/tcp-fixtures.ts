/**
 * Fixtures for tests of rdzv's TCP store: servers on a random loopback port and clients, closed (in reverse
 * order) by `cleanup()`, which a test file calls from `afterEach`.
 */

import assert from "node:assert/strict";
import { connectTCPStore, type TCPStore, type TCPStoreOptions } from "../../src/store/tcp/client.js";
import {
  createTCPStoreServer,
  type TCPStoreServer,
  type TCPStoreServerOptions,
} from "../../src/store/tcp/server.js";

/** The loopback address every fixture binds and dials. */
export const HOST = "127.0.0.1";

/** Resources of one test, released by `cleanup()`. */
export class TcpFixtures {
  readonly #cleanups: (() => unknown)[] = [];

  /** Runs `fn` at cleanup (after everything registered later). */
  defer(fn: () => unknown): void {
    this.#cleanups.push(fn);
  }

  /** A server on 127.0.0.1, port 0. */
  async server(options: TCPStoreServerOptions = {}): Promise<TCPStoreServer> {
    const server = await createTCPStoreServer({ host: HOST, port: 0, ...options });
    this.defer(() => server.close());
    return server;
  }

  /** A connected client of `server` (10 s timeout unless overridden). */
  async client(server: TCPStoreServer, options: Partial<TCPStoreOptions> = {}): Promise<TCPStore> {
    const store = await connectTCPStore({ host: HOST, port: server.port, timeoutMs: 10_000, ...options });
    this.defer(() => store.close());
    return store;
  }

  /** Sets environment variable `name` to `value` until cleanup. */
  env(name: string, value: string): void {
    const saved = process.env[name];
    process.env[name] = value;
    this.defer(() => {
      if (saved === undefined) delete process.env[name];
      else process.env[name] = saved;
    });
  }

  /**
   * Two new clients of `server` exchange what every server path must serve: a blocking get woken by the
   * other's set, and adds from both. For tests that switch a server path off.
   */
  async exchange(server: TCPStoreServer): Promise<void> {
    const a = await this.client(server);
    const b = await this.client(server);
    const waiting = b.get("k");
    await a.set("k", "v");
    assert.equal(Buffer.from(await waiting).toString(), "v");
    assert.equal(await a.add("n", 2), 2);
    assert.equal(await b.add("n", 3), 5);
  }

  /** Releases everything, last registered first. */
  async cleanup(): Promise<void> {
    for (const fn of this.#cleanups.splice(0).reverse()) await fn();
  }
}
