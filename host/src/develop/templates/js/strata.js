// Helpers for Strata stages written in JavaScript: the verbs of the
// `strata:pipeline` contract (answer, escalate, reject, next), request
// attributes, the stage's config, the answer bank and the host log.
//
// `config` needs the `configured` or `plugin` world and the `config` grant;
// `cached`, `lookup` and `log` need the `plugin` world and the `cache` or
// `log` grant: import them only in a stage built against such a world.
//
// Written by `strata new` for `strata:pipeline@0.2.0`.

/** Answer the request with `output`, at `confidence` (0.0 to 1.0). */
export function answer(output, confidence = 0.9) {
  return { tag: 'respond', val: { output, confidence } };
}

/** Hand the request to a person, with an optional draft answer. */
export function escalate(reason, draft) {
  return { tag: 'escalate', val: { reason, draft } };
}

/** Refuse the request; `code` and `message` reach the client. */
export function reject(code, message) {
  return { tag: 'reject', val: { code, message } };
}

/** Pass the request, possibly changed, on to the next stage. */
export function next(request) {
  return { tag: 'next', val: request };
}

/** The value of attribute `key`, if set. */
export function attribute(request, key) {
  return request.attributes.find((a) => a.key === key)?.value;
}

/** Set attribute `key` to `value`, replacing any earlier value. */
export function setAttribute(request, key, value) {
  request.attributes = request.attributes.filter((a) => a.key !== key);
  request.attributes.push({ key, value });
}
