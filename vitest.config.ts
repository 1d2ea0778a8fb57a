import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration tests start real mariadbd and node processes: keep the 2-core machine from oversubscribing.
    maxWorkers: 2,
    setupFiles: ["test/support/setup.ts"]
  }
})
