// Helpers that call the host, for stages built against the `configured` or
// `plugin` world (they need the grants of what they call). Written by
// `strata new` for `strata:pipeline@0.2.0`.

import * as hostConfig from 'strata:pipeline/config@0.2.0';

/** One value of the stage's config table (strings as they are, anything
 * else as JSON), or `fallback`. */
export function config(key, fallback) {
  return hostConfig.get(key) ?? fallback;
}

/** The stage's whole config table. */
export function configJson() {
  return JSON.parse(hostConfig.getJson());
}
