/** A listen host that means every interface (no single source address to dial from or to compare). */
export const isWildcard = (host: string): boolean => host === "0.0.0.0" || host === "::" || host === ""
