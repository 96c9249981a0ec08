// Runs every compiled test file of every workspace package with Node's test runner.
// (Node 20's `--test` takes no globs, so the files are listed here.)
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const files = [];
for (const pkg of readdirSync(join(root, 'packages'))) {
  const dir = join(root, 'packages', pkg, 'dist', 'test');
  if (!existsSync(dir)) continue;
  for (const f of readdirSync(dir, { recursive: true })) {
    if (String(f).endsWith('.test.js')) files.push(join(dir, String(f)));
  }
}
if (files.length === 0) {
  console.error('no compiled test files found: run `npm run build` first');
  process.exit(1);
}
const args = ['--test', '--test-reporter=spec', ...process.argv.slice(2), ...files.sort()];
const result = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(result.status ?? 1);
