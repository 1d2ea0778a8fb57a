/** Turns every Uint8Array (LMDB and msgpack hand back Buffers) into text, for deep comparisons. */
export const bytesAsText = (x: unknown): unknown =>
  x instanceof Uint8Array ? Buffer.from(x).toString() :
  Array.isArray(x) ? x.map(bytesAsText) :
  x !== null && typeof x === "object" ? Object.fromEntries(Object.entries(x).map(([k, v]) => [k, bytesAsText(v)])) :
  x
