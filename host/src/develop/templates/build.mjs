// The componentize-js driver `strata build` runs for JavaScript stages.
// Usage: node build.mjs SOURCE.js OUT.wasm WORLD WIT_DIR
// Every optional engine feature is off (stdio, random, clocks, http,
// fetch-event), so the component imports only what its world names.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';

const [source, out, world, wit] = process.argv.slice(2);
if (!source || !out || !world || !wit) {
  console.error('usage: node build.mjs SOURCE.js OUT.wasm WORLD WIT_DIR');
  process.exit(2);
}
const { component } = await componentize({
  sourcePath: resolve(source),
  witPath: resolve(wit),
  worldName: world,
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(resolve(out), component);
