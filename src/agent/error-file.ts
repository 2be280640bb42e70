/**
 * torchrun's worker error files, without I/O: what a worker's `TORCHELASTIC_ERROR_FILE` holds, how it is
 * read back, bounded for the store, and the record an agent writes to its own error file.
 *
 * A worker whose entry point is decorated with PyTorch's `@record`
 * (`torch.distributed.elastic.multiprocessing.errors`) writes, when it raises, `ErrorHandler.record_exception`'s
 * JSON: `{"message": {"message": "ValueError: boom", "extraInfo": {"py_callstack": "Traceback ...",
 * "timestamp": "1700000000"}}}` (the timestamp a string of whole seconds). Non-Python workers may write the
 * plain form `{"message": "...", "timestamp": 1700000000}`; `ProcessFailure._get_error_data` reads both
 * (PyTorch 1.13 and 2.x alike), and so does `parseErrorFile`.
 */

/** The most bytes of an error file that are read (a bigger file is not used, with a note). */
export const MAX_ERROR_FILE_BYTES = 1024 * 1024;

/** Limits of the failure record other nodes read from the store (its longer fields are cut in the middle). */
export const RECORD_LIMITS = { messageChars: 4096, tracebackChars: 32 * 1024 } as const;

/** The latest timestamp a `Date` can show, in seconds. */
const MAX_TIMESTAMP_S = 8_640_000_000_000;

/** A worker's error as its error file gives it (PyTorch `ProcessFailure.message` and `timestamp`). */
export interface WorkerError {
  /** The error in one line or a few, e.g. `ValueError: boom` (the record's `message`, or the plain message). */
  readonly message: string;
  /** The Python traceback (`extraInfo.py_callstack`); absent in the plain form. */
  readonly traceback?: string;
  /** When the worker wrote it, in whole seconds since the epoch; absent when the file gives none. */
  readonly timestamp?: number;
  /** The file, on the node that ran the worker. */
  readonly file: string;
}

/** What reading a worker's error file gave. */
export type ErrorFileRead =
  /** The worker wrote none (it did not raise, or is not decorated with `@record`). */
  | { readonly kind: "absent" }
  /** `data` is the file's JSON, for the agent's own error file; `note` says what in it was ignored. */
  | {
      readonly kind: "read";
      readonly error: WorkerError;
      readonly data: Readonly<Record<string, unknown>>;
      readonly note?: string;
    }
  /** The file exists but cannot be used; `note` says why, naming the file. */
  | { readonly kind: "unusable"; readonly note: string };

/**
 * Parses the text of error file `file` in either of PyTorch's forms (see the module comment). Never throws:
 * malformed JSON or another shape is an `unusable` read whose note says what is wrong. A timestamp that is
 * not whole seconds is ignored (with a note), where PyTorch's `int()` would raise.
 */
export function parseErrorFile(text: string, file: string): ErrorFileRead {
  const unusable = (why: string): ErrorFileRead => ({ kind: "unusable", note: `error file ${file} ${why}` });
  if (text.trim() === "") return unusable("is empty");
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    return unusable(`is not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isObject(data)) return unusable(`holds ${describeJson(data)}, not a JSON object`);
  const m = data.message;
  let message: string;
  let traceback: string | undefined;
  let stamp: unknown;
  if (typeof m === "string") {
    message = m;
    stamp = data.timestamp;
  } else if (isObject(m)) {
    const extra = isObject(m.extraInfo) ? m.extraInfo : {};
    traceback = typeof extra.py_callstack === "string" ? extra.py_callstack : undefined;
    const text = typeof m.message === "string" ? m.message : traceback?.trimEnd().split("\n").pop();
    if (text === undefined)
      return unusable('has neither "message.message" nor "message.extraInfo.py_callstack"');
    message = text;
    stamp = extra.timestamp;
  } else {
    return unusable(
      `has ${m === undefined ? "no" : `${describeJson(m)} as its`} "message", not a string or an object`,
    );
  }
  const timestamp = parseTimestamp(stamp);
  const error: WorkerError = {
    message,
    ...(traceback === undefined ? {} : { traceback }),
    ...(timestamp === undefined ? {} : { timestamp }),
    file,
  };
  if (stamp === undefined || timestamp !== undefined) return { kind: "read", error, data };
  return {
    kind: "read",
    error,
    data,
    note: `error file ${file}: timestamp ${JSON.stringify(stamp)?.slice(0, 40)} is not whole seconds; ignored`,
  };
}

/** Whole seconds since the epoch, from a number or a decimal string (as PyTorch's `int()` takes them). */
function parseTimestamp(value: unknown): number | undefined {
  const n =
    typeof value === "number"
      ? value
      : typeof value === "string" && /^\s*\d+\s*$/.test(value)
        ? Number(value)
        : NaN;
  return Number.isSafeInteger(n) && n >= 0 && n <= MAX_TIMESTAMP_S ? n : undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describeJson(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

/**
 * `text` cut to at most about `max` characters: its first quarter and its last three quarters (a traceback's
 * outermost frames and, more useful, its innermost ones and the exception), with a line in between saying
 * how much was left out and `where` the whole text is.
 */
export function truncateMiddle(text: string, max: number, where: string): string {
  if (text.length <= max) return text;
  const head = Math.floor(max / 4);
  const tail = max - head;
  const left = text.length - head - tail;
  return `${text.slice(0, head)}\n... (${left} characters left out; the whole text is in ${where}) ...\n${text.slice(-tail)}`;
}

/** `error` with its message and traceback cut to `RECORD_LIMITS` for the store (see `truncateMiddle`). */
export function boundWorkerError(error: WorkerError, where: string): WorkerError {
  const message = truncateMiddle(error.message, RECORD_LIMITS.messageChars, where);
  return {
    ...error,
    message,
    ...(error.traceback === undefined
      ? {}
      : { traceback: truncateMiddle(error.traceback, RECORD_LIMITS.tracebackChars, where) }),
  };
}

/** The first line of `message`, at most `max` characters, for one-line reports. */
export function firstLine(message: string, max = 200): string {
  const line = message.trimStart().split("\n", 1)[0] ?? "";
  return line.length <= max ? line : `${line.slice(0, max - 3)}...`;
}

/** A timestamp in seconds as ISO 8601 UTC, without milliseconds. */
export function formatTimestamp(seconds: number): string {
  return new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
}

/**
 * A record in `ErrorHandler.record_exception`'s form (what `@record` writes), with `errorCode` as
 * torchrun's `dump_error_file` adds it when the exit code is not 0.
 */
export function errorRecord(
  message: string,
  traceback: string,
  timestamp: number,
  errorCode?: number,
): Record<string, unknown> {
  return {
    message: {
      message,
      extraInfo: { py_callstack: traceback, timestamp: String(Math.trunc(timestamp)) },
      ...(errorCode === undefined || errorCode === 0 ? {} : { errorCode }),
    },
  };
}

/**
 * The worker's record as torchrun copies it to its own error file (`ErrorHandler.dump_error_file`): the same
 * JSON, with `message.errorCode` set to the worker's exit code (negative for a signal) when that is not 0 and
 * the message is an object (the plain form is copied as it is).
 */
export function withErrorCode(
  data: Readonly<Record<string, unknown>>,
  errorCode: number,
): Record<string, unknown> {
  const m = data.message;
  if (errorCode === 0 || !isObject(m)) return { ...data };
  return { ...data, message: { ...m, errorCode } };
}

/** `error` back in the form its worker wrote it (for another node's error, known from the store's record). */
export function recordOf(error: WorkerError, errorCode: number, nowSeconds: number): Record<string, unknown> {
  if (error.traceback === undefined) {
    return {
      message: error.message,
      ...(error.timestamp === undefined ? {} : { timestamp: error.timestamp }),
    };
  }
  return errorRecord(error.message, error.traceback, error.timestamp ?? nowSeconds, errorCode);
}
