/**
 * `rdzv serve --max-store-bytes`: a real server with a data directory, restarted under a lower limit than
 * its data already takes.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { serveFailure, startServe } from "../../test/helpers/serve-process.js";
import { waitFor } from "../../test/helpers/wait-for.js";
import { ErrorCode } from "../errors.js";
import { connectTCPStore } from "../store/tcp/client.js";

const dir = mkdtempSync(join(tmpdir(), "rdzv-store-limit-"));
after(() => rmSync(dir, { recursive: true, force: true }));

describe("rdzv serve --max-store-bytes", () => {
  it("refuses growth past the limit, and keeps data a restart finds past a lowered one readable and deletable", async () => {
    {
      await using serve = await startServe(["--data-dir", dir]);
      const store = await connectTCPStore({ host: "127.0.0.1", port: serve.port, timeoutMs: 10_000 });
      await store.set("big", Buffer.alloc(4000, 1));
      await store.close();
    }
    await using serve = await startServe(["--data-dir", dir, "--max-store-bytes", "2K"]);
    const store = await connectTCPStore({ host: "127.0.0.1", port: serve.port, timeoutMs: 10_000 });
    try {
      assert.equal((await store.get("big")).length, 4000, "restored past the limit");
      await assert.rejects(
        store.set("more", "x"),
        (err: Error & { code?: string }) => err.code === ErrorCode.Connection,
      );
      await waitFor("the warning", () =>
        /WARN TCPStore server: the store is full \(maxStoreBytes\)/.test(serve.output()),
      );
      assert.equal(await store.deleteKey("big"), true);
      await store.set("more", Buffer.alloc(1500, 2));
      assert.equal((await store.get("more")).length, 1500);
    } finally {
      await store.close();
    }
  });

  it("rejects a size it cannot read", async () => {
    const { code, output } = await serveFailure(["--max-store-bytes", "lots"]);
    assert.equal(code, 2);
    assert.match(
      output,
      /--max-store-bytes must be a size in bytes, or with a unit K, M, G or T .*got "lots"/,
    );
  });
});
