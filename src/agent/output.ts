/**
 * Worker output: forwarding each worker's stdout/stderr to the agent's (optionally prefixed by rank, line
 * by line, as torchrun's `[default0]:` prefixes), and keeping the tail of each worker's stderr for the
 * failure summary. Output is bytes throughout: a worker's binary or non-UTF-8 output reaches the agent's
 * streams as it was written (with prefixes, lines are split at the `\n` byte and kept as they are).
 */

import type { Readable, Writable } from "node:stream";

/** Which of a worker's streams. */
export type StreamName = "stdout" | "stderr";

/** The most of an unfinished line held back, in bytes: past it, the line goes out in pieces. */
export const MAX_HELD_BYTES = 64 * 1024;

const LF = 0x0a;
const CR = 0x0d;
const NEWLINE = Buffer.from("\n");

/** How long an unfinished line (a prompt, a progress bar) waits for its end before it goes out anyway. */
export const HOLD_MS = 150;

/**
 * The last `maxLines` lines written to a stream, each cut to `maxLineChars`, as a terminal shows them: of
 * a line that `\r` rewrites (a progress bar), only the last rewrite. Linear in the input, and it holds at
 * most `maxLines` lines of `4 * maxLineChars` bytes (UTF-8's widest), however long the lines are. Bytes
 * that are not UTF-8 show as U+FFFD.
 */
export class TailBuffer {
  readonly #lines: string[] = [];
  readonly #maxLines: number;
  readonly #maxLineChars: number;
  readonly #maxLineBytes: number;
  /** The current line's last `\r`-segment so far: its first `maxLineBytes` bytes. */
  readonly #current: Buffer;
  #currentBytes = 0;
  #cutShort = false;
  /** The last byte was a `\r`: the next one either ends the line (`\n`) or rewrites it. */
  #afterCR = false;

  constructor(maxLines = 20, maxLineChars = 400) {
    this.#maxLines = maxLines;
    this.#maxLineChars = maxLineChars;
    this.#maxLineBytes = 4 * maxLineChars;
    this.#current = Buffer.alloc(this.#maxLineBytes);
  }

  push(data: Buffer | string): void {
    const chunk = toBytes(data);
    let nl = chunk.indexOf(LF);
    let cr = chunk.indexOf(CR);
    for (let start = 0; start < chunk.length; ) {
      // Both positions are searched again only once passed: one pass over the chunk in all.
      if (nl >= 0 && nl < start) nl = chunk.indexOf(LF, start);
      if (cr >= 0 && cr < start) cr = chunk.indexOf(CR, start);
      const end = nl < 0 ? cr : cr < 0 ? nl : Math.min(nl, cr);
      this.#append(chunk, start, end < 0 ? chunk.length : end);
      if (end < 0) return;
      if (end === nl) this.#endLine();
      else this.#afterCR = true;
      start = end + 1;
    }
  }

  /** The kept lines, the partial last line included. */
  lines(): string[] {
    const lines = [...this.#lines];
    if (this.#currentBytes > 0) lines.push(this.#text());
    return lines.slice(-this.#maxLines);
  }

  #append(chunk: Buffer, start: number, end: number): void {
    if (end === start) return;
    if (this.#afterCR) this.#clear();
    const take = Math.min(end - start, this.#maxLineBytes - this.#currentBytes);
    if (take < end - start) this.#cutShort = true;
    if (take <= 0) return;
    chunk.copy(this.#current, this.#currentBytes, start, start + take);
    this.#currentBytes += take;
  }

  #endLine(): void {
    this.#lines.push(this.#text());
    if (this.#lines.length > this.#maxLines) this.#lines.shift();
    this.#clear();
  }

  #clear(): void {
    this.#currentBytes = 0;
    this.#cutShort = false;
    this.#afterCR = false;
  }

  #text(): string {
    const line = this.#current.toString("utf8", 0, this.#currentBytes);
    return line.length > this.#maxLineChars || this.#cutShort
      ? `${line.slice(0, this.#maxLineChars)}…`
      : line;
  }
}

/** Where worker output goes. */
export interface WorkerOutput {
  /** Forwards `source` (a worker's stream, emitting Buffers) until it ends. Called once per stream. */
  attach(rank: number, stream: StreamName, source: Readable): void;
}

/** Options of `createWorkerOutput`. */
export interface WorkerOutputOptions {
  /**
   * Prefix each line with `[rank<N>]: `, and each rewrite of a line by `\r` (a progress bar) too. Another
   * worker's output ends a line left unfinished with a `\n` first.
   */
  readonly prefix: boolean;
  readonly stdout: Writable;
  readonly stderr: Writable;
  /**
   * Called before each write (the status line hides itself there), with whether the write leaves its
   * line unfinished (a prompt, a progress bar), which a redrawn status line would overwrite.
   */
  readonly beforeWrite?: (lineOpen: boolean) => void;
}

/**
 * One of the agent's streams, shared by every worker writing to it. While it is full, the workers' streams
 * that wrote to it are paused, and all of them resume on its next 'drain': one listener however many
 * workers there are (a listener per paused worker passed the default limit of 10 with 11 workers). Once
 * the stream fails or closes (EPIPE: `rdzv run ... | head -1`), worker output to it is dropped and the
 * workers go on: no 'drain' would ever come, and a worker blocked on a full pipe would hang.
 */
class Sink {
  /** With prefixes: the writer whose line the stream's output ends in, unfinished. */
  open: LineWriter | undefined;
  readonly #stream: Writable;
  readonly #beforeWrite: ((lineOpen: boolean) => void) | undefined;
  readonly #paused = new Set<Readable>();
  #broken = false;

  constructor(stream: Writable, beforeWrite: ((lineOpen: boolean) => void) | undefined) {
    this.#stream = stream;
    this.#beforeWrite = beforeWrite;
    const broken = (): void => {
      this.#broken = true;
      this.#resume();
    };
    stream.on("error", broken);
    stream.once("close", broken);
  }

  /** Writes `bytes` from `source`, pausing `source` until the stream drains when it is full. */
  write(bytes: Buffer, source: Readable): void {
    if (bytes.length === 0 || this.#broken) return;
    this.#beforeWrite?.(bytes[bytes.length - 1] !== 0x0a);
    if (this.#stream.write(bytes)) return;
    source.pause();
    this.#paused.add(source);
    if (this.#paused.size === 1) this.#stream.once("drain", () => this.#resume());
  }

  #resume(): void {
    const paused = [...this.#paused];
    this.#paused.clear();
    for (const source of paused) source.resume();
  }
}

/**
 * One worker stream's way to its sink. Output goes on up to the last line end (`\n`; without a prefix
 * also `\r`, for progress bars), so that workers writing at once do not interleave within a line (an
 * unbuffered Python `print` writes text and newline apart); the unfinished rest waits for its end, but at
 * most HOLD_MS (a prompt, a progress bar must show) and MAX_HELD_BYTES (memory). With a prefix, the `\r`
 * rewrites of a progress bar go out together every HOLD_MS, each prefixed. Each chunk is searched once.
 */
class LineWriter {
  readonly #sink: Sink;
  readonly #source: Readable;
  /** The prefix, or undefined to pass bytes on untouched. */
  readonly #tag: Buffer | undefined;
  readonly #held: Buffer[] = [];
  #heldBytes = 0;
  #timer: NodeJS.Timeout | undefined;
  /** The next byte starts a line (or a `\r` rewrite of one): it gets the prefix. */
  #atLineStart = true;
  /** The last byte written was a `\r`: a `\n` next ends the line, without a prefix of its own. */
  #afterCR = false;
  /** Another writer ended this writer's unfinished line: a line end coming next is already written. */
  #endedElsewhere = false;

  constructor(sink: Sink, source: Readable, tag: Buffer | undefined) {
    this.#sink = sink;
    this.#source = source;
    this.#tag = tag;
  }

  push(chunk: Buffer): void {
    const lastLF = chunk.lastIndexOf(LF);
    const lineEnd = (this.#tag === undefined ? Math.max(lastLF, chunk.lastIndexOf(CR)) : lastLF) + 1;
    if (lineEnd > 0) {
      this.#held.push(chunk.subarray(0, lineEnd));
      this.#release();
    }
    if (lineEnd === chunk.length) return;
    this.#held.push(chunk.subarray(lineEnd));
    this.#heldBytes += chunk.length - lineEnd;
    if (this.#heldBytes > MAX_HELD_BYTES) this.#release();
    else if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.#release(), HOLD_MS);
      this.#timer.unref();
    }
  }

  /** At the end of the stream: what is held goes out, and a prefixed line left unfinished is ended. */
  end(): void {
    this.#release();
    if (this.#tag !== undefined && this.#sink.open === this) this.#write(NEWLINE);
  }

  #release(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#held.length === 0) return;
    const bytes = this.#held.length === 1 ? this.#held[0]! : Buffer.concat(this.#held);
    this.#held.length = 0;
    this.#heldBytes = 0;
    this.#write(this.#tag === undefined ? bytes : this.#prefixed(bytes));
  }

  #write(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.#sink.write(bytes, this.#source);
    if (this.#tag !== undefined) this.#sink.open = bytes.at(-1) === LF ? undefined : this;
  }

  /**
   * `bytes` with the prefix before each line and each `\r` rewrite of one (not before the `\n` of a
   * `\r\n`, nor before a `\r` that rewrites nothing yet). First ends another writer's unfinished line,
   * and drops the line end of this writer's own line that another writer ended already.
   */
  #prefixed(bytes: Buffer): Buffer {
    const tag = this.#tag!;
    const out: Buffer[] = [];
    const open = this.#sink.open;
    if (open !== undefined && open !== this) {
      out.push(NEWLINE);
      open.#atLineStart = true;
      open.#endedElsewhere = true;
    }
    let start = 0;
    if (this.#endedElsewhere) {
      this.#endedElsewhere = false;
      if (bytes[0] === LF) start = 1;
      else if (bytes[0] === CR && bytes[1] === LF) start = 2;
    }
    let nl = bytes.indexOf(LF, start);
    let cr = bytes.indexOf(CR, start);
    while (start < bytes.length) {
      if (this.#atLineStart) {
        const first = bytes[start];
        const tagged = first === CR ? bytes[start + 1] === LF : !(first === LF && this.#afterCR);
        if (tagged) out.push(tag);
      }
      // Both positions are searched again only once passed: one pass over the bytes in all.
      if (nl >= 0 && nl < start) nl = bytes.indexOf(LF, start);
      if (cr >= 0 && cr < start) cr = bytes.indexOf(CR, start);
      const end = nl < 0 ? cr : cr < 0 ? nl : Math.min(nl, cr);
      out.push(bytes.subarray(start, end < 0 ? bytes.length : end + 1));
      this.#atLineStart = end >= 0;
      this.#afterCR = end >= 0 && end === cr;
      if (end < 0) break;
      start = end + 1;
    }
    return Buffer.concat(out);
  }
}

/** Output to the agent's own streams, pausing workers' streams while their destination is full. */
export function createWorkerOutput(options: WorkerOutputOptions): WorkerOutput {
  const sinks = {
    stdout: new Sink(options.stdout, options.beforeWrite),
    stderr: new Sink(options.stderr, options.beforeWrite),
  };
  return {
    attach(rank, stream, source) {
      const tag = options.prefix ? Buffer.from(`[rank${rank}]: `) : undefined;
      const writer = new LineWriter(sinks[stream], source, tag);
      source.on("data", (chunk: Buffer | string) => writer.push(toBytes(chunk)));
      source.on("end", () => writer.end());
    },
  };
}

/** A stream's chunk as bytes (a source given an encoding emits strings). */
function toBytes(chunk: Buffer | string): Buffer {
  return typeof chunk === "string" ? Buffer.from(chunk) : chunk;
}

/** Output that drops everything (tests, benchmarks). */
export const discardWorkerOutput: WorkerOutput = {
  attach(_rank, _stream, source) {
    source.resume();
  },
};
