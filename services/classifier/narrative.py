"""The narrative classifier: finds the acts a free text describes, in English and in Chinese
(simplified and traditional). Pure: no I/O beyond reading the lexicon file once.

Explainable by construction: every finding names the lexicon rule that fired and quotes the
matched span with its offsets (Python string indices, i.e. Unicode code points) in the
original text. The rules are data (``lexicon.toml``); this module only applies them:

1. traditional characters are mapped one-to-one to simplified ones, so offsets stay valid;
2. the text is cut into sentences; a sentence that discusses a mechanism with nobody it
   happens to ("The article discusses how Interpol reviews Red Notices") is skipped;
3. rules run by priority; a trigger text claimed by a more specific rule (family detained)
   is not reused by a general one (detention abroad);
4. a trigger negated in its clause ("was not extradited", "未被引渡"), under a reported
   denial or a fear in its sentence ("police denied that…", "he fears deportation"), or about
   people in general ("a hotline for Uyghurs facing deportation") gives no finding.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from shared.vocabulary import ActType

LEXICON_FILE = Path(__file__).parent / "lexicon.toml"

# Patterns are written in lower case and matched against lower-cased text: the regular
# expression engine skips non-matching positions much faster without IGNORECASE.
_FLAGS = re.UNICODE
_TERM_REF = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Rule:
    id: str
    act: ActType
    priority: int
    trigger: re.Pattern[str]
    with_: tuple[re.Pattern[str], ...]
    without: re.Pattern[str] | None
    scope: str  # "segment" or "sentence"
    # The companion (`with`) must stand before the trigger (the subject: "his brother … begged").
    with_before: bool = False
    # Nothing matching this may stand between companion and trigger ("his family learned *he*
    # was held": the act is the person's, not the family's).
    clear_between: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Cues:
    negation_en: re.Pattern[str]
    negation_zh: re.Pattern[str]
    denial: re.Pattern[str]
    denial_after: re.Pattern[str]
    discussion: re.Pattern[str]
    anchor: re.Pattern[str]
    generic_subject: re.Pattern[str]
    sentence_break: re.Pattern[str]
    segment_break: re.Pattern[str]
    clause_break: re.Pattern[str]


@dataclass(frozen=True)
class Lexicon:
    version: str
    digest: str  # of the file's bytes: a changed rule is a changed classifier
    rules: tuple[Rule, ...]
    cues: Cues
    to_simplified: dict[int, int]


@dataclass(frozen=True)
class Finding:
    """One act found in a text, and why."""

    act: ActType
    rule: str
    start: int
    end: int
    text: str


def _expand(pattern: str, terms: dict[str, str]) -> str:
    def term(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in terms:
            raise ValueError(f"lexicon pattern refers to unknown term {{{name}}}")
        return f"(?:{terms[name]})"

    return _TERM_REF.sub(term, pattern)


def _compile(pattern: str, terms: dict[str, str], where: str) -> re.Pattern[str]:
    try:
        return re.compile(_expand(pattern, terms), _FLAGS)
    except re.error as exc:
        raise ValueError(f"lexicon {where}: bad pattern: {exc}") from exc


def _with_term(name: str, terms: dict[str, str]) -> str:
    """``with = ["family"]`` means family_en or family_zh (or a term named just ``family``)."""
    parts = [terms[n] for n in (name, f"{name}_en", f"{name}_zh") if n in terms]
    if not parts:
        raise ValueError(f"lexicon `with` refers to unknown term {name!r}")
    return "|".join(f"(?:{p})" for p in parts)


def _char_map(pairs: str) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for pair in pairs.split():
        if len(pair) != 2:
            raise ValueError(f"traditional_to_simplified: {pair!r} is not a character pair")
        mapping[ord(pair[0])] = ord(pair[1])
    return mapping


def parse_lexicon(raw_bytes: bytes) -> Lexicon:
    raw: dict[str, Any] = tomllib.loads(raw_bytes.decode())
    terms: dict[str, str] = raw.get("terms", {})
    rules: list[Rule] = []
    seen: set[str] = set()
    for item in raw["rule"]:
        rule_id = item["id"]
        if rule_id in seen:
            raise ValueError(f"lexicon rule id {rule_id!r} is used twice")
        seen.add(rule_id)
        scope = item.get("scope", "segment")
        if scope not in ("segment", "sentence"):
            raise ValueError(f"lexicon rule {rule_id}: scope must be segment or sentence")
        rules.append(
            Rule(
                id=rule_id,
                act=ActType(item["act"]),
                priority=int(item.get("priority", 10)),
                trigger=_compile(item["trigger"], terms, rule_id),
                with_=tuple(
                    _compile(_with_term(name, terms), terms, rule_id) for name in item.get("with", [])
                ),
                without=_compile(item["without"], terms, rule_id) if "without" in item else None,
                scope=scope,
                with_before=bool(item.get("with_before", False)),
                clear_between=_compile(item["clear_between"], terms, rule_id) if "clear_between" in item else None,
            )
        )
    # Stable order: priority first, then file order.
    rules.sort(key=lambda r: -r.priority)
    cue_raw: dict[str, str] = raw["cues"]
    cues = Cues(**{name: _compile(cue_raw[name], terms, f"cue {name}") for name in Cues.__dataclass_fields__})
    return Lexicon(
        version=str(raw["version"]),
        digest=hashlib.sha256(raw_bytes).hexdigest(),
        rules=tuple(rules),
        cues=cues,
        to_simplified=_char_map(raw.get("traditional_to_simplified", "")),
    )


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    return parse_lexicon(LEXICON_FILE.read_bytes())


def _normalise(text: str, lexicon: Lexicon) -> str:
    """Simplified characters, lower case; the same length, so offsets are the original's."""
    simplified = text.translate(lexicon.to_simplified)
    lowered = simplified.lower()
    if len(lowered) == len(simplified):
        return lowered
    # A few characters lower-case to two ("İ"); fold those one by one, keeping the length.
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in simplified)


def _pieces(text: str, start: int, end: int, breaks: re.Pattern[str]) -> list[tuple[int, int]]:
    """Split text[start:end] at ``breaks``; returns (start, end) of the non-empty pieces."""
    out: list[tuple[int, int]] = []
    cursor = start
    for match in breaks.finditer(text, start, end):
        if match.start() > cursor:
            out.append((cursor, match.start()))
        cursor = match.end()
    if end > cursor:
        out.append((cursor, end))
    return out


def _containing(pieces: list[tuple[int, int]], position: int) -> tuple[int, int]:
    for piece in pieces:
        if piece[0] <= position < piece[1]:
            return piece
    return pieces[-1]


def _negated(text: str, start: int, end: int, clause: tuple[int, int], sentence: tuple[int, int], cues: Cues) -> bool:
    before_in_clause = text[clause[0] : start]
    if cues.negation_en.search(before_in_clause) or cues.negation_zh.search(before_in_clause[-8:]):
        return True
    if cues.denial.search(text, sentence[0], start):
        return True
    if cues.denial_after.search(text, end, sentence[1]):
        return True
    return bool(cues.generic_subject.search(before_in_clause))


def _is_discussion(text: str, sentence: tuple[int, int], cues: Cues) -> bool:
    return bool(
        cues.discussion.search(text, *sentence) and not cues.anchor.search(text, *sentence)
    )


def _overlaps(span: tuple[int, int], claimed: list[tuple[int, int]]) -> bool:
    return any(span[0] < c_end and c_start < span[1] for c_start, c_end in claimed)


def find_acts(text: str, lexicon: Lexicon | None = None) -> list[Finding]:
    """Every act the text describes, with the rule and span that show it, in text order."""
    lexicon = lexicon or default_lexicon()
    cues = lexicon.cues
    norm = _normalise(text, lexicon)
    findings: list[Finding] = []
    for sentence in _pieces(norm, 0, len(norm), cues.sentence_break):
        if _is_discussion(norm, sentence, cues):
            continue
        segments = _pieces(norm, *sentence, cues.segment_break) or [sentence]
        clauses = _pieces(norm, *sentence, cues.clause_break) or [sentence]
        claimed: list[tuple[int, int]] = []
        for rule in lexicon.rules:
            # One pass over the sentence finds the candidates; most rules stop here.
            candidates = [m.span() for m in rule.trigger.finditer(norm, *sentence)]
            if not candidates:
                continue
            scopes = segments if rule.scope == "segment" else [sentence]
            for scope in scopes:
                if rule.without is not None and rule.without.search(norm, *scope):
                    continue
                for trigger in _triggers_in(rule, norm, scope, sentence, candidates):
                    if trigger[0] == trigger[1] or _overlaps(trigger, claimed):
                        continue
                    start, end = trigger
                    companions_ok = True
                    for companion in rule.with_:
                        found = _nearest(companion, norm, scope, trigger, rule)
                        if found is None:
                            companions_ok = False
                            break
                        start, end = min(start, found[0]), max(end, found[1])
                    if not companions_ok:
                        continue
                    clause = _containing(clauses, trigger[0])
                    if _negated(norm, trigger[0], trigger[1], clause, sentence, cues):
                        continue
                    claimed.append(trigger)
                    findings.append(Finding(rule.act, rule.id, start, end, text[start:end]))
    findings.sort(key=lambda f: (f.start, f.end, f.act.value))
    return findings


def _triggers_in(
    rule: Rule, text: str, scope: tuple[int, int], sentence: tuple[int, int], candidates: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The rule's trigger matches inside ``scope``; a segment-scoped rule never matches across
    a segment boundary, so it is matched again within the segment (only where it can match)."""
    if scope == sentence:
        return candidates
    if not any(scope[0] <= start < scope[1] for start, _ in candidates):
        return []
    return [match.span() for match in rule.trigger.finditer(text, *scope)]


def _nearest(
    pattern: re.Pattern[str], text: str, scope: tuple[int, int], trigger: tuple[int, int], rule: Rule
) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None
    best_distance = -1
    for match in pattern.finditer(text, *scope):
        if _overlaps(match.span(), [trigger]):
            continue
        before = match.end() <= trigger[0]
        if rule.with_before and not before:
            continue
        gap = (match.end(), trigger[0]) if before else (trigger[1], match.start())
        if rule.clear_between is not None and rule.clear_between.search(text, *gap):
            continue
        distance = trigger[0] - match.end() if match.end() <= trigger[0] else match.start() - trigger[1]
        if best is None or distance < best_distance:
            best, best_distance = match.span(), distance
    return best
