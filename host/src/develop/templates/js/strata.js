// Helpers for Strata stages written in JavaScript: the verbs of the
// `strata:pipeline` contract (answer, escalate, reject, next) and request
// attributes. They import nothing from the host, so they work in every
// world. The helpers that call the host (config, the answer bank, the log)
// are in `host.js`, which `strata new` writes for the `configured` and
// `plugin` worlds.
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
