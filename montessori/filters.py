"""The paper's instruction filters: length, banned words, first character, and ROUGE-L novelty.

RougeFilter is fast because ROUGE-L F1 of token lists a and b is 2*LCS(a, b) / (|a| + |b|), which is the
normalized Indel similarity of the two sequences. Each distinct word is mapped to one Unicode character, so an
instruction becomes a short string, and rapidfuzz's C++ bit-parallel LCS scores a query against the whole
accepted set in one call (`process.extractOne`) instead of a Python dynamic programme per pair. The best
matches are then re-scored with rouge_score's own formula from the exact LCS, because the two formulas round
differently at the threshold (2*7/20 is 0.7 as an Indel similarity but 0.7000000000000001 as rouge_score's F).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from typing import NamedTuple

from rapidfuzz import process
from rapidfuzz.distance import Indel, LCSseq

OK = "ok"

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_SURROGATES = range(0xD800, 0xE000)
_MAX_WORDS = 0x110000 - len(_SURROGATES)
# Indel similarities this close to the threshold may be equal fractions that rouge_score rounds to either side.
# Generous, because rapidfuzz's own cutoff test is not exact to the last bits; extra matches are harmless, since
# every match is re-scored exactly.
_TIE = 1e-6


def instruction_verdict(instruction: str | None, min_chars: int, max_chars: int, banned_words: list[str]) -> str:
    """ "ok", or why the (stripped) instruction fails a filter: no_instruction, too_short (at most min_chars
    characters), too_long (more than max_chars), banned_word (a whole word or phrase of banned_words, any case),
    bad_start (punctuation or a non-ASCII first character)."""
    text = (instruction or "").strip()
    if not text:
        return "no_instruction"
    if len(text) <= min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    if banned_words and _banned_pattern(tuple(banned_words)).search(text):
        return "banned_word"
    if text[0] in string.punctuation or not text[0].isascii():
        return "bad_start"
    return OK


@functools.lru_cache(maxsize=8)
def _banned_pattern(banned_words: tuple[str, ...]) -> re.Pattern[str]:
    if any(not word.strip() for word in banned_words):
        raise ValueError(f"synthesis.filters.banned_words has an empty entry: {list(banned_words)!r}")
    # Words of a phrase may be separated by any whitespace; lookarounds instead of \b so entries that begin or
    # end with a non-word character still match only whole.
    phrases = (r"\s+".join(map(re.escape, word.split())) for word in banned_words)
    return re.compile(rf"(?<!\w)(?:{'|'.join(phrases)})(?!\w)", re.IGNORECASE)


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's tokenisation without stemming: lowercase, every run of non [a-z0-9] becomes a space, split."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _rouge_l_f(lcs: int, n: int, m: int) -> float:
    """rouge_score's F-measure, computed in its order of operations so that it rounds identically."""
    precision, recall = lcs / m, lcs / n
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


class Novelty(NamedTuple):
    """A text's ROUGE-L verdict: novel or not, its highest ROUGE-L F, the text it scored that against, and where
    that text came from ("accepted": an instruction accepted earlier; "in_context": an example of its own
    prompt). match and source are None when there was nothing to compare with."""

    novel: bool
    score: float
    match: str | None
    source: str | None


class RougeFilter:
    """Accepts a text when its ROUGE-L F against every previously accepted text, and against the in-context
    examples of its own prompt, is at most max_rouge_l (the reference implementation's filter: a teacher that
    copies one of the examples it was shown writes nothing new)."""

    def __init__(self, max_rouge_l: float) -> None:
        self.max_rouge_l = max_rouge_l
        self._codes: dict[str, str] = {}
        # Texts without tokens are left out: rouge_score scores them 0 against anything, Indel would say 1.
        self._accepted: list[str] = []
        self._accepted_texts: list[str] = []
        # In-context examples recur across prompts (seeds, earlier generations): encode each text once.
        self._encoded: dict[str, str] = {}

    def _encode_example(self, text: str) -> str:
        encoded = self._encoded.get(text)
        if encoded is None:
            encoded = self._encoded[text] = self._encode(text)
        return encoded

    def _encode(self, text: str) -> str:
        chars = []
        for word in rouge_tokens(text):
            code = self._codes.get(word)
            if code is None:
                index = len(self._codes)
                if index >= _MAX_WORDS:
                    raise ValueError(f"RougeFilter: more than {_MAX_WORDS} distinct words; use a new filter per run")
                code = self._codes[word] = chr(index + len(_SURROGATES) if index >= _SURROGATES.start else index)
            chars.append(code)
        return "".join(chars)

    def _best_accepted(self, query: str) -> tuple[float, int | None]:
        """The highest ROUGE-L F of `query` against the accepted set, and the index of that text."""
        if not query or not self._accepted:
            return 0.0, None
        best, similarity, index = process.extractOne(query, self._accepted, scorer=Indel.normalized_similarity)
        matches = [(best, index)]
        if similarity >= self.max_rouge_l - _TIE:
            cutoff = similarity - _TIE
            ties = process.extract(
                query, self._accepted, scorer=Indel.normalized_similarity, score_cutoff=cutoff, limit=None
            )
            matches = [(match, i) for match, _, i in ties]
        return max((_rouge_l_f(LCSseq.similarity(query, m), len(query), len(m)), i) for m, i in matches)

    def remember(self, texts: Sequence[str]) -> None:
        """Count `texts` as accepted (e.g. the instructions of a training set that new ones must not repeat)."""
        for text in texts:
            query = self._encode(text)
            if query:
                self._accepted.append(query)
                self._accepted_texts.append(text)

    def accept(self, text: str, in_context: Sequence[str] = ()) -> Novelty:
        """The verdict on `text` against the accepted set and its prompt's `in_context` examples (a handful, each
        scored exactly); a novel text joins the accepted set."""
        query = self._encode(text)
        score, index = self._best_accepted(query)
        match, source = (self._accepted_texts[index], "accepted") if index is not None else (None, None)
        for example in in_context:
            encoded = self._encode_example(example)
            if query and encoded:
                example_score = _rouge_l_f(LCSseq.similarity(query, encoded), len(query), len(encoded))
                if example_score > score or match is None:
                    score, match, source = example_score, example, "in_context"
        novel = score <= self.max_rouge_l
        if novel and query:
            self._accepted.append(query)
            self._accepted_texts.append(text)
        return Novelty(novel, score, match, source)
