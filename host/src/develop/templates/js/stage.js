// Stage `{{name}}`: answers "ping" and passes every other request on
// unchanged.
{{about}}//
// Replace `handle` with what your stage should do, add a case to
// `cases.toml` for each decision it makes, and run `strata test`.
//
// `strata build` makes the component with componentize-js against the
// `{{world}}` world of `wit/pipeline.wit`.

import { answer, next } from './strata.js';

export const stage = {
  handle(request) {
    if (request.input.trim().toLowerCase() === 'ping') {
      return answer({{reply}}, 0.99);
    }
{{lookup}}    return next(request);
  },
};
