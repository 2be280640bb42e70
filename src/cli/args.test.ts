/** Command-line value parsers (args.ts). */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { sizeOption, UsageError } from "./args.js";

describe("sizeOption", () => {
  it("takes bytes, or a whole number with a binary unit, and names the option when it cannot", () => {
    const cases: [string, number][] = [
      ["0", 0],
      ["1048576", 1048576],
      ["64K", 65536],
      ["64kb", 65536],
      ["512M", 512 * 1024 ** 2],
      ["2GiB", 2 * 1024 ** 3],
      [" 1 T ", 1024 ** 4],
    ];
    for (const [value, bytes] of cases) assert.equal(sizeOption("max-store-bytes", value, 7), bytes, value);
    assert.equal(sizeOption("max-store-bytes", undefined, 7), 7);
    for (const bad of ["", "-1", "1.5G", "2 GB extra", "10X", "G"]) {
      assert.throws(
        () => sizeOption("max-store-bytes", bad, 0),
        (err: unknown) =>
          err instanceof UsageError &&
          err.message.startsWith("--max-store-bytes must be a size in bytes, or with a unit K, M, G or T") &&
          err.message.endsWith(`got ${JSON.stringify(bad)}`),
        bad,
      );
    }
  });
});
