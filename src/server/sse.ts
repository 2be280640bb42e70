/**
 * Server-sent events: one `ReadableStream` per client, fed by the dashboard's push loop.
 *
 * The stream holds what the client has not taken yet in its own queue and hands it over only when the
 * HTTP side reads (a pull stream of high-water mark 0), so the queue is exactly the client's backlog. A
 * client that stops reading (a stalled tab, a paused process, a half-open connection) would otherwise
 * keep every push in memory: a 5,000-node run pushes a ~1 MB detail every 200 ms. Past
 * `maxBacklogBytes` queued, or once nothing was taken for `maxStallMs` while something waits, the client
 * is dropped; its `EventSource` reconnects and starts from a fresh snapshot.
 */

import { InvalidArgumentError } from "../errors.js";

/** One server-sent event. */
export interface SseMessage {
  /** Event name (the client's `addEventListener(event, ...)`). */
  event: string;
  /** JSON-encoded into the `data:` field. */
  data: unknown;
}

/** Encodes one event as the `text/event-stream` bytes a browser's `EventSource` parses. */
export function encodeSse(message: SseMessage): string {
  const json = JSON.stringify(message.data);
  // JSON has no raw newlines, so one data line always suffices.
  return `event: ${message.event}\ndata: ${json}\n\n`;
}

/** A client's end of an event stream. */
export interface SseClient {
  /** Queues `message`; false once the client went away or was dropped. */
  send(message: SseMessage): boolean;
}

/** Why the server dropped a client (see the file comment). */
export interface SseDrop {
  readonly reason: "backlog" | "stalled";
  /** Bytes queued and not taken when it was dropped. */
  readonly backlogBytes: number;
  /** How long the client had taken nothing while bytes waited, ms. */
  readonly stalledMs: number;
}

/** Options of `createSseStream`. */
export interface SseStreamOptions {
  /** Called once the stream is open, with the handle to push through. */
  open(client: SseClient): void;
  /**
   * Called once when the stream ends: the client disconnected (the stream is cancelled), the server
   * ended it, or the server dropped it (`drop` then says why).
   */
  close(drop?: SseDrop): void;
  /** A comment line every this many ms keeps proxies from timing the stream out (default 15 000). */
  pingMs?: number;
  /**
   * Most bytes queued for the client (default 4 MiB): a message that takes the backlog past it drops
   * the client, unless it is the only message queued (one message of any size always goes out).
   */
  maxBacklogBytes?: number;
  /** Longest the client may take nothing while bytes wait before it is dropped, ms (default 30 000). */
  maxStallMs?: number;
  /** Clock, ms (default `Date.now`). */
  now?: () => number;
}

/** A `text/event-stream` body, and `end()` to finish it from the server's side. */
export interface SseStream {
  readonly body: ReadableStream<Uint8Array>;
  /** Bytes queued that the client has not taken yet. */
  readonly backlogBytes: number;
  /** Ends the stream (the client's `EventSource` reconnects unless its page is gone). Idempotent. */
  end(): void;
}

const DEFAULT_MAX_BACKLOG_BYTES = 4 * 1024 * 1024;
const DEFAULT_MAX_STALL_MS = 30_000;
/** Most bytes handed over per read: a slow client takes its backlog in steps, each one a sign of life. */
const CHUNK_BYTES = 64 * 1024;

/**
 * Opens an event stream. Its first bytes tell the client to retry after 1 s if the stream drops. Throws
 * `InvalidArgumentError` for a bound that is not a positive integer.
 */
export function createSseStream(options: SseStreamOptions): SseStream {
  const { maxBacklogBytes, maxStallMs } = sseBounds(options);
  const now = options.now ?? Date.now;
  const encoder = new TextEncoder();
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  let queue: Uint8Array[] = [];
  let backlogBytes = 0;
  /** The reader asked for bytes and got none yet. */
  let wanted = false;
  /** When the client last took bytes, or when bytes started waiting if later. */
  let progressAt = now();

  const finish = (drop?: SseDrop): void => {
    if (closed) return;
    closed = true;
    clearInterval(timer);
    queue = [];
    backlogBytes = 0;
    options.close(drop);
  };
  /** Hands the reader up to CHUNK_BYTES of the queue. */
  const deliver = (c: ReadableStreamDefaultController<Uint8Array>): void => {
    const parts: Uint8Array[] = [];
    let bytes = 0;
    while (queue.length > 0 && bytes < CHUNK_BYTES) {
      const head = queue[0]!;
      const take = Math.min(head.length, CHUNK_BYTES - bytes);
      parts.push(take === head.length ? head : head.subarray(0, take));
      if (take === head.length) queue.shift();
      else queue[0] = head.subarray(take);
      bytes += take;
    }
    backlogBytes -= bytes;
    wanted = false;
    progressAt = now();
    c.enqueue(parts.length === 1 ? parts[0]! : concat(parts, bytes));
  };
  const drop = (reason: SseDrop["reason"]): void => {
    const info = { reason, backlogBytes, stalledMs: now() - progressAt };
    const c = controller;
    finish(info);
    // Discards what is queued and makes the reader fail: the HTTP side closes the connection.
    c?.error(new Error(`event-stream client dropped (${reason}, ${info.backlogBytes} bytes unsent)`));
  };
  const write = (text: string): boolean => {
    if (closed || controller === undefined) return false;
    const bytes = encoder.encode(text);
    if (backlogBytes === 0) progressAt = Math.max(progressAt, now());
    queue.push(bytes);
    backlogBytes += bytes.length;
    if (wanted) {
      deliver(controller);
      return true;
    }
    if (backlogBytes > maxBacklogBytes && queue.length > 1) {
      drop("backlog");
      return false;
    }
    if (now() - progressAt > maxStallMs) {
      drop("stalled");
      return false;
    }
    return true;
  };
  const body = new ReadableStream<Uint8Array>(
    {
      start(c) {
        controller = c;
        write("retry: 1000\n\n");
        timer = setInterval(() => write(": ping\n\n"), options.pingMs ?? 15_000);
        timer.unref();
        options.open({ send: (message) => write(encodeSse(message)) });
      },
      pull(c) {
        if (closed) return;
        if (queue.length > 0) deliver(c);
        else wanted = true;
      },
      cancel() {
        finish();
      },
    },
    { highWaterMark: 0 },
  );
  return {
    body,
    get backlogBytes() {
      return backlogBytes;
    },
    end() {
      if (closed) return;
      const c = controller;
      const rest = queue;
      finish();
      try {
        // What was queued still goes out, then the stream ends.
        for (const part of rest) c?.enqueue(part);
        c?.close();
      } catch {
        // already closed or errored
      }
    },
  };
}

/**
 * The backlog bounds of `options` with their defaults (see `SseStreamOptions`). Throws
 * `InvalidArgumentError` for one that is not a positive integer.
 */
export function sseBounds(options: Pick<SseStreamOptions, "maxBacklogBytes" | "maxStallMs">): {
  maxBacklogBytes: number;
  maxStallMs: number;
} {
  return {
    maxBacklogBytes: positive("maxBacklogBytes", options.maxBacklogBytes ?? DEFAULT_MAX_BACKLOG_BYTES),
    maxStallMs: positive("maxStallMs", options.maxStallMs ?? DEFAULT_MAX_STALL_MS),
  };
}

function positive(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

function concat(parts: Uint8Array[], bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
