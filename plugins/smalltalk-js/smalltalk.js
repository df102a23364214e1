// Example stage `smalltalk`, in JavaScript: answers greetings and thanks at
// once, and passes everything else on unchanged.
//
// Built with componentize-js against the `bare` world of `wit/pipeline.wit`
// (see build.mjs and `scripts/build-polyglot`): it imports nothing at all.

const GREETINGS = ['hi', 'hello'];
const THANKS = ['thank you', 'thanks'];

// Whether `text` is `word`, or starts with it followed by punctuation or a
// space. (The engine has no `\p{..}` classes, hence the explicit set.)
function startsWithWord(text, word) {
  if (!text.startsWith(word)) return false;
  if (text.length === word.length) return true;
  return /^[\s!"#$%&'()*+,\-.\/:;<=>?@[\\\]^_`{|}~]/.test(text.slice(word.length));
}

export const stage = {
  handle(request) {
    const text = request.input.trim().toLowerCase();
    if (GREETINGS.some((word) => startsWithWord(text, word))) {
      return {
        tag: 'respond',
        val: { output: 'Hello! How can I help with your banking today?', confidence: 0.95 },
      };
    }
    if (THANKS.some((word) => startsWithWord(text, word))) {
      return { tag: 'respond', val: { output: "You're welcome!", confidence: 0.95 } };
    }
    return { tag: 'next', val: request };
  },
};
