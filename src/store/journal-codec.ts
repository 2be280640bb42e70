/**
 * The byte format of `rdzv serve --data-dir` (pure: bytes in, mutations out). Both files, the journal of
 * mutations and the snapshot that compaction writes, are an 16-byte header (8-byte magic, u64 LE
 * generation) and a sequence of records:
 *
 *   u32 LE payload length | u32 LE CRC-32 of the payload | payload
 *   payload = u8 op | u32 LE key length | key (UTF-8) | value (the rest; set, append, push only)
 *
 * A snapshot ends with an `end` record holding the number of records before it (u64 LE), so a snapshot
 * cut short is never mistaken for a complete one.
 */

import { crc32 } from "node:zlib";
import { ErrorCode, StoreError } from "../errors.js";
import type { Mutation } from "./kv-engine.js";

/** The data directory holds a file that cannot be read back: a clear error, never a silent loss. */
export class JournalCorruptError extends StoreError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, ErrorCode.State, options);
  }
}

export const JOURNAL_MAGIC = "RDZVJRN1";
export const SNAPSHOT_MAGIC = "RDZVSNP1";
export const HEADER_BYTES = 16;
const RECORD_HEADER_BYTES = 8;
const PAYLOAD_MIN_BYTES = 5;

const OP_CODES = { set: 1, append: 2, delete: 3, push: 4, pop: 5, end: 0xff } as const;
const OPS = new Map<number, Mutation["op"]>([
  [1, "set"],
  [2, "append"],
  [3, "delete"],
  [4, "push"],
  [5, "pop"],
]);

/** A file header: magic and generation. */
export function encodeHeader(magic: string, generation: number): Buffer {
  const buf = Buffer.alloc(HEADER_BYTES);
  buf.write(magic, 0, "latin1");
  buf.writeBigUInt64LE(BigInt(generation), 8);
  return buf;
}

function frame(payload: Buffer): Buffer {
  const header = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt32LE(crc32(payload), 4);
  return Buffer.concat([header, payload]);
}

/** One record for `m`. */
export function encodeMutation(m: Mutation): Buffer {
  const key = Buffer.from(m.key, "utf8");
  const value = m.op === "delete" || m.op === "pop" ? undefined : m.value;
  const payload = Buffer.allocUnsafe(PAYLOAD_MIN_BYTES + key.length + (value?.length ?? 0));
  payload[0] = OP_CODES[m.op];
  payload.writeUInt32LE(key.length, 1);
  key.copy(payload, PAYLOAD_MIN_BYTES);
  if (value !== undefined) payload.set(value, PAYLOAD_MIN_BYTES + key.length);
  return frame(payload);
}

/** The `end` record of a snapshot of `count` records. */
export function encodeEnd(count: number): Buffer {
  const payload = Buffer.alloc(9);
  payload[0] = OP_CODES.end;
  payload.writeBigUInt64LE(BigInt(count), 1);
  return frame(payload);
}

type Parsed = { kind: "mutation"; mutation: Mutation } | { kind: "end"; count: number };

/** Decodes one record's payload; undefined when it is not a well-formed one. */
function parsePayload(p: Buffer): Parsed | undefined {
  if (p[0] === OP_CODES.end) {
    return p.length === 9 ? { kind: "end", count: Number(p.readBigUInt64LE(1)) } : undefined;
  }
  const op = OPS.get(p[0]!);
  if (op === undefined || p.length < PAYLOAD_MIN_BYTES) return undefined;
  const keyLength = p.readUInt32LE(1);
  if (PAYLOAD_MIN_BYTES + keyLength > p.length) return undefined;
  const key = p.toString("utf8", PAYLOAD_MIN_BYTES, PAYLOAD_MIN_BYTES + keyLength);
  const rest = p.subarray(PAYLOAD_MIN_BYTES + keyLength);
  if (op === "delete" || op === "pop") {
    return rest.length === 0 ? { kind: "mutation", mutation: { op, key } } : undefined;
  }
  return { kind: "mutation", mutation: { op, key, value: new Uint8Array(rest) } };
}

/** The record at `offset`, if a complete and intact one starts there. */
function recordAt(buf: Buffer, offset: number): { parsed: Parsed; next: number } | undefined {
  if (offset + RECORD_HEADER_BYTES > buf.length) return undefined;
  const length = buf.readUInt32LE(offset);
  const start = offset + RECORD_HEADER_BYTES;
  if (length < PAYLOAD_MIN_BYTES || start + length > buf.length) return undefined;
  const payload = buf.subarray(start, start + length);
  if (crc32(payload) !== buf.readUInt32LE(offset + 4)) return undefined;
  const parsed = parsePayload(payload);
  return parsed === undefined ? undefined : { parsed, next: start + length };
}

/** What reading a journal found. */
export interface DecodedJournal {
  readonly generation: number;
  readonly mutations: Mutation[];
  /** Bytes of intact records (header included): where appending resumes. */
  readonly validBytes: number;
  /** Bytes after the last intact record, to be dropped (0 when none). */
  readonly droppedBytes: number;
  /**
   * How the dropped last record is bad, when there is one: `cut short` (its header or payload reaches
   * past the end of the file: a write that did not finish), or `damaged` (complete by its own length,
   * but its checksum or contents are wrong: garbage a machine crash left, or damage on disk).
   */
  readonly tail?: "cut short" | "damaged";
}

/**
 * The generation in a file's header. Every journal and snapshot is written whole with its header through
 * a temporary file and a rename (journal-lock.ts `writeFileAtomic`), so a file shorter than a header,
 * an empty one included, was truncated or replaced afterwards: corruption like any other bad header.
 */
function checkHeader(buf: Buffer, magic: string, what: string): number {
  const kind = magic === JOURNAL_MAGIC ? "journal" : "snapshot";
  if (buf.length < HEADER_BYTES) {
    throw new JournalCorruptError(
      `${what} is ${buf.length === 0 ? "empty (0 bytes)" : `${buf.length} bytes, shorter than its header`}: ` +
        `rdzv writes every ${kind} whole with its ${HEADER_BYTES}-byte header, so it was truncated or replaced`,
    );
  }
  if (buf.toString("latin1", 0, 8) !== magic) {
    throw new JournalCorruptError(`${what} is not an rdzv ${kind} (bad header)`);
  }
  return Number(buf.readBigUInt64LE(8));
}

/**
 * Decodes a journal file's bytes (`what` names it in errors). A bad record followed by nothing intact is
 * a bad tail (cut short or damaged, see `DecodedJournal.tail`): reported in `droppedBytes`, not an error.
 * A bad record with an intact one anywhere after it is corruption: `JournalCorruptError` naming the offset.
 */
export function decodeJournal(buf: Buffer, what: string): DecodedJournal {
  const generation = checkHeader(buf, JOURNAL_MAGIC, what);
  const mutations: Mutation[] = [];
  let offset = HEADER_BYTES;
  while (offset < buf.length) {
    const record = recordAt(buf, offset);
    if (record === undefined || record.parsed.kind !== "mutation") {
      for (let later = offset + 1; later + RECORD_HEADER_BYTES <= buf.length; later++) {
        if (recordAt(buf, later) !== undefined) {
          throw new JournalCorruptError(
            `${what} is corrupt: bad record at byte ${offset} of ${buf.length}, intact records follow at byte ${later}`,
          );
        }
      }
      const length = offset + RECORD_HEADER_BYTES <= buf.length ? buf.readUInt32LE(offset) : Infinity;
      const tail = offset + RECORD_HEADER_BYTES + length > buf.length ? "cut short" : "damaged";
      return { generation, mutations, validBytes: offset, droppedBytes: buf.length - offset, tail };
    }
    mutations.push(record.parsed.mutation);
    offset = record.next;
  }
  return { generation, mutations, validBytes: offset, droppedBytes: 0 };
}

/** Decodes a snapshot file's bytes; any flaw is `JournalCorruptError` (snapshots are renamed into place whole). */
export function decodeSnapshot(buf: Buffer, what: string): { generation: number; mutations: Mutation[] } {
  const generation = checkHeader(buf, SNAPSHOT_MAGIC, what);
  const mutations: Mutation[] = [];
  let offset = HEADER_BYTES;
  while (offset < buf.length) {
    const record = recordAt(buf, offset);
    if (record === undefined)
      throw new JournalCorruptError(`${what} is corrupt: bad record at byte ${offset}`);
    if (record.parsed.kind === "end") {
      if (record.parsed.count !== mutations.length || record.next !== buf.length) {
        throw new JournalCorruptError(`${what} is corrupt: its end record does not match its contents`);
      }
      return { generation, mutations };
    }
    mutations.push(record.parsed.mutation);
    offset = record.next;
  }
  throw new JournalCorruptError(`${what} is incomplete: no end record`);
}
