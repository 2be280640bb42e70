/** The dashboard's wrong-token throttle: 429 with Retry-After, per address, shared with the store's AUTH. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import { createAuthThrottle } from "../store/tcp/auth-throttle.js";
import { connectTCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer } from "../store/tcp/server.js";
import { createDashboardApp } from "./dashboard-app.js";
import { startHttpServer } from "./http-server.js";

const TOKEN = "s3cret";

describe("dashboard wrong-token throttle", () => {
  it("answers 429 with Retry-After to a throttled address, even with the right token, until the window passes", async () => {
    let t = 1_000_000;
    const server = await createTCPStoreServer({ port: 0 });
    const throttle = createAuthThrottle({ maxFailures: 3, windowMs: 60_000, now: () => t });
    const app = createDashboardApp({
      engine: server.engine,
      processMetrics: false,
      authToken: TOKEN,
      authThrottle: throttle,
    });
    const call = (address: string, authorization?: string, path = "/api/runs") =>
      app.fetch(
        new Request(
          `http://dashboard${path}`,
          authorization === undefined ? {} : { headers: { authorization } },
        ),
        { address },
      );
    try {
      // Requests without credentials (a browser's first) do not count.
      for (let i = 0; i < 20; i++) assert.equal((await call("10.0.0.1")).status, 401);
      for (const wrong of ["Bearer a", "Bearer b", "Basic !!"])
        assert.equal((await call("10.0.0.1", wrong)).status, 401);
      const refused = await call("10.0.0.1", `Bearer ${TOKEN}`);
      assert.equal(refused.status, 429);
      assert.equal(refused.headers.get("retry-after"), "60");
      assert.match(
        ((await refused.json()) as { error: string }).error,
        /too many wrong auth tokens.*60 s more/,
      );
      assert.equal((await call("10.0.0.1", `Bearer ${TOKEN}`, "/healthz")).status, 200, "/healthz is open");
      assert.equal((await call("10.0.0.2", `Bearer ${TOKEN}`)).status, 200, "another address");
      t += 30_500;
      assert.equal((await call("10.0.0.1", `Bearer ${TOKEN}`)).headers.get("retry-after"), "30");
      t += 29_500;
      assert.equal((await call("10.0.0.1", `Bearer ${TOKEN}`)).status, 200);
      const body = (await app.metrics.scrape()).body;
      assert.match(body, /^rdzv_dashboard_auth_failures_total 3$/m);
      assert.match(body, /^rdzv_dashboard_auth_throttled_total 2$/m);
      // One stale token, however often presented, is one wrong token.
      for (let i = 0; i < 20; i++) assert.equal((await call("10.0.0.3", "Bearer old")).status, 401);
      assert.equal((await call("10.0.0.3", `Bearer ${TOKEN}`)).status, 200);
    } finally {
      app.close();
      await server.close();
    }
  });

  it("over HTTP, shares its budget with the store's AUTH: wrong tokens on the store port lock the dashboard too", async () => {
    const server = await createTCPStoreServer({
      port: 0,
      authToken: TOKEN,
      authThrottle: { maxFailures: 2 },
    });
    const app = createDashboardApp({
      engine: server.engine,
      processMetrics: false,
      authToken: TOKEN,
      authThrottle: server.authThrottle,
    });
    const http = await startHttpServer({ port: 0, fetch: app.fetch });
    try {
      const ok = await fetch(`${http.url}api/runs`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(ok.status, 200);
      for (let i = 0; i < 2; i++) {
        await assert.rejects(
          connectTCPStore({
            host: "127.0.0.1",
            port: server.port,
            timeoutMs: 60_000,
            authToken: `guess ${i}`,
          }),
          (err: Error & { code?: string }) => err.code === ErrorCode.Auth,
        );
      }
      const refused = await fetch(`${http.url}api/runs`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(refused.status, 429);
      assert.ok(Number(refused.headers.get("retry-after")) > 0);
    } finally {
      await http.close();
      app.close();
      await server.close();
    }
  });
});
