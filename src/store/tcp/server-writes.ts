/**
 * How a server connection writes its replies: through the socket's Writable stream, or directly to the
 * socket's handle.
 *
 * `socket.write` runs the Writable machinery for every write and, when the write completes at once (as
 * nearly every reply does), schedules a `process.nextTick` to report it, so each read that produces a reply
 * costs a second trip into JavaScript after the read's callback. PyTorch's clients send one request at a
 * time, so that is paid per request. `directWriter` hands each write to the handle as Node's own stream
 * code does underneath (`writeBuffer` / `writev` with a `WriteWrap`): the kernel gets the bytes at once,
 * and only a write the kernel could not take whole completes later, through the request's `oncomplete`.
 * That uses `process.binding("stream_wrap")` and the handle's methods, which Node does not document, so
 * `directWriter` checks they look as expected and otherwise returns undefined (the caller then writes to
 * the stream). `RDZV_STREAM_WRITES=1` forces the stream.
 *
 * Direct writes bypass the Writable entirely, so a connection must use one writer for its whole life.
 * `socket.end()` / `destroySoon()` still work: the handle's shutdown is queued after the pending writes.
 */

import type { Socket } from "node:net";
import { getSystemErrorName } from "node:util";

/** Where a connection's reply bytes go. */
export interface ReplyWriter {
  /** Writes `buf` (kept until written); false when the caller should wait for the drain callback. */
  write(buf: Buffer): boolean;
  /** Writes `bufs` in this order as one gather write; false as for `write`. */
  writev(bufs: Buffer[]): boolean;
}

/** Writes through the socket's Writable stream; `onDrain` runs on its 'drain'. */
export function streamWriter(socket: Socket, onDrain: () => void): ReplyWriter {
  socket.on("drain", onDrain);
  return {
    write: (buf) => socket.write(buf),
    writev: (bufs) => {
      socket.cork();
      for (const buf of bufs) socket.write(buf);
      socket.uncork();
      return !socket.writableNeedDrain;
    },
  };
}

interface WriteReq {
  handle: unknown;
  oncomplete: (status: number) => void;
  /** Keeps the bytes of a write the kernel did not take at once alive until it completes. */
  keep?: Buffer | Buffer[];
}

interface StreamHandle {
  writeBuffer(req: WriteReq, buf: Buffer): number;
  writev(req: WriteReq, bufs: Buffer[], allBuffers: boolean): number;
}

interface StreamWrapBinding {
  WriteWrap: new () => WriteReq;
  streamBaseState: Int32Array;
  kLastWriteWasAsync: number;
}

let binding: StreamWrapBinding | null | undefined;

/** Node's stream_wrap binding, when it has the members direct writes use (looked up once). */
function streamWrap(): StreamWrapBinding | undefined {
  if (binding === undefined) {
    binding = null;
    try {
      const b = (process as unknown as { binding(name: string): Record<string, unknown> }).binding(
        "stream_wrap",
      );
      if (
        typeof b.WriteWrap === "function" &&
        b.streamBaseState instanceof Int32Array &&
        typeof b.kLastWriteWasAsync === "number"
      ) {
        binding = b as unknown as StreamWrapBinding;
      }
    } catch {
      // No process.binding, or no stream_wrap in it: stream writes.
    }
  }
  return binding ?? undefined;
}

function looksLikeStreamHandle(h: unknown): h is StreamHandle {
  if (typeof h !== "object" || h === null) return false;
  const o = h as Record<string, unknown>;
  return typeof o.writeBuffer === "function" && typeof o.writev === "function";
}

/**
 * A writer that writes to `socket`'s handle directly, or undefined when this Node does not look as
 * expected (or RDZV_STREAM_WRITES=1). `onDrain` runs when every write the kernel could not take at once
 * has completed. A failed write destroys the socket with an error naming the system error, as a failed
 * stream write does.
 */
export function directWriter(socket: Socket, onDrain: () => void): ReplyWriter | undefined {
  const b = streamWrap();
  const internals = socket as unknown as { _handle: unknown };
  const handle = internals._handle;
  if (b === undefined || !looksLikeStreamHandle(handle) || process.env.RDZV_STREAM_WRITES === "1") {
    return undefined;
  }
  const { WriteWrap, streamBaseState, kLastWriteWasAsync } = b;
  let inFlight = 0;
  const complete = (status: number): void => {
    inFlight--;
    if (socket.destroyed) return; // canceled by the close
    if (status < 0) fail(status);
    else if (inFlight === 0) onDrain();
  };
  const fail = (status: number): void => {
    const code = getSystemErrorName(status);
    socket.destroy(Object.assign(new Error(`write ${code}`), { code, errno: status, syscall: "write" }));
  };
  /** After a dispatched write: false (wait for drain) when it or an earlier one is still in flight. */
  const settle = (req: WriteReq, status: number, keep: Buffer | Buffer[]): boolean => {
    if (status !== 0) {
      fail(status);
      return true;
    }
    if (streamBaseState[kLastWriteWasAsync] !== 0) {
      req.keep = keep;
      inFlight++;
    }
    return inFlight === 0;
  };
  const request = (): WriteReq | undefined => {
    // A destroyed socket has no handle: its replies are dropped, as the stream drops them.
    if (internals._handle !== handle) return undefined;
    const req = new WriteWrap();
    req.handle = handle;
    req.oncomplete = complete;
    return req;
  };
  return {
    write(buf) {
      const req = request();
      return req === undefined ? true : settle(req, handle.writeBuffer(req, buf), buf);
    },
    writev(bufs) {
      const req = request();
      return req === undefined ? true : settle(req, handle.writev(req, bufs, true), bufs);
    },
  };
}
