/**
 * Direct reads for plain-TCP server connections.
 *
 * A `net.Socket` delivers incoming bytes through its Readable stream ('data' events), which costs several
 * microseconds of JavaScript per read: a minimal Node server answering ADDs from PyTorch's Python client
 * (4 processes) used about 20 µs of CPU per request with stream reads and about 11 with direct reads. Node's documented
 * `onread` socket option skips the stream: the bytes land in a caller-owned buffer and one callback gets
 * them. Node only offers it to sockets it connects, not to accepted ones, so `directReads` moves an accepted
 * socket's handle into a new `net.Socket` created with `onread` (the server listens with `pauseOnConnect`
 * so nothing was read yet). That uses the socket's `_handle` and the constructor's `handle` option, which
 * Node does not document: `directReads` checks they look as expected and otherwise leaves the socket as it
 * is, so the caller falls back to 'data' events. Writes, pause/resume (Node stops and starts the handle's
 * reads for `onread` sockets), 'end', 'error' and 'close' behave as on any socket.
 *
 * Every connection reads into one shared buffer: the callback runs synchronously for one read at a time,
 * and the bytes are copied out before it returns (the request decoder keeps the chunks of an incomplete
 * request across reads).
 */

import { Socket } from "node:net";

/** Big enough for one read of a pipelined burst; shared by every connection of the process. */
const SHARED = Buffer.allocUnsafe(64 * 1024);

/**
 * Node's `onread` socket option reading into the shared buffer and handing `onChunk` a copy of each read.
 * Also used by the TCP store client's plain-TCP connections, which Node connects itself.
 */
export function copyingOnread(onChunk: (chunk: Buffer) => void): {
  buffer: Uint8Array;
  callback: (n: number, buf: Uint8Array) => boolean;
} {
  return {
    buffer: SHARED,
    callback: (n, buf) => {
      const chunk = Buffer.allocUnsafe(n);
      chunk.set(buf.subarray(0, n));
      onChunk(chunk);
      return true;
    },
  };
}

interface HandleLike {
  readStart(): number;
  readStop(): number;
  useUserBuffer(buf: Uint8Array): void;
}

function looksLikeHandle(h: unknown): h is HandleLike {
  if (typeof h !== "object" || h === null) return false;
  const o = h as Record<string, unknown>;
  return (
    typeof o.readStart === "function" &&
    typeof o.readStop === "function" &&
    typeof o.useUserBuffer === "function"
  );
}

/**
 * Moves the not-yet-reading accepted `socket` to a socket that hands each read to `onChunk` (a copy the
 * callee may keep). Returns the new socket, or undefined when this Node's sockets do not look as expected
 * (then `socket` is untouched and still paused).
 */
export function directReads(socket: Socket, onChunk: (chunk: Buffer) => void): Socket | undefined {
  const original = socket as unknown as { _handle: unknown };
  const handle = original._handle;
  if (!looksLikeHandle(handle) || process.env.RDZV_STREAM_READS === "1") return undefined;
  original._handle = null;
  let moved: Socket;
  try {
    moved = new Socket({
      handle,
      readable: true,
      writable: true,
      onread: copyingOnread(onChunk),
    } as ConstructorParameters<typeof Socket>[0] & { handle: unknown });
  } catch {
    original._handle = handle;
    return undefined;
  }
  // The original socket owns nothing now; destroying it settles the listener's connection count.
  socket.destroy();
  moved.resume();
  return moved;
}
