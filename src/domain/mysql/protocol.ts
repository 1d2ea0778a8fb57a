/**
 * The MySQL/MariaDB protocol messages the agent reads or writes, as payloads
 * (framing is in packet.ts). Pure: parsers return `Result<_, PacketError>`
 * and never throw on received bytes; builders return the payload bytes.
 *
 * Only the classic protocol the agent needs: protocol-41 handshake,
 * mysql_native_password, text result sets with EOF packets (no
 * DEPRECATE_EOF, no session tracking, no SSL, no compression), and the
 * replication commands and stream envelope (docs/mariadb.md).
 */
import { createHash, timingSafeEqual } from "node:crypto"
import { Result } from "effect"
import { decode, PacketError, PacketReader, PacketWriter } from "./packet.js"

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/** Capability flags (lower 32 bits; numbers, compare with `hasCapability`). */
export const Capability = {
  /** Also CLIENT_MYSQL: a MariaDB server leaves it unset to say the extended capabilities follow. */
  LongPassword: 0x1,
  FoundRows: 0x2,
  LongFlag: 0x4,
  ConnectWithDb: 0x8,
  NoSchema: 0x10,
  Compress: 0x20,
  Odbc: 0x40,
  LocalFiles: 0x80,
  IgnoreSpace: 0x100,
  Protocol41: 0x200,
  Interactive: 0x400,
  Ssl: 0x800,
  IgnoreSigpipe: 0x1000,
  Transactions: 0x2000,
  Reserved: 0x4000,
  SecureConnection: 0x8000,
  MultiStatements: 0x10000,
  MultiResults: 0x20000,
  PsMultiResults: 0x40000,
  PluginAuth: 0x80000,
  ConnectAttrs: 0x100000,
  PluginAuthLenencClientData: 0x200000,
  CanHandleExpiredPasswords: 0x400000,
  SessionTrack: 0x800000,
  DeprecateEof: 0x1000000
} as const

export const hasCapability = (capabilities: number, flag: number): boolean => (capabilities & flag) !== 0

/** What a binlog server offers: enough for a 10.11 replica and the mariadb CLI (docs/mariadb.md). */
export const SERVER_CAPABILITIES =
  Capability.Protocol41 |
  Capability.SecureConnection |
  Capability.PluginAuth |
  Capability.PluginAuthLenencClientData |
  Capability.ConnectAttrs |
  Capability.Transactions |
  Capability.MultiResults

/** What the agent's client asks for (intersected with the server's). */
export const CLIENT_CAPABILITIES =
  Capability.LongPassword |
  Capability.LongFlag |
  Capability.Protocol41 |
  Capability.SecureConnection |
  Capability.PluginAuth |
  Capability.PluginAuthLenencClientData |
  Capability.Transactions |
  Capability.MultiResults

export const ServerStatus = {
  InTrans: 0x1,
  Autocommit: 0x2,
  MoreResultsExist: 0x8
} as const

/** Command bytes (first payload byte of a client command). */
export const Command = {
  Quit: 0x01,
  InitDb: 0x02,
  Query: 0x03,
  Ping: 0x0e,
  BinlogDump: 0x12,
  RegisterSlave: 0x15
} as const

/** COM_BINLOG_DUMP flags. */
export const BinlogDumpFlag = {
  /** Send EOF at the end of the binlog instead of waiting. */
  NonBlock: 0x01,
  SendAnnotateRows: 0x02
} as const

export const NATIVE_PASSWORD_PLUGIN = "mysql_native_password"
/** utf8mb4_general_ci */
export const CHARSET_UTF8MB4 = 45
export const SEMI_SYNC_MAGIC = 0xef

const OK_HEADER = 0x00
const EOF_HEADER = 0xfe
const ERR_HEADER = 0xff
const AUTH_SWITCH_HEADER = 0xfe

const fail = (reason: PacketError["reason"], message: string): never => {
  throw new PacketError({ reason, message })
}

/** Inside `decode`: rethrows a nested parser's failure so `decode` returns it. */
const unwrap = <A>(r: Result.Result<A, PacketError>): A => {
  if (Result.isFailure(r)) throw r.failure
  return r.success
}

// ---------------------------------------------------------------------------
// OK / ERR / EOF
// ---------------------------------------------------------------------------

export interface OkPacket {
  readonly affectedRows: number
  readonly lastInsertId: number
  readonly statusFlags: number
  readonly warnings: number
  readonly info: string
}

export interface ErrPacket {
  readonly code: number
  /** "HY000" when the server sent none (errors before the handshake completes). */
  readonly sqlState: string
  readonly message: string
}

export interface EofPacket {
  readonly warnings: number
  readonly statusFlags: number
}

export const buildOk = (ok: Partial<OkPacket> = {}): Uint8Array =>
  new PacketWriter()
    .u8(OK_HEADER)
    .lenencInt(ok.affectedRows ?? 0)
    .lenencInt(ok.lastInsertId ?? 0)
    .u16(ok.statusFlags ?? ServerStatus.Autocommit)
    .u16(ok.warnings ?? 0)
    .string(ok.info ?? "")
    .finish()

export const parseOk = (payload: Uint8Array): Result.Result<OkPacket, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, OK_HEADER, "OK")
    return {
      affectedRows: r.lenencInt(),
      lastInsertId: r.lenencInt(),
      statusFlags: r.u16(),
      warnings: r.u16(),
      info: r.restString()
    }
  })

export const buildErr = (e: { readonly code: number; readonly sqlState?: string; readonly message: string }): Uint8Array => {
  const state = e.sqlState ?? "HY000"
  if (state.length !== 5) throw new PacketError({ reason: "out-of-range", message: `SQL state must have 5 characters: ${state}` })
  return new PacketWriter().u8(ERR_HEADER).u16(e.code).string("#").string(state).string(e.message).finish()
}

export const parseErr = (payload: Uint8Array): Result.Result<ErrPacket, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, ERR_HEADER, "ERR")
    const code = r.u16()
    const sqlState = r.peek() === 0x23 /* '#' */ ? (r.skip(1), r.stringN(5)) : "HY000"
    return { code, sqlState, message: r.restString() }
  })

export const buildEof = (e: Partial<EofPacket> = {}): Uint8Array =>
  new PacketWriter().u8(EOF_HEADER).u16(e.warnings ?? 0).u16(e.statusFlags ?? ServerStatus.Autocommit).finish()

export const parseEof = (payload: Uint8Array): Result.Result<EofPacket, PacketError> =>
  decode(payload, (r) => {
    if (!isEof(payload)) fail("unexpected", "not an EOF packet")
    r.skip(1)
    return { warnings: r.u16(), statusFlags: r.u16() }
  })

/** 0xFE with fewer than 9 bytes: a row can start with 0xFE only as an 8-byte length, so longer packets are data. */
const isEof = (p: Uint8Array): boolean => p[0] === EOF_HEADER && p.length < 9

export type ResponseKind = "ok" | "err" | "eof" | "other"

/**
 * Kind of a server response. OK is only meaningful where a command's first
 * response is expected (a text row may start with 0x00 too); ERR and EOF are
 * unambiguous anywhere in a classic (non DEPRECATE_EOF) exchange.
 */
export const classifyResponse = (payload: Uint8Array): ResponseKind =>
  payload[0] === ERR_HEADER ? "err" :
  isEof(payload) ? "eof" :
  payload[0] === OK_HEADER && payload.length >= 7 ? "ok" :
  "other"

const expectHeader = (r: PacketReader, header: number, what: string): void => {
  const b = r.u8()
  if (b !== header) fail("unexpected", `${what} packet must start with 0x${header.toString(16)}, got 0x${b.toString(16)}`)
}

// ---------------------------------------------------------------------------
// Handshake v10 (server -> client)
// ---------------------------------------------------------------------------

export interface HandshakeV10 {
  readonly protocolVersion: number
  readonly serverVersion: string
  readonly connectionId: number
  /** The scramble (20 bytes for mysql_native_password), without the trailing NUL. */
  readonly authPluginData: Uint8Array
  readonly capabilities: number
  readonly characterSet: number
  readonly statusFlags: number
  /** MariaDB's extended capabilities (meaningful when `LongPassword`/CLIENT_MYSQL is unset). */
  readonly mariadbCapabilities: number
  readonly authPluginName: string
}

export const buildHandshakeV10 = (h: {
  readonly serverVersion: string
  readonly connectionId: number
  readonly authPluginData: Uint8Array
  readonly capabilities?: number
  readonly characterSet?: number
  readonly statusFlags?: number
  readonly mariadbCapabilities?: number
  readonly authPluginName?: string
}): Uint8Array => {
  const caps = (h.capabilities ?? SERVER_CAPABILITIES) >>> 0
  const data = h.authPluginData
  if (data.length < 8 || data.includes(0)) {
    throw new PacketError({ reason: "out-of-range", message: "auth plugin data needs at least 8 non-NUL bytes" })
  }
  const w = new PacketWriter(128)
    .u8(10)
    .nulString(h.serverVersion)
    .u32(h.connectionId >>> 0)
    .bytes(data.subarray(0, 8))
    .u8(0)
    .u16(caps & 0xffff)
    .u8(h.characterSet ?? CHARSET_UTF8MB4)
    .u16(h.statusFlags ?? ServerStatus.Autocommit)
    .u16(caps >>> 16)
    .u8(hasCapability(caps, Capability.PluginAuth) ? data.length + 1 : 0)
    .zeros(6)
    .u32(hasCapability(caps, Capability.LongPassword) ? 0 : (h.mariadbCapabilities ?? 0) >>> 0)
  if (hasCapability(caps, Capability.SecureConnection)) {
    // part 2 is at least 13 bytes including its NUL
    const part2 = data.subarray(8)
    w.bytes(part2).zeros(Math.max(13, part2.length + 1) - part2.length)
  }
  if (hasCapability(caps, Capability.PluginAuth)) w.nulString(h.authPluginName ?? NATIVE_PASSWORD_PLUGIN)
  return w.finish()
}

export const parseHandshakeV10 = (payload: Uint8Array): Result.Result<HandshakeV10, PacketError> =>
  decode(payload, (r) => {
    const protocolVersion = r.u8()
    if (protocolVersion === ERR_HEADER) {
      const e = parseErr(payload)
      fail("unexpected", Result.isSuccess(e) ? `server refused the connection: ${e.success.code} ${e.success.message}` : "server sent ERR")
    }
    if (protocolVersion !== 10) fail("unsupported", `protocol version ${protocolVersion}, expected 10`)
    const serverVersion = r.nulString()
    const connectionId = r.u32()
    const part1 = r.bytesN(8)
    r.skip(1)
    let capabilities = r.u16()
    let characterSet = 0
    let statusFlags = 0
    let mariadbCapabilities = 0
    let authDataLength = 0
    let part2: Uint8Array = new Uint8Array(0)
    let authPluginName = ""
    if (!r.atEnd()) {
      characterSet = r.u8()
      statusFlags = r.u16()
      capabilities = (capabilities | (r.u16() << 16)) >>> 0
      authDataLength = r.u8()
      r.skip(6)
      mariadbCapabilities = r.u32()
      if (hasCapability(capabilities, Capability.SecureConnection)) {
        const raw = r.bytesN(Math.max(13, authDataLength - 8))
        part2 = raw.subarray(0, authDataLength > 8 ? Math.min(raw.length, authDataLength - 9) : 12)
      }
      if (hasCapability(capabilities, Capability.PluginAuth)) authPluginName = r.nulStringOrRest()
    }
    const authPluginData = new Uint8Array(8 + part2.length)
    authPluginData.set(part1)
    authPluginData.set(part2, 8)
    return {
      protocolVersion,
      serverVersion,
      connectionId,
      authPluginData,
      capabilities,
      characterSet,
      statusFlags,
      mariadbCapabilities,
      authPluginName
    }
  })

// ---------------------------------------------------------------------------
// HandshakeResponse41 (client -> server)
// ---------------------------------------------------------------------------

export interface HandshakeResponse41 {
  readonly capabilities: number
  readonly maxPacketSize: number
  readonly characterSet: number
  readonly mariadbCapabilities: number
  readonly username: string
  readonly authResponse: Uint8Array
  /** Present when `ConnectWithDb` is set. */
  readonly database: string | undefined
  /** Present when `PluginAuth` is set. */
  readonly authPluginName: string | undefined
  /** Connection attributes in order (when `ConnectAttrs` is set). */
  readonly attributes: ReadonlyArray<readonly [string, string]>
}

export const buildHandshakeResponse41 = (h: {
  readonly capabilities?: number
  readonly maxPacketSize?: number
  readonly characterSet?: number
  readonly mariadbCapabilities?: number
  readonly username: string
  readonly authResponse: Uint8Array
  readonly database?: string | undefined
  readonly authPluginName?: string | undefined
  readonly attributes?: ReadonlyArray<readonly [string, string]>
}): Uint8Array => {
  let caps = (h.capabilities ?? CLIENT_CAPABILITIES) >>> 0
  if (h.database !== undefined) caps |= Capability.ConnectWithDb
  if (h.attributes !== undefined && h.attributes.length > 0) caps |= Capability.ConnectAttrs
  caps >>>= 0
  const w = new PacketWriter(128)
    .u32(caps)
    .u32(h.maxPacketSize ?? 0x40000000)
    .u8(h.characterSet ?? CHARSET_UTF8MB4)
    .zeros(19)
    .u32(hasCapability(caps, Capability.LongPassword) ? 0 : (h.mariadbCapabilities ?? 0) >>> 0)
    .nulString(h.username)
  if (hasCapability(caps, Capability.PluginAuthLenencClientData)) w.lenencBytes(h.authResponse)
  else if (hasCapability(caps, Capability.SecureConnection)) {
    if (h.authResponse.length > 255) throw new PacketError({ reason: "out-of-range", message: "auth response over 255 bytes" })
    w.u8(h.authResponse.length).bytes(h.authResponse)
  } else w.nulBytes(h.authResponse)
  if (hasCapability(caps, Capability.ConnectWithDb)) w.nulString(h.database ?? "")
  if (hasCapability(caps, Capability.PluginAuth)) w.nulString(h.authPluginName ?? NATIVE_PASSWORD_PLUGIN)
  if (hasCapability(caps, Capability.ConnectAttrs)) {
    const attrs = new PacketWriter()
    for (const [k, v] of h.attributes ?? []) attrs.lenencString(k).lenencString(v)
    w.lenencBytes(attrs.finish())
  }
  return w.finish()
}

export const parseHandshakeResponse41 = (payload: Uint8Array): Result.Result<HandshakeResponse41, PacketError> =>
  decode(payload, (r) => {
    const capabilities = r.u32()
    if (!hasCapability(capabilities, Capability.Protocol41)) fail("unsupported", "client does not speak protocol 4.1")
    if (hasCapability(capabilities, Capability.Ssl) && payload.length === 32) fail("unsupported", "client asked for SSL")
    const maxPacketSize = r.u32()
    const characterSet = r.u8()
    r.skip(19)
    const mariadbCapabilities = r.u32()
    const username = r.nulString()
    const authResponse = hasCapability(capabilities, Capability.PluginAuthLenencClientData) ? r.lenencBytes() :
      hasCapability(capabilities, Capability.SecureConnection) ? r.bytesN(r.u8()) :
      r.nulBytes()
    // Clients may stop early; missing optional fields are absent rather than errors.
    const database = hasCapability(capabilities, Capability.ConnectWithDb) && !r.atEnd() ? r.nulStringOrRest() : undefined
    const authPluginName = hasCapability(capabilities, Capability.PluginAuth) && !r.atEnd() ? r.nulStringOrRest() : undefined
    const attributes: Array<readonly [string, string]> = []
    if (hasCapability(capabilities, Capability.ConnectAttrs) && !r.atEnd()) {
      const a = new PacketReader(r.lenencBytes())
      while (!a.atEnd()) attributes.push([a.lenencString(), a.lenencString()])
    }
    return {
      capabilities,
      maxPacketSize,
      characterSet,
      mariadbCapabilities,
      username,
      authResponse: authResponse.slice(),
      database,
      authPluginName,
      attributes
    }
  })

// ---------------------------------------------------------------------------
// mysql_native_password
// ---------------------------------------------------------------------------

const sha1 = (...parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const h = createHash("sha1")
  for (const p of parts) h.update(p)
  return new Uint8Array(h.digest())
}

const passwordBytes = (password: string | Uint8Array): Uint8Array =>
  typeof password === "string" ? new TextEncoder().encode(password) : password

/** SHA1(SHA1(password)): what the server stores (mysql.user's `*HEX` without the star). */
export const nativePasswordHash = (password: string | Uint8Array): Uint8Array => sha1(sha1(passwordBytes(password)))

/** The client's auth response: SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw))); empty for an empty password. */
export const scramble = (password: string | Uint8Array, salt: Uint8Array): Uint8Array => {
  const pw = passwordBytes(password)
  if (pw.length === 0) return new Uint8Array(0)
  const stage1 = sha1(pw)
  const mask = sha1(salt, sha1(stage1))
  return stage1.map((b, i) => b ^ mask[i]!)
}

/**
 * Server-side check: SHA1(response XOR SHA1(salt + stored)) == stored, where
 * stored = SHA1(SHA1(pw)). An empty stored hash means "no password": only an
 * empty response passes.
 */
export const verifyNativePassword = (response: Uint8Array, salt: Uint8Array, sha1sha1pw: Uint8Array): boolean => {
  if (sha1sha1pw.length === 0) return response.length === 0
  if (response.length !== 20 || sha1sha1pw.length !== 20) return false
  const mask = sha1(salt, sha1sha1pw)
  const stage1 = response.map((b, i) => b ^ mask[i]!)
  return timingSafeEqual(sha1(stage1), sha1sha1pw)
}

// ---------------------------------------------------------------------------
// Auth switch request (server -> client, during login)
// ---------------------------------------------------------------------------

export interface AuthSwitchRequest {
  readonly pluginName: string
  /** Plugin data without the trailing NUL the server appends. */
  readonly pluginData: Uint8Array
}

export const buildAuthSwitchRequest = (a: AuthSwitchRequest): Uint8Array =>
  new PacketWriter().u8(AUTH_SWITCH_HEADER).nulString(a.pluginName).bytes(a.pluginData).u8(0).finish()

export const parseAuthSwitchRequest = (payload: Uint8Array): Result.Result<AuthSwitchRequest, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, AUTH_SWITCH_HEADER, "auth switch request")
    const pluginName = r.nulString()
    const rest = r.rest()
    return { pluginName, pluginData: (rest[rest.length - 1] === 0 ? rest.subarray(0, -1) : rest).slice() }
  })

// ---------------------------------------------------------------------------
// Text result sets
// ---------------------------------------------------------------------------

export interface ColumnDefinition {
  readonly catalog: string
  readonly schema: string
  readonly table: string
  readonly orgTable: string
  readonly name: string
  readonly orgName: string
  readonly characterSet: number
  readonly columnLength: number
  readonly type: number
  readonly flags: number
  readonly decimals: number
}

/** MYSQL_TYPE_VAR_STRING */
export const COLUMN_TYPE_VAR_STRING = 0xfd

export const buildColumnDefinition = (c: Partial<ColumnDefinition> & { readonly name: string }): Uint8Array =>
  new PacketWriter()
    .lenencString(c.catalog ?? "def")
    .lenencString(c.schema ?? "")
    .lenencString(c.table ?? "")
    .lenencString(c.orgTable ?? "")
    .lenencString(c.name)
    .lenencString(c.orgName ?? "")
    .lenencInt(0x0c)
    .u16(c.characterSet ?? CHARSET_UTF8MB4)
    .u32(c.columnLength ?? 1024)
    .u8(c.type ?? COLUMN_TYPE_VAR_STRING)
    .u16(c.flags ?? 0)
    .u8(c.decimals ?? 0)
    .zeros(2)
    .finish()

export const parseColumnDefinition = (payload: Uint8Array): Result.Result<ColumnDefinition, PacketError> =>
  decode(payload, readColumnDefinition)

const readColumnDefinition = (r: PacketReader): ColumnDefinition => {
  const catalog = r.lenencString()
  const schema = r.lenencString()
  const table = r.lenencString()
  const orgTable = r.lenencString()
  const name = r.lenencString()
  const orgName = r.lenencString()
  const fixed = r.lenencInt()
  if (fixed < 0x0a) fail("malformed", `column definition fixed part of ${fixed} bytes`)
  const characterSet = r.u16()
  const columnLength = r.u32()
  const type = r.u8()
  const flags = r.u16()
  const decimals = r.u8()
  return { catalog, schema, table, orgTable, name, orgName, characterSet, columnLength, type, flags, decimals }
}

export type Row = ReadonlyArray<string | null>

export interface TextResultSet {
  readonly columns: ReadonlyArray<ColumnDefinition>
  readonly rows: ReadonlyArray<Row>
  /** Status flags of the final EOF (MoreResultsExist tells whether another result follows). */
  readonly statusFlags: number
  readonly warnings: number
}

export const buildTextRow = (row: Row): Uint8Array => {
  const w = new PacketWriter()
  for (const v of row) v === null ? w.lenencNull() : w.lenencString(v)
  return w.finish()
}

/**
 * The payloads of a text result set with string columns: column count,
 * definitions, EOF, rows, EOF. Frame them with consecutive sequence ids.
 */
export const buildTextResultSet = (
  columns: ReadonlyArray<string>,
  rows: ReadonlyArray<Row>,
  options: { readonly statusFlags?: number } = {}
): ReadonlyArray<Uint8Array> => {
  for (const row of rows) {
    if (row.length !== columns.length) {
      throw new PacketError({ reason: "out-of-range", message: `row has ${row.length} values for ${columns.length} columns` })
    }
  }
  const eof = buildEof(options.statusFlags === undefined ? {} : { statusFlags: options.statusFlags })
  return [
    new PacketWriter().lenencInt(columns.length).finish(),
    ...columns.map((name) => buildColumnDefinition({ name })),
    eof,
    ...rows.map(buildTextRow),
    eof
  ]
}

/** What a server answers to COM_QUERY (the first result only). */
export type QueryResponse =
  | { readonly _tag: "Ok"; readonly ok: OkPacket }
  | { readonly _tag: "Err"; readonly err: ErrPacket }
  | { readonly _tag: "ResultSet"; readonly resultSet: TextResultSet }

/**
 * Client side of a COM_QUERY response, one payload at a time: `push` returns
 * undefined while more payloads are needed, then the response. An ERR in the
 * middle of the rows ends it as an Err.
 */
export class QueryResponseDecoder {
  private state: "first" | "columns" | "columnsEof" | "rows" | "done" = "first"
  private columnCount = 0
  private readonly columns: Array<ColumnDefinition> = []
  private readonly rows: Array<Row> = []

  get done(): boolean {
    return this.state === "done"
  }

  push(payload: Uint8Array): Result.Result<QueryResponse | undefined, PacketError> {
    return decode(payload, (r) => this.step(payload, r))
  }

  private step(payload: Uint8Array, r: PacketReader): QueryResponse | undefined {
    const kind = classifyResponse(payload)
    if (this.state === "done") fail("unexpected", "payload after the end of the response")
    if (kind === "err") return this.finish({ _tag: "Err", err: unwrap(parseErr(payload)) })
    switch (this.state) {
      case "first": {
        if (kind === "ok") return this.finish({ _tag: "Ok", ok: unwrap(parseOk(payload)) })
        if (payload[0] === 0xfb) fail("unsupported", "LOCAL INFILE request")
        this.columnCount = r.lenencInt()
        if (this.columnCount === 0) fail("malformed", "result set with 0 columns")
        this.state = "columns"
        return undefined
      }
      case "columns": {
        this.columns.push(readColumnDefinition(r))
        if (this.columns.length === this.columnCount) this.state = "columnsEof"
        return undefined
      }
      case "columnsEof": {
        if (kind !== "eof") fail("unexpected", "expected EOF after column definitions (DEPRECATE_EOF is not supported)")
        this.state = "rows"
        return undefined
      }
      case "rows": {
        if (kind === "eof") {
          const eof = unwrap(parseEof(payload))
          return this.finish({
            _tag: "ResultSet",
            resultSet: { columns: this.columns, rows: this.rows, statusFlags: eof.statusFlags, warnings: eof.warnings }
          })
        }
        const row: Array<string | null> = []
        for (let i = 0; i < this.columnCount; i++) row.push(r.lenencStringOrNull())
        if (!r.atEnd()) fail("malformed", `row has ${r.remaining} bytes after ${this.columnCount} values`)
        this.rows.push(row)
        return undefined
      }
    }
  }

  private finish(response: QueryResponse): QueryResponse {
    this.state = "done"
    return response
  }
}

/** A whole COM_QUERY response from its payloads; fails if incomplete or followed by more. */
export const parseQueryResponse = (payloads: ReadonlyArray<Uint8Array>): Result.Result<QueryResponse, PacketError> => {
  const d = new QueryResponseDecoder()
  for (let i = 0; i < payloads.length; i++) {
    const r = d.push(payloads[i]!)
    if (Result.isFailure(r)) return Result.fail(r.failure)
    if (r.success !== undefined) {
      return i === payloads.length - 1
        ? Result.succeed(r.success)
        : Result.fail(new PacketError({ reason: "unexpected", message: "payloads after the end of the response" }))
    }
  }
  return Result.fail(new PacketError({ reason: "truncated", message: "the response is incomplete" }))
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

export const buildComQuery = (sql: string): Uint8Array => new PacketWriter().u8(Command.Query).string(sql).finish()

export const parseComQuery = (payload: Uint8Array): Result.Result<string, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, Command.Query, "COM_QUERY")
    return r.restString()
  })

export const buildComQuit = (): Uint8Array => Uint8Array.of(Command.Quit)

export interface RegisterSlave {
  readonly serverId: number
  readonly host: string
  readonly user: string
  readonly password: string
  readonly port: number
  readonly rank: number
  readonly masterId: number
}

const shortString = (w: PacketWriter, s: string, what: string): PacketWriter => {
  const b = new TextEncoder().encode(s)
  if (b.length > 255) throw new PacketError({ reason: "out-of-range", message: `${what} over 255 bytes` })
  return w.u8(b.length).bytes(b)
}

export const buildRegisterSlave = (c: RegisterSlave): Uint8Array => {
  const w = new PacketWriter().u8(Command.RegisterSlave).u32(c.serverId)
  shortString(w, c.host, "host")
  shortString(w, c.user, "user")
  shortString(w, c.password, "password")
  return w.u16(c.port).u32(c.rank).u32(c.masterId).finish()
}

export const parseRegisterSlave = (payload: Uint8Array): Result.Result<RegisterSlave, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, Command.RegisterSlave, "COM_REGISTER_SLAVE")
    return {
      serverId: r.u32(),
      host: r.stringN(r.u8()),
      user: r.stringN(r.u8()),
      password: r.stringN(r.u8()),
      port: r.u16(),
      rank: r.u32(),
      masterId: r.u32()
    }
  })

export interface BinlogDump {
  readonly position: number
  readonly flags: number
  readonly serverId: number
  /** Empty in GTID mode (the connect state says where to start). */
  readonly fileName: string
}

export const buildBinlogDump = (c: BinlogDump): Uint8Array =>
  new PacketWriter().u8(Command.BinlogDump).u32(c.position).u16(c.flags).u32(c.serverId).string(c.fileName).finish()

export const parseBinlogDump = (payload: Uint8Array): Result.Result<BinlogDump, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, Command.BinlogDump, "COM_BINLOG_DUMP")
    return { position: r.u32(), flags: r.u16(), serverId: r.u32(), fileName: r.restString() }
  })

// ---------------------------------------------------------------------------
// Semi-sync
// ---------------------------------------------------------------------------

export interface SemiSyncAck {
  /** End position of the acknowledged event in `fileName`. */
  readonly position: number
  readonly fileName: string
}

/** Sent as a new packet with sequence id 0. */
export const buildSemiSyncAck = (a: SemiSyncAck): Uint8Array =>
  new PacketWriter().u8(SEMI_SYNC_MAGIC).u64(a.position).string(a.fileName).finish()

export const parseSemiSyncAck = (payload: Uint8Array): Result.Result<SemiSyncAck, PacketError> =>
  decode(payload, (r) => {
    expectHeader(r, SEMI_SYNC_MAGIC, "semi-sync ACK")
    return { position: r.u64Number(), fileName: r.restString() }
  })

/** One packet of a binlog stream. */
export type BinlogStreamPacket =
  | { readonly _tag: "Event"; readonly needAck: boolean; readonly event: Uint8Array }
  | { readonly _tag: "Err"; readonly err: ErrPacket }
  /** End of the binlog with BinlogDumpFlag.NonBlock. */
  | { readonly _tag: "Eof" }

/**
 * `0x00 [0xEF needAck]? <event>`. The semi-sync header is there exactly when
 * the client set @rpl_semi_sync_slave and the master has semi-sync on; say
 * which with `semiSync`. `event` is a view into `payload`.
 */
export const parseBinlogStreamPacket = (
  payload: Uint8Array,
  options: { readonly semiSync: boolean }
): Result.Result<BinlogStreamPacket, PacketError> =>
  decode(payload, (r) => {
    if (payload[0] === ERR_HEADER) return { _tag: "Err", err: unwrap(parseErr(payload)) } as const
    if (isEof(payload)) return { _tag: "Eof" } as const
    expectHeader(r, OK_HEADER, "binlog event packet")
    let needAck = false
    if (options.semiSync) {
      const magic = r.u8()
      if (magic !== SEMI_SYNC_MAGIC) fail("malformed", `semi-sync magic 0x${magic.toString(16)}, expected 0xef`)
      needAck = r.u8() !== 0
    }
    if (r.atEnd()) fail("truncated", "binlog event packet without an event")
    return { _tag: "Event", needAck, event: r.rest() } as const
  })

export const buildBinlogEventPacket = (
  event: Uint8Array,
  options: { readonly semiSync?: boolean; readonly needAck?: boolean } = {}
): Uint8Array => {
  const header = options.semiSync ? 3 : 1
  const out = new Uint8Array(header + event.length)
  if (options.semiSync) {
    out[1] = SEMI_SYNC_MAGIC
    out[2] = options.needAck ? 1 : 0
  }
  out.set(event, header)
  return out
}
