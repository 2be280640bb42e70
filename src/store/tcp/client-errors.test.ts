/** The client's error for a connection the server closed (client-errors.ts `closedByServer`). */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode } from "../../errors.js";
import { closedByServer } from "./client-errors.js";

describe("closedByServer", () => {
  const peer = "10.0.0.1:29400";

  it("names what was pending and the likely cause", () => {
    const add = closedByServer(peer, { type: "add", key: "/n", delta: 1n });
    assert.equal(add.code, ErrorCode.Connection);
    assert.match(
      add.message,
      /while a reply to .* was pending \(likely because the stored value is not an integer\)$/,
    );
    const get = closedByServer(peer, { type: "get", key: "/k" });
    assert.match(
      get.message,
      /\(the server stopped or restarted, or it closed the connection for a request that broke its limits: .*; it logs which\)$/,
    );
    // Only async waits were pending: the server went, or the last wait broke a limit.
    assert.equal(
      closedByServer(peer, undefined, 2).message,
      "the TCPStore server at 10.0.0.1:29400 closed the connection while 2 wait(s) were pending (the server " +
        "stopped or restarted, or it closed the connection for a wait that broke its limits: keys per request, " +
        "waiters per connection; it logs which)",
    );
    assert.equal(
      closedByServer(peer, undefined).message,
      "the TCPStore server at 10.0.0.1:29400 closed the connection",
    );
  });
});
