import { configDefaults, defineConfig } from "vitest/config"

/**
 * Tests that load the whole machine (a 100 MB transaction writes ~1 GB to the one disk):
 * run after the rest, on their own, so that they do not stall other tests' leases.
 */
const ALONE = ["test/big-transaction.test.ts"]

export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration tests start real mariadbd and node processes: keep the 2-core machine from oversubscribing.
    maxWorkers: 2,
    setupFiles: ["test/support/setup.ts"],
    projects: [
      { extends: true, test: { name: "suite", include: ["test/**/*.test.ts"], exclude: [...configDefaults.exclude, ...ALONE], sequence: { groupOrder: 0 } } },
      { extends: true, test: { name: "alone", include: ALONE, sequence: { groupOrder: 1 } } }
    ]
  }
})
