import type * as net from "node:net"

/**
 * Writes the parts in order, corked into one writev when there are several (never joined
 * into a copy). False: the socket is over its high-water mark (wait for 'drain').
 */
export const writeAll = (socket: net.Socket, parts: ReadonlyArray<Uint8Array>): boolean => {
  if (parts.length === 1) return socket.write(parts[0]!)
  socket.cork()
  let room = true
  for (const p of parts) room = socket.write(p)
  socket.uncork()
  return room
}
