/** Server-sent events: one `ReadableStream` per client, fed by the dashboard's push loop. */

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
  /** Queues `message`; false once the client went away. */
  send(message: SseMessage): boolean;
}

/** Options of `createSseStream`. */
export interface SseStreamOptions {
  /** Called once the stream is open, with the handle to push through. */
  open(client: SseClient): void;
  /** Called once when the client disconnects (the stream is cancelled) or `send` finds it closed. */
  close(): void;
  /** A comment line every this many ms keeps proxies from timing the stream out (default 15 000). */
  pingMs?: number;
}

/** A `text/event-stream` body, and `end()` to finish it from the server's side. */
export interface SseStream {
  readonly body: ReadableStream<Uint8Array>;
  /** Ends the stream (the client's `EventSource` reconnects unless its page is gone). Idempotent. */
  end(): void;
}

/** Opens an event stream. Its first bytes tell the client to retry after 1 s if the stream drops. */
export function createSseStream(options: SseStreamOptions): SseStream {
  const encoder = new TextEncoder();
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  const finish = (): void => {
    if (closed) return;
    closed = true;
    clearInterval(timer);
    options.close();
  };
  const write = (text: string): boolean => {
    if (closed || controller === undefined) return false;
    try {
      controller.enqueue(encoder.encode(text));
      return true;
    } catch {
      finish();
      return false;
    }
  };
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      write("retry: 1000\n\n");
      timer = setInterval(() => write(": ping\n\n"), options.pingMs ?? 15_000);
      timer.unref();
      options.open({ send: (message) => write(encodeSse(message)) });
    },
    cancel() {
      finish();
    },
  });
  return {
    body,
    end() {
      if (closed) return;
      const c = controller;
      finish();
      try {
        c?.close();
      } catch {
        // already closed or errored
      }
    },
  };
}
