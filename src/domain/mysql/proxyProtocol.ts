/**
 * The PROXY protocol (haproxy's proxy-protocol.txt), versions 1 (text) and 2 (binary),
 * as far as this project needs it: TCP over IPv4 and IPv6, plus the "UNKNOWN" / LOCAL
 * forms on parse. Pure: building returns bytes, parsing is incremental over the first
 * bytes of a connection (call it again with more bytes while it answers `NeedMore`).
 * docs/mariadb.md, "PROXY protocol": MariaDB accepts either version from proxy_protocol_networks.
 */
import { Data, Result } from "effect"
import { isIPv6 } from "node:net"

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

export type ProxyVersion = 1 | 2

export interface Endpoint {
  readonly address: string
  readonly port: number
}

/** A parsed header: the connection's original endpoints, or none (UNKNOWN / LOCAL). */
export type ProxyHeader =
  | {
    readonly _tag: "Proxied"
    readonly version: ProxyVersion
    readonly family: "TCP4" | "TCP6"
    readonly source: Endpoint
    readonly destination: Endpoint
  }
  | {
    /** v1 "PROXY UNKNOWN", v2 LOCAL command or an unsupported family: no address. */
    readonly _tag: "Unknown"
    readonly version: ProxyVersion
  }

export type ParseOutcome =
  | { readonly _tag: "NeedMore" }
  | { readonly _tag: "Done"; readonly header: ProxyHeader; readonly consumed: number }

export class ProxyHeaderError extends Data.TaggedError("ProxyHeaderError")<{
  readonly reason: string
}> {
  override get message() {
    return `malformed PROXY header: ${this.reason}`
  }
}

/** v1 headers are at most 107 bytes including CRLF. */
export const V1_MAX_LENGTH = 107
export const V2_SIGNATURE = Uint8Array.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
/** Upper bound accepted for a v2 header's address+TLV block (TLVs are skipped). */
export const V2_MAX_BLOCK = 2048
const V1_PREFIX = Uint8Array.from([0x50, 0x52, 0x4f, 0x58, 0x59, 0x20]) // "PROXY "

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/** Dotted quad, strictly: four decimal numbers 0..255 without leading zeros. */
export const isStrictIPv4 = (s: string): boolean => {
  const parts = s.split(".")
  if (parts.length !== 4) return false
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return false
  }
  return true
}

/** "::ffff:a.b.c.d" -> "a.b.c.d"; anything else unchanged. */
export const unmapIPv4 = (address: string): string => {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  return m !== null && isStrictIPv4(m[1]!) ? m[1]! : address
}

const ipv4Bytes = (s: string): Uint8Array => Uint8Array.from(s.split(".").map(Number))

/** 16 bytes of an IPv6 address (with "::" and an optional dotted-quad tail); undefined if invalid. */
export const ipv6Bytes = (s: string): Uint8Array | undefined => {
  if (!isIPv6(s) || s.includes("%")) return undefined
  let head = s
  const tail: Array<number> = []
  const lastColon = s.lastIndexOf(":")
  const last = s.slice(lastColon + 1)
  if (last.includes(".")) {
    if (!isStrictIPv4(last)) return undefined
    const b = ipv4Bytes(last)
    tail.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!)
    head = s.slice(0, lastColon + 1)
    if (head.endsWith(":") && !head.endsWith("::")) head = head.slice(0, -1)
  }
  const groups = (part: string): Array<number> => (part === "" ? [] : part.split(":").map((g) => parseInt(g, 16)))
  let words: Array<number>
  const dbl = head.indexOf("::")
  if (dbl >= 0) {
    const left = groups(head.slice(0, dbl))
    const right = [...groups(head.slice(dbl + 2)), ...tail]
    const fill = 8 - left.length - right.length
    if (fill < 0) return undefined
    words = [...left, ...new Array<number>(fill).fill(0), ...right]
  } else {
    words = [...groups(head), ...tail]
  }
  if (words.length !== 8 || words.some((w) => !Number.isInteger(w) || w < 0 || w > 0xffff)) return undefined
  const out = new Uint8Array(16)
  words.forEach((w, i) => {
    out[2 * i] = w >>> 8
    out[2 * i + 1] = w & 0xff
  })
  return out
}

/** RFC 5952 text of 16 bytes (longest run of >= 2 zero groups compressed). */
export const formatIPv6 = (b: Uint8Array): string => {
  const words: Array<number> = []
  for (let i = 0; i < 8; i++) words.push((b[2 * i]! << 8) | b[2 * i + 1]!)
  let bestStart = -1
  let bestLen = 0
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && words[j] === 0) j++
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i
      bestLen = j - i
    }
    i = j
  }
  const hex = (ws: Array<number>) => ws.map((w) => w.toString(16)).join(":")
  if (bestStart < 0) return hex(words)
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`
}

// ---------------------------------------------------------------------------
// Build
// ---------------------------------------------------------------------------

const validPort = (p: number): boolean => Number.isInteger(p) && p >= 0 && p <= 65535

/**
 * The family for a pair of endpoints: TCP4 when both are IPv4 (IPv4-mapped IPv6 counts as
 * IPv4), else TCP6 (an IPv4 side is mapped into ::ffff:0:0/96). Fails on anything else.
 */
export const normalizeEndpoints = (
  source: Endpoint,
  destination: Endpoint
): Result.Result<{ readonly family: "TCP4" | "TCP6"; readonly source: Endpoint; readonly destination: Endpoint }, ProxyHeaderError> => {
  if (!validPort(source.port) || !validPort(destination.port)) {
    return Result.fail(new ProxyHeaderError({ reason: `invalid port ${source.port} or ${destination.port}` }))
  }
  const s = unmapIPv4(source.address)
  const d = unmapIPv4(destination.address)
  const v4s = isStrictIPv4(s)
  const v4d = isStrictIPv4(d)
  if (v4s && v4d) return Result.succeed({ family: "TCP4", source: { ...source, address: s }, destination: { ...destination, address: d } })
  const as6 = (a: string, v4: boolean): string | undefined => {
    if (v4) return `::ffff:${a}`
    const b = ipv6Bytes(a)
    return b === undefined ? undefined : formatIPv6(b)
  }
  const s6 = as6(s, v4s)
  const d6 = as6(d, v4d)
  if (s6 === undefined || d6 === undefined) {
    return Result.fail(new ProxyHeaderError({ reason: `not an IP address: ${s6 === undefined ? s : d}` }))
  }
  return Result.succeed({ family: "TCP6", source: { ...source, address: s6 }, destination: { ...destination, address: d6 } })
}

/** "PROXY TCP4 src dst sport dport\r\n" (or TCP6). */
export const buildV1 = (source: Endpoint, destination: Endpoint): Result.Result<Uint8Array, ProxyHeaderError> =>
  Result.map(normalizeEndpoints(source, destination), (n) =>
    new TextEncoder().encode(
      `PROXY ${n.family} ${n.source.address} ${n.destination.address} ${n.source.port} ${n.destination.port}\r\n`
    ))

/** Binary v2 header, command PROXY, STREAM over INET or INET6, no TLVs. */
export const buildV2 = (source: Endpoint, destination: Endpoint): Result.Result<Uint8Array, ProxyHeaderError> =>
  Result.map(normalizeEndpoints(source, destination), (n) => {
    const v4 = n.family === "TCP4"
    const alen = v4 ? 4 : 16
    const blockLen = 2 * alen + 4
    const out = new Uint8Array(16 + blockLen)
    out.set(V2_SIGNATURE, 0)
    out[12] = 0x21 // version 2, PROXY
    out[13] = v4 ? 0x11 : 0x21 // INET/INET6, STREAM
    out[14] = blockLen >>> 8
    out[15] = blockLen & 0xff
    const bytes = (a: string) => (v4 ? ipv4Bytes(a) : ipv6Bytes(a)!)
    out.set(bytes(n.source.address), 16)
    out.set(bytes(n.destination.address), 16 + alen)
    const p = 16 + 2 * alen
    out[p] = n.source.port >>> 8
    out[p + 1] = n.source.port & 0xff
    out[p + 2] = n.destination.port >>> 8
    out[p + 3] = n.destination.port & 0xff
    return out
  })

export const build = (version: ProxyVersion, source: Endpoint, destination: Endpoint): Result.Result<Uint8Array, ProxyHeaderError> =>
  version === 1 ? buildV1(source, destination) : buildV2(source, destination)

// ---------------------------------------------------------------------------
// Parse
// ---------------------------------------------------------------------------

const needMore: ParseOutcome = { _tag: "NeedMore" }
const fail = (reason: string) => Result.fail(new ProxyHeaderError({ reason }))

/** True while `bytes` is a prefix of `sig` or starts with all of it. */
const prefixMatches = (bytes: Uint8Array, sig: Uint8Array): boolean => {
  const n = Math.min(bytes.length, sig.length)
  for (let i = 0; i < n; i++) if (bytes[i] !== sig[i]) return false
  return true
}

const parsePortText = (s: string): number | undefined =>
  /^(0|[1-9][0-9]{0,4})$/.test(s) && Number(s) <= 65535 ? Number(s) : undefined

const parseV1 = (bytes: Uint8Array): Result.Result<ParseOutcome, ProxyHeaderError> => {
  const limit = Math.min(bytes.length, V1_MAX_LENGTH)
  let end = -1
  for (let i = 0; i < limit; i++) {
    const b = bytes[i]!
    if (b === 0x0d) {
      if (i + 1 >= bytes.length) return Result.succeed(needMore)
      if (bytes[i + 1] !== 0x0a) return fail("CR not followed by LF")
      end = i
      break
    }
    if (b < 0x20 || b > 0x7e) return fail(`byte ${b} in a v1 header`)
  }
  if (end < 0) {
    return bytes.length >= V1_MAX_LENGTH ? fail(`no CRLF within ${V1_MAX_LENGTH} bytes`) : Result.succeed(needMore)
  }
  const line = new TextDecoder().decode(bytes.subarray(0, end))
  const consumed = end + 2
  const parts = line.split(" ")
  if (parts[1] === "UNKNOWN") return Result.succeed({ _tag: "Done", header: { _tag: "Unknown", version: 1 }, consumed })
  if (parts.length !== 6) return fail(`expected 6 fields, got ${parts.length}`)
  const [, family, src, dst, sport, dport] = parts as [string, string, string, string, string, string]
  if (family !== "TCP4" && family !== "TCP6") return fail(`unknown family ${JSON.stringify(family.slice(0, 16))}`)
  const ok = family === "TCP4" ? (a: string) => isStrictIPv4(a) : (a: string) => ipv6Bytes(a) !== undefined
  if (!ok(src) || !ok(dst)) return fail(`invalid ${family} address`)
  const sp = parsePortText(sport)
  const dp = parsePortText(dport)
  if (sp === undefined || dp === undefined) return fail("invalid port")
  return Result.succeed({
    _tag: "Done",
    header: { _tag: "Proxied", version: 1, family, source: { address: src, port: sp }, destination: { address: dst, port: dp } },
    consumed
  })
}

const parseV2 = (bytes: Uint8Array): Result.Result<ParseOutcome, ProxyHeaderError> => {
  if (bytes.length < 16) return Result.succeed(needMore)
  const verCmd = bytes[12]!
  if (verCmd >>> 4 !== 2) return fail(`version ${verCmd >>> 4}`)
  const cmd = verCmd & 0x0f
  if (cmd > 1) return fail(`command ${cmd}`)
  const fam = bytes[13]!
  const len = (bytes[14]! << 8) | bytes[15]!
  if (len > V2_MAX_BLOCK) return fail(`address block of ${len} bytes`)
  if (bytes.length < 16 + len) return Result.succeed(needMore)
  const consumed = 16 + len
  const unknown: ParseOutcome = { _tag: "Done", header: { _tag: "Unknown", version: 2 }, consumed }
  if (cmd === 0) return Result.succeed(unknown) // LOCAL
  const block = bytes.subarray(16, 16 + len)
  const port = (o: number) => (block[o]! << 8) | block[o + 1]!
  switch (fam) {
    case 0x11: {
      if (len < 12) return fail(`TCP4 address block of ${len} bytes`)
      const ip = (o: number) => Array.from(block.subarray(o, o + 4)).join(".")
      return Result.succeed({
        _tag: "Done",
        header: { _tag: "Proxied", version: 2, family: "TCP4", source: { address: ip(0), port: port(8) }, destination: { address: ip(4), port: port(10) } },
        consumed
      })
    }
    case 0x21: {
      if (len < 36) return fail(`TCP6 address block of ${len} bytes`)
      const ip = (o: number) => formatIPv6(block.subarray(o, o + 16))
      return Result.succeed({
        _tag: "Done",
        header: { _tag: "Proxied", version: 2, family: "TCP6", source: { address: ip(0), port: port(32) }, destination: { address: ip(16), port: port(34) } },
        consumed
      })
    }
    case 0x00:
      return Result.succeed(unknown)
    default:
      // UDP / UNIX families: the spec says receivers may accept them and ignore the address.
      return (fam & 0x0f) <= 2 && fam >>> 4 <= 3 ? Result.succeed(unknown) : fail(`family byte ${fam}`)
  }
}

/**
 * Parses a header (either version) at the start of `bytes`. `NeedMore` means the bytes so
 * far are a valid prefix; `Done` says how many bytes the header took (the rest belongs to
 * the relayed stream). Anything that cannot be a header fails.
 */
export const parse = (bytes: Uint8Array): Result.Result<ParseOutcome, ProxyHeaderError> => {
  if (bytes.length === 0) return Result.succeed(needMore)
  if (bytes[0] === V2_SIGNATURE[0]) {
    if (!prefixMatches(bytes, V2_SIGNATURE)) return fail("bad v2 signature")
    return bytes.length < V2_SIGNATURE.length ? Result.succeed(needMore) : parseV2(bytes)
  }
  if (!prefixMatches(bytes, V1_PREFIX)) return fail("neither a v1 nor a v2 signature")
  return bytes.length < V1_PREFIX.length ? Result.succeed(needMore) : parseV1(bytes)
}
