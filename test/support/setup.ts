/** Every test worker: a mariadbd a test started does not outlive the worker, even on a crash. */
import { killChildrenOnExit } from "../../src/services/database/MariaDbProcess.js"

killChildrenOnExit()
