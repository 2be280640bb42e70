import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  boundWorkerError,
  errorRecord,
  firstLine,
  formatTimestamp,
  parseErrorFile,
  RECORD_LIMITS,
  recordOf,
  truncateMiddle,
  withErrorCode,
} from "./error-file.js";

const FILE = "/tmp/x/attempt_0/1/error.json";

/** What PyTorch's `ErrorHandler.record_exception` writes (1.13 and 2.x alike). */
const RECORDED = {
  message: {
    message: "ValueError: boom",
    extraInfo: {
      py_callstack: 'Traceback (most recent call last):\n  File "w.py", line 5, in main\nValueError: boom\n',
      timestamp: "1700000000",
    },
  },
};

function unusableNote(text: string): string {
  const read = parseErrorFile(text, FILE);
  assert.equal(read.kind, "unusable", JSON.stringify(read));
  return read.kind === "unusable" ? read.note : "";
}

describe("parseErrorFile", () => {
  it("reads @record's form: message, traceback and the timestamp string", () => {
    const read = parseErrorFile(JSON.stringify(RECORDED), FILE);
    assert.deepEqual(read, {
      kind: "read",
      error: {
        message: "ValueError: boom",
        traceback: RECORDED.message.extraInfo.py_callstack,
        timestamp: 1_700_000_000,
        file: FILE,
      },
      data: RECORDED,
    });
  });

  it("reads the plain form: a string message and a top-level timestamp, number or string", () => {
    assert.deepEqual(parseErrorFile('{"message": "segfault in kernel", "timestamp": 1700000001}', FILE), {
      kind: "read",
      error: { message: "segfault in kernel", timestamp: 1_700_000_001, file: FILE },
      data: { message: "segfault in kernel", timestamp: 1_700_000_001 },
    });
    const read = parseErrorFile('{"message": "oom", "timestamp": "42"}', FILE);
    assert.equal(read.kind === "read" && read.error.timestamp, 42);
    const untimed = parseErrorFile('{"message": "oom"}', FILE);
    assert.ok(untimed.kind === "read" && untimed.error.timestamp === undefined && untimed.note === undefined);
  });

  it("keeps an error whose timestamp is not whole seconds, ignoring the timestamp with a note", () => {
    for (const stamp of ['"soon"', "1.5", "-3", '"1e3"', "1e300", "null"]) {
      const read = parseErrorFile(
        `{"message": {"message": "E", "extraInfo": {"timestamp": ${stamp}}}}`,
        FILE,
      );
      assert.equal(read.kind, "read", stamp);
      if (read.kind !== "read") continue;
      assert.equal(read.error.timestamp, undefined, stamp);
      assert.match(read.note ?? "", /timestamp .* is not whole seconds; ignored/, stamp);
    }
  });

  it("takes the traceback's last line as the message when the record has only a traceback", () => {
    const read = parseErrorFile(
      '{"message": {"extraInfo": {"py_callstack": "Traceback:\\nKeyError: 3\\n"}}}',
      FILE,
    );
    assert.equal(read.kind === "read" && read.error.message, "KeyError: 3");
  });

  it("names the file and the problem for malformed JSON and other shapes", () => {
    assert.match(unusableNote(""), /^error file \/tmp\/x\/attempt_0\/1\/error\.json is empty$/);
    assert.match(unusableNote('{"message": {"message": "E", "extr'), /is not JSON \(.+\)/);
    assert.match(unusableNote("[1, 2]"), /holds an array, not a JSON object/);
    assert.match(unusableNote('"just a string"'), /holds a string, not a JSON object/);
    assert.match(unusableNote("{}"), /has no "message"/);
    assert.match(unusableNote('{"message": 7}'), /has a number as its "message"/);
    assert.match(unusableNote('{"message": {"extraInfo": {}}}'), /has neither "message.message" nor/);
  });
});

describe("truncateMiddle and boundWorkerError", () => {
  it("leaves short text alone and cuts long text in the middle, saying how much and where", () => {
    assert.equal(truncateMiddle("short", 10, "x"), "short");
    const text = `HEAD${"m".repeat(10_000)}TAIL`;
    const cut = truncateMiddle(text, 400, "the report of node n1");
    assert.ok(cut.startsWith("HEAD") && cut.endsWith("TAIL"));
    assert.ok(cut.length < 500, String(cut.length));
    assert.match(
      cut,
      /\n\.\.\. \(9608 characters left out; the whole text is in the report of node n1\) \.\.\.\n/,
    );
  });

  it("bounds the message and the traceback of an error to the record's limits", () => {
    const error = {
      message: "M".repeat(RECORD_LIMITS.messageChars * 3),
      traceback: `Traceback (most recent call last):\n${"  frame\n".repeat(20_000)}ValueError: boom\n`,
      timestamp: 5,
      file: FILE,
    };
    const bounded = boundWorkerError(error, "there");
    assert.ok(bounded.message.length < RECORD_LIMITS.messageChars + 200);
    assert.ok(bounded.traceback!.length < RECORD_LIMITS.tracebackChars + 200);
    assert.ok(bounded.traceback!.startsWith("Traceback (most recent call last):"));
    assert.ok(bounded.traceback!.endsWith("ValueError: boom\n"));
    assert.equal(bounded.timestamp, 5);
    const plain = boundWorkerError({ message: "m", file: FILE }, "there");
    assert.deepEqual(plain, { message: "m", file: FILE });
  });
});

describe("records for the agent's own error file", () => {
  it("writes record_exception's form, errorCode only when not 0", () => {
    assert.deepEqual(errorRecord("E: x", "tb", 1_700_000_000.7, 3), {
      message: { message: "E: x", extraInfo: { py_callstack: "tb", timestamp: "1700000000" }, errorCode: 3 },
    });
    assert.equal("errorCode" in (errorRecord("E", "", 1, 0).message as object), false);
  });

  it("copies a worker's record with its exit code, as dump_error_file; the plain form as it is", () => {
    const copied = withErrorCode(RECORDED, -9);
    assert.deepEqual(copied, { message: { ...RECORDED.message, errorCode: -9 } });
    assert.equal("errorCode" in RECORDED.message, false, "the original is not changed");
    assert.deepEqual(withErrorCode(RECORDED, 0), RECORDED);
    assert.deepEqual(withErrorCode({ message: "plain", timestamp: 3 }, 1), {
      message: "plain",
      timestamp: 3,
    });
  });

  it("rebuilds a worker's record from its parsed error (another node's, from the store)", () => {
    const read = parseErrorFile(JSON.stringify(RECORDED), FILE);
    assert.ok(read.kind === "read");
    assert.deepEqual(recordOf(read.error, 1, 99), withErrorCode(RECORDED, 1));
    assert.deepEqual(recordOf({ message: "plain", timestamp: 3, file: FILE }, 1, 99), {
      message: "plain",
      timestamp: 3,
    });
  });
});

describe("formatting helpers", () => {
  it("firstLine takes one line, bounded; formatTimestamp is UTC ISO 8601 in seconds", () => {
    assert.equal(firstLine("\n  ValueError: a\nmore"), "ValueError: a");
    assert.equal(firstLine("x".repeat(300), 20), `${"x".repeat(17)}...`);
    assert.equal(formatTimestamp(1_700_000_000), "2023-11-14T22:13:20Z");
  });
});
