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

/**
 * Splits bytes into complete lines, carrying a partial last line over to the next chunk. Linear in the
 * input: each chunk is searched once, and the partial line is kept as a list of pieces, joined once at
 * its end. A partial line longer than `maxLineBytes` comes out as a line as it is, so memory stays bounded.
 */
export class LineSplitter {
  readonly #pieces: Buffer[] = [];
  #held = 0;
  readonly #maxLineBytes: number;

  constructor(maxLineBytes = MAX_HELD_BYTES) {
    this.#maxLineBytes = maxLineBytes;
  }

  /** Bytes of the partial line held back now. */
  get heldBytes(): number {
    return this.#held;
  }

  /**
   * The lines that `chunk` completes, each with its `\n` (and a `\r` before it) as written; a piece of a
   * line longer than `maxLineBytes` has none.
   */
  push(chunk: Buffer): Buffer[] {
    const lines: Buffer[] = [];
    let start = 0;
    for (let nl = chunk.indexOf(LF); nl >= 0; nl = chunk.indexOf(LF, start)) {
      this.#pieces.push(chunk.subarray(start, nl + 1));
      lines.push(this.#take());
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.#pieces.push(chunk.subarray(start));
      this.#held += chunk.length - start;
      if (this.#held > this.#maxLineBytes) lines.push(this.#take());
    }
    return lines;
  }

  /** The partial line left over, if any (at end of stream). */
  flush(): Buffer[] {
    return this.#held === 0 ? [] : [this.#take()];
  }

  #take(): Buffer {
    const line = this.#pieces.length === 1 ? this.#pieces[0]! : Buffer.concat(this.#pieces);
    this.#pieces.length = 0;
    this.#held = 0;
    return line;
  }
}

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
  /** Prefix each line with `[rank<N>]: ` (complete lines only; partial lines wait for their end). */
  readonly prefix: boolean;
  readonly stdout: Writable;
  readonly stderr: Writable;
  /** Called before each write (the status line hides itself there). */
  readonly beforeWrite?: () => void;
}

/**
 * One of the agent's streams, shared by every worker writing to it. While it is full, the workers' streams
 * that wrote to it are paused, and all of them resume on its next 'drain': one listener however many
 * workers there are (a listener per paused worker passed the default limit of 10 with 11 workers). Once
 * the stream fails or closes (EPIPE: `rdzv run ... | head -1`), worker output to it is dropped and the
 * workers go on: no 'drain' would ever come, and a worker blocked on a full pipe would hang.
 */
class Sink {
  readonly #stream: Writable;
  readonly #beforeWrite: (() => void) | undefined;
  readonly #paused = new Set<Readable>();
  #broken = false;

  constructor(stream: Writable, beforeWrite: (() => void) | undefined) {
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
    this.#beforeWrite?.();
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

/** Output to the agent's own streams, pausing workers' streams while their destination is full. */
export function createWorkerOutput(options: WorkerOutputOptions): WorkerOutput {
  const sinks = {
    stdout: new Sink(options.stdout, options.beforeWrite),
    stderr: new Sink(options.stderr, options.beforeWrite),
  };
  return {
    attach(rank, stream, source) {
      const sink = sinks[stream];
      const write = (bytes: Buffer): void => sink.write(bytes, source);
      if (options.prefix) {
        const splitter = new LineSplitter();
        const tag = Buffer.from(`[rank${rank}]: `);
        const format = (lines: Buffer[]): Buffer =>
          Buffer.concat(lines.flatMap((l) => (l.at(-1) === LF ? [tag, l] : [tag, l, NEWLINE])));
        source.on("data", (chunk: Buffer | string) => write(format(splitter.push(toBytes(chunk)))));
        source.on("end", () => write(format(splitter.flush())));
        return;
      }
      // Untouched, but only up to the last line end (`\n`, or `\r` for progress bars): workers writing at
      // once must not interleave within a line (an unbuffered Python `print` writes text and newline apart).
      // Only the new chunk is searched, and what is held back is kept in pieces.
      const held: Buffer[] = [];
      let heldBytes = 0;
      const release = (upTo?: Buffer): Buffer => {
        if (upTo !== undefined) held.push(upTo);
        const bytes = held.length === 1 ? held[0]! : Buffer.concat(held);
        held.length = 0;
        heldBytes = 0;
        return bytes;
      };
      source.on("data", (data: Buffer | string) => {
        const chunk = toBytes(data);
        const lineEnd = Math.max(chunk.lastIndexOf(LF), chunk.lastIndexOf(CR)) + 1;
        if (lineEnd > 0) write(release(chunk.subarray(0, lineEnd)));
        if (lineEnd === chunk.length) return;
        held.push(chunk.subarray(lineEnd));
        heldBytes += chunk.length - lineEnd;
        // A line longer than MAX_HELD_BYTES goes out in pieces rather than pile up.
        if (heldBytes > MAX_HELD_BYTES) write(release());
      });
      source.on("end", () => write(release()));
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
