/**
 * zlib CRC-32 (polynomial 0xEDB88320), as MariaDB puts in the 4-byte binlog event trailer
 * (Node 24's native zlib.crc32).
 */
import { crc32 as zlibCrc32 } from "node:zlib"

/** CRC-32 of `data` (unsigned 32-bit); `initial` continues a previous CRC. */
export const crc32 = (data: Uint8Array, initial = 0): number => zlibCrc32(data, initial) >>> 0
