/** `rdzv serve` dashboard options: parsing into where the dashboard listens and the names it answers. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UsageError } from "./args.js";
import { dashboardPort } from "./serve-dashboard.js";

describe("rdzv serve dashboard options", () => {
  it("has no dashboard without --http-port; loopback by default", () => {
    assert.equal(dashboardPort({}), undefined);
    assert.deepEqual(dashboardPort({ "http-port": "0" }), { host: "127.0.0.1", port: 0 });
  });

  it("takes --http-allowed-host names (repeatable), and refuses ports, URLs and a missing --http-port", () => {
    assert.deepEqual(
      dashboardPort({
        "http-port": "8080",
        "http-host": "0.0.0.0",
        "http-allowed-host": ["dash.example", "gpu-7"],
      }),
      { host: "0.0.0.0", port: 8080, allowedHosts: ["dash.example", "gpu-7"] },
    );
    for (const bad of ["dash.example:8080", "http://dash.example", ""]) {
      assert.throws(
        () => dashboardPort({ "http-port": "1", "http-allowed-host": [bad] }),
        (err: Error) =>
          err instanceof UsageError && /--http-allowed-host must be a host name/.test(err.message),
        bad,
      );
    }
    assert.throws(
      () => dashboardPort({ "http-allowed-host": ["x"] }),
      /--http-allowed-host needs --http-port/,
    );
  });
});
