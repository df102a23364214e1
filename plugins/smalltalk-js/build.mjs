// Build a JavaScript stage into a component with componentize-js.
// Usage: node build.mjs SOURCE.js OUT.wasm WORLD
// Every optional engine feature is off (stdio, random, clocks, http,
// fetch-event), so the component imports only what its world names.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const [source, out, world] = process.argv.slice(2);
if (!source || !out || !world) {
  console.error('usage: node build.mjs SOURCE.js OUT.wasm WORLD');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const { component } = await componentize({
  sourcePath: resolve(source),
  witPath: resolve(here, '../../wit'),
  worldName: world,
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(resolve(out), component);
