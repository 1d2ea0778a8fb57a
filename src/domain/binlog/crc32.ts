/**
 * zlib CRC-32 (polynomial 0xEDB88320), as MariaDB puts in the 4-byte binlog
 * event trailer. Node 24's zlib.crc32 is native; the table version is the
 * fallback for runtimes without it (the values are identical).
 */
import * as zlib from "node:zlib"

const TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** Table-driven CRC-32; exported so tests can compare it with the native one. */
export const crc32Table = (data: Uint8Array, initial = 0): number => {
  let crc = (initial ^ 0xffffffff) >>> 0
  for (let i = 0; i < data.length; i++) crc = TABLE[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

const native: ((data: Uint8Array, value?: number) => number) | undefined =
  typeof (zlib as { crc32?: unknown }).crc32 === "function" ? zlib.crc32 : undefined

/** CRC-32 of `data` (unsigned 32-bit); `initial` continues a previous CRC. */
export const crc32 = (data: Uint8Array, initial = 0): number =>
  native !== undefined ? native(data, initial) >>> 0 : crc32Table(data, initial)
