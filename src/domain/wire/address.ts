import { isIP } from "node:net"
import { formatIPv6, ipv6Bytes, unmapIPv4 } from "../mysql/proxyProtocol.js"

/** "host:port" for a URL or an address string: an IPv6 address in brackets ("[::1]:7401"). */
export const joinHostPort = (host: string, port: number): string => (isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`)

/** A listen host that means every interface (no single source address to dial from or to compare). */
export const isWildcard = (host: string): boolean => host === "0.0.0.0" || host === "::" || host === ""

/** An IPv4 or IPv6 literal (what a socket reports as its peer's address). */
export const isIpAddress = (host: string): boolean => isIP(host) !== 0

/**
 * An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, 1 to 63
 * characters each, 253 in all. A last label of digits only is refused: such a name is a
 * mistyped IPv4 address (10.0.0.256), not a name.
 */
export const isHostName = (host: string): boolean => {
  if (host.length === 0 || host.length > 253) return false
  const labels = host.split(".")
  if (!labels.every((l) => /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(l))) return false
  return !/^[0-9]+$/.test(labels[labels.length - 1]!)
}

/** What a member's `host` may be: an IP address or a host name (resolved by HostAddresses). */
export const isHostSyntax = (host: string): boolean => isIpAddress(host) || isHostName(host)

/**
 * An address in the one spelling two sockets' reports of it share: IPv4-mapped IPv6 as
 * IPv4, IPv6 in its compressed lower-case form (RFC 5952, as Node reports it). Anything that
 * is not an IP address is returned unchanged.
 */
export const canonicalAddress = (address: string): string => {
  const unmapped = unmapIPv4(address)
  if (isIP(unmapped) !== 6) return unmapped
  const bytes = ipv6Bytes(unmapped)
  if (bytes === undefined) return unmapped.toLowerCase()
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return bytes.subarray(12).join(".")
  return formatIPv6(bytes)
}
