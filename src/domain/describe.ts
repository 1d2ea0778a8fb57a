/** An error's message (or the value as text) for a log line or an error's message. */
export const describeCause = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))
