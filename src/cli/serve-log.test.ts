/** `rdzv serve`'s log lines: client-written text cannot act on the terminal or split a record. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LogLevel } from "../log.js";
import { createServeLogger, escapeLogLine } from "./serve-log.js";

describe("rdzv serve log lines", () => {
  it("escapes C1 controls, DEL, line separators and bidi overrides that JSON leaves raw", () => {
    const lines: string[] = [];
    const logger = createServeLogger(LogLevel.Info, (line) => lines.push(line));
    // A key as a TCP store holds it (bytes as latin1): CSI 31m in its 8-bit form, then a fake record.
    const key = "/run\u009b31m\u2028WARN forged\u202eevil\u007f";
    logger.warn("rendezvous monitor: ignoring a key it could not follow", { key });
    logger.info("plain\ttext\nsecond line");
    assert.equal(lines.length, 2);
    const raw = [...lines.join("")].filter(
      (c) => c !== "\t" && (c < " " || (c >= "\u007f" && c <= "\u009f")),
    );
    assert.deepEqual(raw, []);
    assert.doesNotMatch(lines.join(""), /[\u2028\u2029\u202e]/);
    assert.match(lines[0]!, /\/run\\u009b31m\\u2028WARN forged\\u202eevil\\u007f/);
    assert.match(lines[1]!, /plain\ttext\\u000asecond line$/);
  });

  it("leaves printable text, tabs and other scripts alone", () => {
    const text = 'run "trainé-日本" {"a":1}\t';
    assert.equal(escapeLogLine(text), text);
  });
});
