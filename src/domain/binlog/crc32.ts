/**
 * zlib CRC-32 (polynomial 0xEDB88320), as MariaDB puts in the 4-byte binlog event trailer
 * (Node 24's native zlib.crc32).
 */
import { crc32 as zlibCrc32 } from "node:zlib"

/** CRC-32 of `data` (unsigned 32-bit); `initial` continues a previous CRC. */
export const crc32 = (data: Uint8Array, initial = 0): number => zlibCrc32(data, initial) >>> 0

// A CRC is linear over GF(2): for messages of one length, crc(a) ^ crc(b) is the CRC
// register (no pre/post inversion) of a ^ b run from zero. Bytes changed in place then cost
// the register of the change carried over the bytes after it, which is a 32x32 bit-matrix
// per power of two of that count: O(log n), not a pass over the message.

/** A 32x32 matrix over GF(2): column i is the image of bit i. */
type Matrix = Uint32Array

const apply = (m: Matrix, v: number): number => {
  let out = 0
  for (let i = 0; v !== 0; i++, v >>>= 1) if ((v & 1) !== 0) out ^= m[i]!
  return out >>> 0
}

const square = (m: Matrix): Matrix => m.map((col) => apply(m, col))

/** ZEROS[k]: the register after 2^k zero bytes, as a matrix (built on first use). */
let ZEROS: ReadonlyArray<Matrix> | undefined

const zeroBytePowers = (): ReadonlyArray<Matrix> => {
  if (ZEROS !== undefined) return ZEROS
  // One zero bit: shift right, folding the polynomial in when a 1 drops out.
  let m: Matrix = new Uint32Array(32).map((_, i) => (i === 0 ? 0xedb88320 : 1 << (i - 1)))
  m = square(square(square(m))) // 8 bits: one byte
  const powers = [m]
  for (let k = 1; k < 32; k++) powers.push(square(powers[k - 1]!))
  return (ZEROS = powers)
}

/**
 * The CRC-32 of a message after bytes in it were changed, from its CRC before: `before` and
 * `after` are the old and new contents of the changed span, and `following` the number of
 * message bytes after that span. Equal to recomputing over the whole message.
 */
export const crc32Patched = (crc: number, before: Uint8Array, after: Uint8Array, following: number): number => {
  const delta = new Uint8Array(before.length)
  for (let i = 0; i < delta.length; i++) delta[i] = before[i]! ^ after[i]!
  // The register of the change from zero (zlib's inversions undone).
  let register = ~zlibCrc32(delta, 0xffffffff) >>> 0
  const powers = zeroBytePowers()
  for (let k = 0, n = following; n > 0; k++, n = Math.floor(n / 2)) {
    if (n % 2 === 1) register = apply(powers[k]!, register)
  }
  return (crc ^ register) >>> 0
}
