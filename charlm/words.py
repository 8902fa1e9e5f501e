"""Words: the tokenizer and detokenizer of the word-level model (one place for both).

The lecture notes' word model reads a sentence as a sequence of tokens y<1> … y<T>
ending with <EOS>; words outside the vocabulary become <UNK> (``charlm.wordvocab``).
Text becomes tokens by these rules, tried in this order at each position
(whitespace separates tokens and is dropped):

    number       digits with . or , between digits:      3.14  1,000  2.5.1
    word         letters, digits and _, with apostrophes or hyphens inside:
                                                          don't  o'clock  well-known  covid-19  1990s
    punctuation  any other character, one token each:     .  ,  ;  "  (  )  —  …

With ``lowercase`` (the word model's default) the text is lower-cased first, so
"The" and "the" are one token, as in the notes' vocabulary [a, aaron, …, zulu].

<EOS> ends a sentence: after . ! ? (with any closing quotes or brackets right
after it) followed by whitespace or the end of the text; at a blank line (a
line break, spaces or none, a line break); and at the end of the text. It is
never first and never doubled. A single line break is whitespace like a space:
the line structure of the source is not kept, only its sentences and paragraphs.

    >>> tokenize('The apple and pear salad. It cost $3.50!\\n\\nNext line')
    ['the', 'apple', 'and', 'pear', 'salad', '.', '<EOS>', 'it', 'cost', '$', '3.50', '!', '<EOS>', 'next', 'line', '<EOS>']

(An abbreviation such as "Mr. Smith" ends a sentence too: the rule has no list of them.)

``Tokenizer`` does the same chunk by chunk, so a corpus is never held as one
string; the tokens do not depend on where the chunks are cut. ``Detokenizer``
turns tokens back into English-looking text: words joined by spaces, punctuation
attached ("salad." not "salad ."), <EOS> printed as a line break (one sentence
per line), and, for a lower-cased model, sentence starts and the pronoun "i"
capitalised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

EOS = "<EOS>"  # end of sentence
UNK = "<UNK>"  # any word outside the vocabulary
CLOSERS = "\"'”’)]}»"  # may follow . ! ? and still end the sentence there
SENTENCE_MARKS = ".!?"

_TOKEN = re.compile(
    r"(?P<blank>\n[^\S\n]*\n)"  # a blank line: a paragraph ends a sentence
    r"|(?P<num>\d+(?:[.,]\d+)+)"  # 3.14, 1,000
    r"|(?P<word>\w+(?:['’-]\w+)*)"  # don't, well-known, 1990s
    r"|(?P<end>[.!?][" + re.escape(CLOSERS) + r"]*)(?=\s|\Z)"  # . ! ? (and closers) before whitespace
    r"|(?P<punct>[^\w\s])"  # any other character, alone
)


def _cut(text: str) -> int:
    """Where a chunk may be cut so that what follows cannot change its tokens: before its
    trailing whitespace (a blank line may go on in the next chunk), else after its last
    whitespace (the last token may go on). 0 when the chunk has no whitespace."""
    if not text:
        return 0
    if text[-1].isspace():
        return len(text.rstrip())
    i = len(text)
    while i and not text[i - 1].isspace():
        i -= 1
    return i


class Tokenizer:
    """Text → tokens, chunk by chunk: ``feed(chunk)`` returns the tokens that chunk
    completes, ``feed(last_chunk, final=True)`` the rest (with the final <EOS>)."""

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = lowercase
        self._carry = ""  # text whose tokens the next chunk may still change
        self._open = False  # a sentence has tokens and no <EOS> yet

    def feed(self, text: str, final: bool = False, end: bool = True) -> list[str]:
        """Tokens completed by ``text``. With ``final`` the text ends here, and with ``end``
        that ends the open sentence with <EOS> (a prime to be continued passes end=False)."""
        buf = self._carry + text
        cut = len(buf) if final else _cut(buf)
        self._carry = buf[cut:]
        tokens = self._tokens(buf[:cut])
        if final and end and self._open:
            tokens.append(EOS)
            self._open = False
        return tokens

    def _tokens(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        out: list[str] = []
        append = out.append
        open_ = self._open
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            if kind == "blank":
                if open_:
                    append(EOS)
                    open_ = False
            elif kind == "end":
                out.extend(m[0])  # the mark and its closers, one token each
                append(EOS)
                open_ = False
            else:
                append(m[0])
                open_ = True
        self._open = open_
        return out


def tokenize(text: str, lowercase: bool = True, end: bool = True) -> list[str]:
    """The tokens of a whole text (see the module docstring); ``end=False`` leaves a
    last sentence without its <EOS> (a text to be continued)."""
    return Tokenizer(lowercase).feed(text, final=True, end=end)


def iter_tokens(chunks: Iterable[str], lowercase: bool = True) -> Iterator[list[str]]:
    """The tokens of a text given in chunks, a list per chunk (the last one ends with <EOS>)."""
    tok = Tokenizer(lowercase)
    for chunk in chunks:
        tokens = tok.feed(chunk)
        if tokens:
            yield tokens
    tokens = tok.feed("", final=True)
    if tokens:
        yield tokens


NO_SPACE_BEFORE = frozenset(".,;:!?%)]}”’»…'")  # attach to the token before: "salad." "(sic)" "players'"
NO_SPACE_AFTER = frozenset("([{“‘«$#¿¡")  # attach to the token after: "(sic)" "$3"
_PRONOUN_I = frozenset(("i", "i'm", "i'll", "i've", "i'd", "i’m", "i’ll", "i’ve", "i’d"))


class Detokenizer:
    """Tokens → text, one token at a time (``piece``), as English prints them.

    <EOS> is printed as a line break: one sentence per line. A straight double quote
    opens and closes by turns within a sentence. With ``capitalize`` (a lower-cased
    model) a sentence's first word and the pronoun "i" get a capital letter.
    ``at_start`` / ``no_space``: the state after the text before (a prime)."""

    def __init__(self, capitalize: bool = False, at_start: bool = True, no_space: bool = True) -> None:
        self.capitalize = capitalize
        self.at_start = at_start  # the next word starts a sentence
        self.no_space = no_space  # no space before the next token
        self.quote_open = False  # a straight double quote is open

    def piece(self, token: str) -> str:
        """The text that prints ``token`` after the tokens before it."""
        if token == EOS:
            self.at_start, self.no_space, self.quote_open = True, True, False
            return "\n"
        if token == '"':
            closing = self.quote_open
            self.quote_open = not closing
            space = "" if closing or self.no_space else " "
            self.no_space = not closing
            return space + token
        space = "" if self.no_space or token in NO_SPACE_BEFORE else " "
        self.no_space = token in NO_SPACE_AFTER
        if self.capitalize and token[:1].isalpha():
            if self.at_start or token in _PRONOUN_I:
                token = token[:1].upper() + token[1:]
            self.at_start = False
        elif token[:1].isalnum():
            self.at_start = False
        return space + token

    def join(self, tokens: Iterable[str]) -> str:
        return "".join(map(self.piece, tokens))


def detokenize(tokens: Iterable[str], capitalize: bool = False) -> str:
    """Tokens joined as English text (see ``Detokenizer``)."""
    return Detokenizer(capitalize).join(tokens)


class SentenceEnds:
    """Counts sentence ends in generated characters by the tokenizer's rule: a
    whitespace character after . ! ? (and closers), or a blank line after some text.
    ``__call__(ch)`` is True at the character that ends a sentence."""

    def __init__(self) -> None:
        self.after_mark = False  # . ! ? (and closers) just before
        self.open = False  # text since the last sentence end
        self.newline = False  # a line break, then only spaces

    def __call__(self, ch: str) -> bool:
        if ch.isspace():
            ends = self.after_mark or (ch == "\n" and self.newline and self.open)
            self.newline = ch == "\n" or (self.newline and ch != "\n")
            self.after_mark = False
            if ends:
                self.open = False
            return ends
        self.newline = False
        self.open = True
        if ch in SENTENCE_MARKS:
            self.after_mark = True
        elif ch not in CLOSERS:
            self.after_mark = False
        return False
