// Copies the charting library from node_modules into vendor/ (ignored by git), where the
// projections service serves it. Run: npm ci && npm run build
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
mkdirSync(join(here, "vendor"), { recursive: true });
copyFileSync(join(here, "node_modules/chart.js/dist/chart.umd.min.js"), join(here, "vendor/chart.umd.min.js"));
console.log("dashboard: vendor/chart.umd.min.js ready");
