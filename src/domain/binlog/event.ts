/**
 * MariaDB binlog events (format v4): the 19-byte header, the optional CRC32
 * trailer, decoded views of the bodies the agent needs, and builders for the
 * artificial events a binlog server sends. Pure: no I/O, never throws on bad
 * input (every failure is a tagged error inside a Result).
 *
 * Layout (all integers little-endian):
 *   header: timestamp u32 | type u8 | server_id u32 | event_size u32 | log_pos u32 | flags u16
 *   body:   event_size - 19 - (4 if checksummed) bytes
 *   trailer: CRC32 (zlib) over header + body, when the stream/file uses CRC32.
 *
 * Row, Table_map and Annotate events stay opaque: the agent forwards their
 * original bytes and never re-encodes them.
 */
import { Data, Result } from "effect"
import type { Gtid } from "../cluster/gtid.js"
import { crc32, crc32Patched } from "./crc32.js"

export const HEADER_LENGTH = 19
/** Where a header keeps log_pos (u32, little-endian). */
const LOG_POS_OFFSET = 13
export const CHECKSUM_LENGTH = 4

/** Event type codes (MySQL's 0-38 plus MariaDB's 160-171). */
export const EventType = {
  Unknown: 0,
  StartV3: 1,
  Query: 2,
  Stop: 3,
  Rotate: 4,
  Intvar: 5,
  Load: 6,
  Slave: 7,
  CreateFile: 8,
  AppendBlock: 9,
  ExecLoad: 10,
  DeleteFile: 11,
  NewLoad: 12,
  Rand: 13,
  UserVar: 14,
  FormatDescription: 15,
  Xid: 16,
  BeginLoadQuery: 17,
  ExecuteLoadQuery: 18,
  TableMap: 19,
  PreGaWriteRows: 20,
  PreGaUpdateRows: 21,
  PreGaDeleteRows: 22,
  WriteRowsV1: 23,
  UpdateRowsV1: 24,
  DeleteRowsV1: 25,
  Incident: 26,
  Heartbeat: 27,
  Ignorable: 28,
  RowsQuery: 29,
  WriteRows: 30,
  UpdateRows: 31,
  DeleteRows: 32,
  MySqlGtid: 33,
  AnonymousGtid: 34,
  PreviousGtids: 35,
  TransactionContext: 36,
  ViewChange: 37,
  XaPrepare: 38,
  AnnotateRows: 160,
  BinlogCheckpoint: 161,
  Gtid: 162,
  GtidList: 163,
  StartEncryption: 164,
  QueryCompressed: 165,
  WriteRowsCompressedV1: 166,
  UpdateRowsCompressedV1: 167,
  DeleteRowsCompressedV1: 168,
  WriteRowsCompressed: 169,
  UpdateRowsCompressed: 170,
  DeleteRowsCompressed: 171
} as const

const typeNames = new Map<number, string>(Object.entries(EventType).map(([name, code]) => [code, name]))

/** Name of an event type code, e.g. "Gtid"; "Type<n>" for unknown codes. */
export const eventTypeName = (type: number): string => typeNames.get(type) ?? `Type${type}`

/** Header flags. */
export const EventFlag = {
  /** Set in a file's FDE while the server has the file open (cleared on clean close). */
  BinlogInUse: 0x1,
  ThreadSpecific: 0x4,
  SuppressUse: 0x8,
  /** Events made up by the sender (fake Rotate, Gtid_list holding the connect state). */
  Artificial: 0x20,
  RelayLog: 0x40,
  Ignorable: 0x80,
  SkipReplication: 0x8000
} as const

/** Gtid event flags2. */
export const GtidFlag = {
  /** No terminating event: the group is the Gtid and exactly one Query (DDL, XA COMMIT/ROLLBACK). */
  Standalone: 1,
  /** An 8-byte commit_id follows the flags. */
  GroupCommitId: 2,
  Transactional: 4,
  AllowParallel: 8,
  Waited: 16,
  Ddl: 32,
  /** An XID (format u32, gtrid len u8, bqual len u8, data) follows; the group ends with XA_prepare. */
  PreparedXa: 64,
  CompletedXa: 128
} as const

/** Gtid event flags_extra (MariaDB 10.8+). */
export const GtidExtraFlag = {
  MultiEngine: 1,
  StartAlter: 2,
  CommitAlter: 4,
  RollbackAlter: 8
} as const

export const ChecksumAlg = { Off: 0, Crc32: 1, Undefined: 255 } as const

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

export class BinlogEventError extends Data.TaggedError("BinlogEventError")<{
  readonly reason: "truncated" | "size-mismatch" | "malformed" | "wrong-type" | "out-of-range"
  readonly message: string
}> {}

export class BinlogChecksumError extends Data.TaggedError("BinlogChecksumError")<{
  readonly type: number
  readonly logPos: number
  readonly stored: number
  readonly computed: number
  readonly message: string
}> {}

const fail = (reason: BinlogEventError["reason"], message: string) =>
  Result.fail(new BinlogEventError({ reason, message }))

// ---------------------------------------------------------------------------
// Header and event
// ---------------------------------------------------------------------------

export interface EventHeader {
  readonly timestamp: number
  readonly type: number
  readonly serverId: number
  readonly eventSize: number
  readonly logPos: number
  readonly flags: number
}

/**
 * A decoded event. `body` excludes header and trailer (a view into the parsed
 * bytes, not a copy); `checksum` is the stored trailer, or null when the event
 * has none. The header's eventSize is derived: serializing recomputes it.
 */
export interface BinlogEvent {
  readonly header: EventHeader
  readonly body: Uint8Array
  readonly checksum: number | null
}

export interface ParseOptions {
  /** Whether events carry the 4-byte CRC32 trailer (the stream's or file's setting). */
  readonly checksum: boolean
  /** Check the trailer; defaults to true. */
  readonly verify?: boolean | undefined
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength)

export const parseHeader = (bytes: Uint8Array): Result.Result<EventHeader, BinlogEventError> => {
  if (bytes.length < HEADER_LENGTH) return fail("truncated", `event header needs ${HEADER_LENGTH} bytes, got ${bytes.length}`)
  const v = view(bytes)
  return Result.succeed({
    timestamp: v.getUint32(0, true),
    type: v.getUint8(4),
    serverId: v.getUint32(5, true),
    eventSize: v.getUint32(9, true),
    logPos: v.getUint32(LOG_POS_OFFSET, true),
    flags: v.getUint16(17, true)
  })
}

/** Writes the header into `target` at `offset` (integers wrap to their width). */
export const writeHeader = (header: EventHeader, target: Uint8Array, offset = 0): void => {
  const v = new DataView(target.buffer, target.byteOffset + offset, HEADER_LENGTH)
  v.setUint32(0, header.timestamp, true)
  v.setUint8(4, header.type)
  v.setUint32(5, header.serverId, true)
  v.setUint32(9, header.eventSize, true)
  v.setUint32(LOG_POS_OFFSET, header.logPos, true)
  v.setUint16(17, header.flags, true)
}

/**
 * Whether an event has the trailer. A Format_description event always has
 * one: checksum-aware servers write it (a valid CRC32) even with
 * binlog_checksum=NONE, and the FDE's own last body byte says what the
 * other events carry.
 */
const hasTrailer = (type: number, checksum: boolean) => checksum || type === EventType.FormatDescription

/**
 * CRC32 over an event's header and body (`bytes` without trailer). A
 * Format_description event is summed with LOG_EVENT_BINLOG_IN_USE_F clear:
 * the server sets that flag in the FDE of the file it is writing and clears
 * it in place on close, without rewriting the CRC.
 */
const checksumOver = (bytes: Uint8Array): number => {
  if (bytes[4] !== EventType.FormatDescription || (bytes[17]! & EventFlag.BinlogInUse) === 0) return crc32(bytes)
  const head = bytes.slice(0, HEADER_LENGTH)
  head[17]! &= ~EventFlag.BinlogInUse
  return crc32(bytes.subarray(HEADER_LENGTH), crc32(head))
}

/** Parses exactly one event: `bytes.length` must equal the header's event_size. */
export const parseEvent = (
  bytes: Uint8Array,
  options: ParseOptions
): Result.Result<BinlogEvent, BinlogEventError | BinlogChecksumError> => {
  const parsed = parseHeader(bytes)
  if (Result.isFailure(parsed)) return Result.fail(parsed.failure)
  const header = parsed.success
  if (header.eventSize !== bytes.length) {
    return fail(
      header.eventSize > bytes.length ? "truncated" : "size-mismatch",
      `event_size ${header.eventSize} but ${bytes.length} bytes given (${eventTypeName(header.type)})`
    )
  }
  const trailer = hasTrailer(header.type, options.checksum)
  const end = bytes.length - (trailer ? CHECKSUM_LENGTH : 0)
  if (end < HEADER_LENGTH) return fail("truncated", `event of ${bytes.length} bytes has no room for its checksum`)
  const event: BinlogEvent = {
    header,
    body: bytes.subarray(HEADER_LENGTH, end),
    checksum: trailer ? view(bytes).getUint32(end, true) : null
  }
  if (!trailer || options.verify === false) return Result.succeed(event)
  const computed = checksumOver(bytes.subarray(0, end))
  return computed === event.checksum
    ? Result.succeed(event)
    : Result.fail(checksumError(header, event.checksum ?? 0, computed))
}

const checksumError = (header: EventHeader, stored: number, computed: number) =>
  new BinlogChecksumError({
    type: header.type,
    logPos: header.logPos,
    stored,
    computed,
    message: `CRC32 mismatch in ${eventTypeName(header.type)} event ending at ${header.logPos}: stored 0x${
      stored.toString(16)
    }, computed 0x${computed.toString(16)}`
  })

const eventSizeOf = (event: BinlogEvent) => HEADER_LENGTH + event.body.length + (event.checksum === null ? 0 : CHECKSUM_LENGTH)

const headerAndBody = (event: BinlogEvent, out: Uint8Array) => {
  writeHeader({ ...event.header, eventSize: eventSizeOf(event) }, out)
  out.set(event.body, HEADER_LENGTH)
}

/** The event's bytes, with the stored checksum (so serialize(parse(b)) equals b). */
export const serializeEvent = (event: BinlogEvent): Uint8Array => {
  const out = new Uint8Array(eventSizeOf(event))
  headerAndBody(event, out)
  if (event.checksum !== null) view(out).setUint32(out.length - CHECKSUM_LENGTH, event.checksum >>> 0, true)
  return out
}

/** CRC32 of the event's header and body, as the trailer should hold it. */
export const computeChecksum = (event: BinlogEvent): number => {
  const head = new Uint8Array(HEADER_LENGTH)
  writeHeader({ ...event.header, eventSize: eventSizeOf(event) }, head)
  if (event.header.type === EventType.FormatDescription) head[17]! &= ~EventFlag.BinlogInUse
  return crc32(event.body, crc32(head))
}

/** Succeeds with the event when it has no trailer or its trailer matches. */
export const verifyChecksum = (event: BinlogEvent): Result.Result<BinlogEvent, BinlogChecksumError> => {
  if (event.checksum === null) return Result.succeed(event)
  const computed = computeChecksum(event)
  return computed === event.checksum ? Result.succeed(event) : Result.fail(checksumError(event.header, event.checksum, computed))
}

/** The event with its trailer recomputed (after changing header fields or body); no-op without a trailer. */
export const recomputeChecksum = (event: BinlogEvent): BinlogEvent =>
  event.checksum === null ? event : { ...event, checksum: computeChecksum(event) }

const isU32 = (n: number) => Number.isInteger(n) && n >= 0 && n <= 0xffffffff

/**
 * The stored CRC of an event of `length` bytes, carried over its log_pos changed from
 * `before` to `after` (CRC-32 is linear: {@link crc32Patched}, no pass over the event).
 */
const carriedChecksum = (stored: number, before: Uint8Array, after: Uint8Array, length: number): number =>
  crc32Patched(stored, before, after, length - CHECKSUM_LENGTH - LOG_POS_OFFSET - 4)

const logPosOf = (bytes: Uint8Array, at = 0) => bytes.subarray(at + LOG_POS_OFFSET, at + LOG_POS_OFFSET + 4)

/**
 * Copy of one event's bytes with log_pos replaced and the CRC carried over it. The
 * old CRC is verified first, so a corrupted event is refused. `checksum` (default true)
 * is the stream's setting; an FDE always has its trailer.
 */
export const withLogPos = (
  eventBytes: Uint8Array,
  logPos: number,
  options: { readonly checksum?: boolean } = {}
): Result.Result<Uint8Array, BinlogEventError | BinlogChecksumError> => {
  if (!isU32(logPos)) return fail("out-of-range", `log_pos ${logPos} is not a u32`)
  const parsed = parseEvent(eventBytes, { checksum: options.checksum ?? true })
  if (Result.isFailure(parsed)) return Result.fail(parsed.failure)
  const out = Uint8Array.from(eventBytes)
  const v = view(out)
  v.setUint32(LOG_POS_OFFSET, logPos, true)
  const stored = parsed.success.checksum
  if (stored !== null) v.setUint32(out.length - CHECKSUM_LENGTH, carriedChecksum(stored, logPosOf(eventBytes), logPosOf(out), out.length), true)
  return Result.succeed(out)
}

/**
 * An event moved to end at `logPos` without copying its body: writes its header, log_pos
 * replaced, into `target` at `at`, and returns the trailer the moved event carries (the
 * stored CRC carried over the 4 changed bytes). The stored CRC is not checked first,
 * which would be a pass over every byte: a mismatch stays a mismatch after the patch, and
 * the replica's IO thread checks every event it receives and stops on one, so a corrupt
 * event is never given a valid checksum. The event must carry its trailer.
 */
export const moveEventHeader = (
  bytes: Uint8Array,
  logPos: number,
  target: Uint8Array,
  at: number
): Result.Result<number, BinlogEventError | BinlogChecksumError> => {
  if (!isU32(logPos)) return fail("out-of-range", `log_pos ${logPos} is not a u32`)
  const parsed = parseEvent(bytes, { checksum: true, verify: false })
  if (Result.isFailure(parsed)) return Result.fail(parsed.failure)
  target.set(bytes.subarray(0, HEADER_LENGTH), at)
  new DataView(target.buffer, target.byteOffset + at, HEADER_LENGTH).setUint32(LOG_POS_OFFSET, logPos, true)
  return Result.succeed(carriedChecksum(parsed.success.checksum!, logPosOf(bytes), logPosOf(target, at), bytes.length))
}

// ---------------------------------------------------------------------------
// Body readers
// ---------------------------------------------------------------------------

const utf8 = new TextDecoder("utf-8")
const encoder = new TextEncoder()

const expectType = (event: BinlogEvent, ...types: ReadonlyArray<number>): Result.Result<void, BinlogEventError> =>
  types.includes(event.header.type)
    ? Result.void
    : fail("wrong-type", `expected ${types.map(eventTypeName).join(" or ")}, got ${eventTypeName(event.header.type)}`)

const needBody = (event: BinlogEvent, bytes: number): Result.Result<void, BinlogEventError> =>
  event.body.length >= bytes
    ? Result.void
    : fail("malformed", `${eventTypeName(event.header.type)} body needs ${bytes} bytes, has ${event.body.length}`)

/** u64 as a number; undefined beyond 2^53 (positions and sequence numbers never get there). */
const u64 = (v: DataView, offset: number): number | undefined => {
  const n = v.getBigUint64(offset, true)
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : undefined
}

export interface FormatDescription {
  readonly binlogVersion: number
  readonly serverVersion: string
  readonly createTimestamp: number
  readonly headerLength: number
  /** Post-header length of type i+1 at index i. */
  readonly postHeaderLengths: Uint8Array
  /** ChecksumAlg of the events that follow (the FDE itself always has a CRC32 trailer). */
  readonly checksumAlg: number
}

// binlog_version u16, server_version char[50], create_timestamp u32, header_length u8
const FDE_FIXED = 57

export const decodeFormatDescription = (event: BinlogEvent): Result.Result<FormatDescription, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.FormatDescription)
    yield* needBody(event, FDE_FIXED + 1)
    const b = event.body
    const v = view(b)
    const version = b.subarray(2, 52)
    const nul = version.indexOf(0)
    return {
      binlogVersion: v.getUint16(0, true),
      serverVersion: utf8.decode(nul < 0 ? version : version.subarray(0, nul)),
      createTimestamp: v.getUint32(52, true),
      headerLength: b[56]!,
      postHeaderLengths: b.subarray(FDE_FIXED, b.length - 1),
      checksumAlg: b[b.length - 1]!
    }
  })

export interface Rotate {
  readonly position: number
  readonly fileName: string
}

export const decodeRotate = (event: BinlogEvent): Result.Result<Rotate, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.Rotate)
    yield* needBody(event, 8)
    const position = u64(view(event.body), 0)
    if (position === undefined) return yield* fail("out-of-range", "Rotate position beyond 2^53")
    return { position, fileName: utf8.decode(event.body.subarray(8)) }
  })

export interface GtidEvent {
  /** Domain and seq_no from the body, server from the header's server_id. */
  readonly gtid: Gtid
  readonly flags: number
  readonly standalone: boolean
  readonly commitId?: bigint | undefined
  readonly xid?: { readonly formatId: number; readonly gtrid: Uint8Array; readonly bqual: Uint8Array } | undefined
  readonly flagsExtra: number
  readonly extraEngines?: number | undefined
  /** seq_no of the START ALTER this COMMIT/ROLLBACK ALTER completes. */
  readonly startAlterSeq?: bigint | undefined
}

// seq_no u64, domain_id u32, flags2 u8, then 6 bytes (commit_id's start or zero padding)
const GTID_POST_HEADER = 19

export const decodeGtid = (event: BinlogEvent): Result.Result<GtidEvent, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.Gtid)
    yield* needBody(event, GTID_POST_HEADER)
    const b = event.body
    const v = view(b)
    const seq = u64(v, 0)
    if (seq === undefined || seq === 0) return yield* fail("out-of-range", `Gtid seq_no ${v.getBigUint64(0, true)} is not in 1..2^53`)
    const flags = b[12]!
    let at = 13
    let commitId: bigint | undefined
    if (flags & GtidFlag.GroupCommitId) {
      yield* needBody(event, at + 8)
      commitId = v.getBigUint64(at, true)
      at += 8
    }
    let xid: GtidEvent["xid"]
    if (flags & (GtidFlag.PreparedXa | GtidFlag.CompletedXa)) {
      yield* needBody(event, at + 6)
      const gtridLength = b[at + 4]!
      const bqualLength = b[at + 5]!
      const data = at + 6
      yield* needBody(event, data + gtridLength + bqualLength)
      xid = {
        formatId: v.getUint32(at, true),
        gtrid: b.subarray(data, data + gtridLength),
        bqual: b.subarray(data + gtridLength, data + gtridLength + bqualLength)
      }
      at = data + gtridLength + bqualLength
    }
    // Any byte left is flags_extra (or zero padding, which reads as "no extra flags").
    let flagsExtra = 0
    let extraEngines: number | undefined
    let startAlterSeq: bigint | undefined
    if (at < b.length) {
      flagsExtra = b[at++]!
      if (flagsExtra & GtidExtraFlag.MultiEngine) {
        yield* needBody(event, at + 1)
        extraEngines = b[at++]!
      }
      if (flagsExtra & (GtidExtraFlag.CommitAlter | GtidExtraFlag.RollbackAlter)) {
        yield* needBody(event, at + 8)
        startAlterSeq = v.getBigUint64(at, true)
      }
    }
    return {
      gtid: { domain: v.getUint32(8, true), server: event.header.serverId, seq },
      flags,
      standalone: (flags & GtidFlag.Standalone) !== 0,
      commitId,
      xid,
      flagsExtra,
      extraEngines,
      startAlterSeq
    }
  })

export interface GtidList {
  /** The top 4 bits of the count field (e.g. FLAG_UNTIL_REACHED, FLAG_IGN_GTIDS). */
  readonly flags: number
  readonly gtids: ReadonlyArray<Gtid>
}

const GTID_LIST_ENTRY = 16

export const decodeGtidList = (event: BinlogEvent): Result.Result<GtidList, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.GtidList)
    yield* needBody(event, 4)
    const v = view(event.body)
    const field = v.getUint32(0, true)
    const count = field & 0x0fffffff
    // Checked before reading so a garbage count cannot make us loop or allocate.
    yield* needBody(event, 4 + count * GTID_LIST_ENTRY)
    const gtids: Array<Gtid> = []
    for (let i = 0, at = 4; i < count; i++, at += GTID_LIST_ENTRY) {
      const seq = u64(v, at + 8)
      if (seq === undefined) return yield* fail("out-of-range", "Gtid_list seq_no beyond 2^53")
      gtids.push({ domain: v.getUint32(at, true), server: v.getUint32(at + 4, true), seq })
    }
    return { flags: field >>> 28, gtids }
  })

export const decodeBinlogCheckpoint = (event: BinlogEvent): Result.Result<{ readonly fileName: string }, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.BinlogCheckpoint)
    yield* needBody(event, 4)
    const length = view(event.body).getUint32(0, true)
    yield* needBody(event, 4 + length)
    return { fileName: utf8.decode(event.body.subarray(4, 4 + length)) }
  })

export const decodeXid = (event: BinlogEvent): Result.Result<{ readonly xid: bigint }, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.Xid)
    yield* needBody(event, 8)
    return { xid: view(event.body).getBigUint64(0, true) }
  })

export interface Query {
  readonly threadId: number
  readonly execTime: number
  readonly errorCode: number
  /** Raw status variables (sql_mode, charset, ...), kept opaque. */
  readonly statusVars: Uint8Array
  readonly database: string
  readonly sqlBytes: Uint8Array
  /** The statement as UTF-8 (lossy for other charsets: use sqlBytes for exact text). */
  readonly sql: string
}

// thread_id u32, exec_time u32, db_len u8, error_code u16, status_vars_len u16
const QUERY_POST_HEADER = 13

/** Decodes a Query event (not Query_compressed, whose text is zlib-compressed). */
export const decodeQuery = (event: BinlogEvent): Result.Result<Query, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.Query)
    yield* needBody(event, QUERY_POST_HEADER)
    const b = event.body
    const v = view(b)
    const dbLength = b[8]!
    const statusLength = v.getUint16(11, true)
    const dbStart = QUERY_POST_HEADER + statusLength
    // the database name is followed by a NUL
    yield* needBody(event, dbStart + dbLength + 1)
    const sqlBytes = b.subarray(dbStart + dbLength + 1)
    return {
      threadId: v.getUint32(0, true),
      execTime: v.getUint32(4, true),
      errorCode: v.getUint16(9, true),
      statusVars: b.subarray(QUERY_POST_HEADER, dbStart),
      database: utf8.decode(b.subarray(dbStart, dbStart + dbLength)),
      sqlBytes,
      sql: utf8.decode(sqlBytes)
    }
  })

export type StatementKind =
  | "begin"
  | "commit"
  | "rollback"
  | "xa-start"
  | "xa-end"
  | "xa-prepare"
  | "xa-commit"
  | "xa-rollback"
  | "other"

/**
 * What a Query's statement does to the transaction. Only whole "COMMIT" /
 * "ROLLBACK" count: "ROLLBACK TO savepoint" occurs inside a logged transaction.
 */
export const statementKind = (sql: string): StatementKind => {
  const s = sql.trim().replace(/\s+/g, " ").toUpperCase()
  if (s === "BEGIN" || s === "START TRANSACTION") return "begin"
  if (s === "COMMIT" || s === "COMMIT WORK") return "commit"
  if (s === "ROLLBACK" || s === "ROLLBACK WORK") return "rollback"
  const xa = /^XA (START|BEGIN|END|PREPARE|COMMIT|ROLLBACK)\b/.exec(s)
  if (xa === null) return "other"
  switch (xa[1]) {
    case "START":
    case "BEGIN":
      return "xa-start"
    case "END":
      return "xa-end"
    case "PREPARE":
      return "xa-prepare"
    case "COMMIT":
      return "xa-commit"
    default:
      return "xa-rollback"
  }
}

export interface Heartbeat {
  readonly fileName: string
  /** The end position of the last event the sender sent (the header's log_pos). */
  readonly logPos: number
}

export const decodeHeartbeat = (event: BinlogEvent): Result.Result<Heartbeat, BinlogEventError> =>
  Result.gen(function*() {
    yield* expectType(event, EventType.Heartbeat)
    return { fileName: utf8.decode(event.body), logPos: event.header.logPos }
  })

// ---------------------------------------------------------------------------
// Builders (artificial events a binlog server sends)
// ---------------------------------------------------------------------------

export interface BuildOptions {
  readonly type: number
  readonly body: Uint8Array
  readonly serverId: number
  readonly logPos: number
  readonly timestamp?: number | undefined
  readonly flags?: number | undefined
  /** Append a CRC32 trailer; defaults to true. */
  readonly checksum?: boolean | undefined
}

/** An event's bytes with a freshly computed trailer. */
export const buildEvent = (options: BuildOptions): Uint8Array => {
  const draft: BinlogEvent = {
    header: {
      timestamp: options.timestamp ?? 0,
      type: options.type,
      serverId: options.serverId,
      eventSize: 0,
      logPos: options.logPos,
      flags: options.flags ?? 0
    },
    body: options.body,
    checksum: options.checksum === false ? null : 0
  }
  return serializeEvent(recomputeChecksum(draft))
}

/**
 * The fake Rotate that opens a dump stream: timestamp 0, log_pos 0, flags
 * LOG_EVENT_ARTIFICIAL_F; the replica takes the file name and position from it.
 */
export const makeFakeRotate = (options: {
  readonly fileName: string
  readonly position?: number | undefined
  readonly serverId: number
  readonly checksum?: boolean | undefined
}): Uint8Array => {
  const name = encoder.encode(options.fileName)
  const body = new Uint8Array(8 + name.length)
  view(body).setBigUint64(0, BigInt(options.position ?? 4), true)
  body.set(name, 8)
  return buildEvent({
    type: EventType.Rotate,
    body,
    serverId: options.serverId,
    logPos: 0,
    flags: EventFlag.Artificial,
    checksum: options.checksum
  })
}

export const makeGtidList = (options: {
  readonly gtids: ReadonlyArray<Gtid>
  readonly serverId: number
  readonly logPos: number
  readonly timestamp?: number | undefined
  /** Header flags; EventFlag.Artificial for the one holding the replica's connect state. */
  readonly flags?: number | undefined
  /** Top 4 bits of the count field. */
  readonly listFlags?: number | undefined
  readonly checksum?: boolean | undefined
}): Uint8Array => {
  const body = new Uint8Array(4 + options.gtids.length * GTID_LIST_ENTRY)
  const v = view(body)
  v.setUint32(0, ((options.listFlags ?? 0) << 28 | options.gtids.length) >>> 0, true)
  options.gtids.forEach((g, i) => {
    const at = 4 + i * GTID_LIST_ENTRY
    v.setUint32(at, g.domain, true)
    v.setUint32(at + 4, g.server, true)
    v.setBigUint64(at + 8, BigInt(g.seq), true)
  })
  return buildEvent({
    type: EventType.GtidList,
    body,
    serverId: options.serverId,
    logPos: options.logPos,
    timestamp: options.timestamp,
    flags: options.flags,
    checksum: options.checksum
  })
}

/** Heartbeat as MariaDB sends it: timestamp 0, flags 0, log_pos = end of the last event sent. */
export const makeHeartbeat = (options: {
  readonly fileName: string
  readonly logPos: number
  readonly serverId: number
  readonly checksum?: boolean | undefined
}): Uint8Array =>
  buildEvent({
    type: EventType.Heartbeat,
    body: encoder.encode(options.fileName),
    serverId: options.serverId,
    logPos: options.logPos,
    checksum: options.checksum
  })
