
// The answer bank and the host log: `plugin` world only.

import * as cache from 'strata:pipeline/cache@0.2.0';
import { log as hostLog } from 'strata:pipeline/log@0.2.0';

/** The answer bank's entry stored under `key` exactly, if any:
 * `{ answer, source, approved }`. */
export function cached(key) {
  return cache.get(key);
}

/** The answer bank's best match for `question`, if any: `{ answer, score,
 * source, approved, label, trusted }` (`trusted`: within the pipeline's
 * error budget). */
export function lookup(question) {
  return cache.lookup(question);
}

/** Write to the host log at `level` ('debug', 'info', 'warn' or 'error'). */
export function log(message, level = 'info') {
  hostLog(level, message);
}
