"""Prompt screening: normalise the text, match the term lists of `configs/safety/`, decide.

Normalisation makes obfuscation irrelevant: Unicode NFKC (full-width letters), homoglyphs and
accents folded to Latin with `anyascii` (Cyrillic "е" -> "e", "é" -> "e"; Chinese is kept as is),
invisible characters dropped, punctuation inside words removed ("n.u.d.e", "na*ked"), runs of
spaced-out letters joined ("b e h e a d i n g"), and a second view with leetspeak undone
("s3xy" -> "sexy"). Allowed look-alikes ("nude lipstick", "blood orange") are masked before
matching. Public figures are matched by name, alias and title, with fuzzy matching for misspellings
(`rapidfuzz`). How the lists combine into a decision is `PromptScreener._decide`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Literal, Protocol

import yaml
from anyascii import anyascii
from pydantic import BaseModel, Field
from rapidfuzz import fuzz, process

from tools.safety.guard import GuardVerdict, ScreenContext
from tools.settings import SafetySettings

# Decision ------------------------------------------------------------------------------------


class Decision(BaseModel):
    """One screening decision: allow, ask for consent, or refuse, with a reason a person can read;
    `guard` is the guard model's verdict when it was asked (kept in the audit log)."""

    decision: Literal["allow", "consent", "refuse"] = "allow"
    category: str = "none"
    reason: str = ""
    matched: str | list[str] | None = None
    guard: GuardVerdict | None = None
    categories: list[str] = Field(default_factory=list)  # every category the rules refused it for

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def refused(self) -> bool:
        return self.decision == "refuse"


# Data ----------------------------------------------------------------------------------------


def _load_yaml(name: str, lists_dir: str | None, package: str = "configs.safety") -> dict:
    if lists_dir:
        return yaml.safe_load(Path(lists_dir, name).read_text(encoding="utf-8")) or {}
    return yaml.safe_load(resources.files(package).joinpath(name).read_text(encoding="utf-8")) or {}


@lru_cache(maxsize=1)
def reasons() -> dict:
    return _load_yaml("reasons.yaml", None, "prompts.safety")


def refusal_reason(category: str) -> str:
    texts = reasons()["refuse"]
    return texts.get(category, texts["other"])


# Normalisation -------------------------------------------------------------------------------

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l", "8": "b", "9": "g"})
_LEET_CHARS = set("0134578@$!|9")
_SPACED = re.compile(r"(?<![a-z0-9])(?:[a-z][ .\-_*·•/|]{1,2}){2,}[a-z](?![a-z0-9])")
_INWORD_PUNCT = re.compile(r"(?<=[a-z])[.*_·•`^~|]+(?=[a-z])")
_SPACES = re.compile(r"\s+")
_QUOTES = re.compile(r"(?<![a-z])['`]|['`](?![a-z])|[\"“”‘’«»]")
_STARRED = re.compile(r"(?<=[a-z])\*(?=[a-z])")


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x2E80 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F or 0xFF00 <= o <= 0xFFEF
            or 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F)  # + Hangul


@lru_cache(maxsize=4096)
def _looks_like(ch: str) -> str | None:
    """The ASCII letter a character is visually confusable with (Unicode TR39 confusables via
    `confusable_homoglyphs`): Cyrillic "р" -> "p", Greek "Ν" -> "N"; None when there is none."""
    try:
        from confusable_homoglyphs import confusables
    except ImportError:  # pragma: no cover - a dependency; without it only transliteration is used
        return None
    found = confusables.is_confusable(ch, preferred_aliases=["latin"], greedy=True) or []
    for entry in found:
        for glyph in entry.get("homoglyphs", []):
            c = glyph.get("c", "")
            if c.isascii() and c.isalnum():
                return c
    return None


def fold(text: str, *, visual: bool = False) -> str:
    """NFKC, lower case, accents and other scripts to Latin (CJK kept), whitespace collapsed.

    `visual=False` transliterates (Russian "голая" -> "golaia", "é" -> "e"); `visual=True` maps
    look-alike letters to the Latin letter they imitate first (Cyrillic "Ѕhаkira" -> "shakira",
    "Bеyoncé" -> "beyonce"), which is what a homoglyph attack relies on.
    """
    text = unicodedata.normalize("NFKC", text or "")
    out = []
    for ch in text:
        if ch.isascii() or _is_cjk(ch):
            out.append(ch)
        elif unicodedata.category(ch) in ("Cf", "Mn", "Cc"):
            continue  # zero-width joiners, combining marks, controls
        else:
            out.append((_looks_like(ch) if visual else None) or anyascii(ch))
    text = "".join(out).lower()
    return _SPACES.sub(" ", text).strip()


def _join_spaced(text: str, *, keep_article: bool = False) -> str:
    """Join spaced-out letters ("b e h e a d" -> "behead"); with keep_article a leading "a"/"i"
    stays a word of its own ("in a s e x y outfit" -> "in a sexy outfit")."""

    def join(m: re.Match) -> str:
        run = m.group(0)
        if keep_article and run[0] in "ai" and run[1] == " ":
            return run[0] + " " + re.sub(r"[^a-z]", "", run[1:])
        return re.sub(r"[^a-z]", "", run)

    return _SPACED.sub(join, text)


def _unleet_token(tok: str) -> str:
    if any(c.isalpha() for c in tok) and any(c in _LEET_CHARS for c in tok):
        core = tok.rstrip(".,;:!?'\")")
        return core.translate(_LEET) + tok[len(core):]
    return tok


def views(text: str) -> list[str]:
    """The normalised views of a text that the lists are matched against."""
    out = _views(fold(text))
    if any(not c.isascii() and not _is_cjk(c) for c in text):
        for v in _views(fold(text, visual=True)):
            if v not in out:
                out.append(v)
    return out


def _views(folded: str) -> list[str]:
    base = _INWORD_PUNCT.sub("", folded)
    joined = _join_spaced(base)
    joined_article = _join_spaced(base, keep_article=True)
    leet = " ".join(_unleet_token(t) for t in joined_article.split(" "))
    leet = _join_spaced(_INWORD_PUNCT.sub("", leet), keep_article=True)
    out = []
    unquoted = _QUOTES.sub("", base)  # "the 'result' of", "'novelty' $50 bill"
    for v in (base, joined, joined_article, leet, base.replace("-", " "), unquoted):
        if v not in out:
            out.append(v)
    # a letter hidden behind a star ("n*ked", "s*x"): try each vowel in its place
    if _STARRED.search(folded):
        for vowel in "aeiou":
            v = _STARRED.sub(lambda m: m.group(0).replace("*", vowel), folded)
            if v not in out:
                out.append(v)
    return out


# Matching ------------------------------------------------------------------------------------


def _compile(patterns: Iterable[str]) -> re.Pattern | None:
    latin, cjk = [], []
    for p in patterns:
        p = fold(p) if not any(_is_cjk(c) for c in p) else p
        (cjk if any(_is_cjk(c) for c in p) else latin).append(p)
    parts = []
    if latin:
        parts.append(r"(?<![a-z0-9])(?:" + "|".join(f"(?:{p})" for p in latin) + r")(?![a-z0-9])")
    if cjk:
        parts.append("(?:" + "|".join(f"(?:{p})" for p in cjk) + ")")
    return re.compile("|".join(parts)) if parts else None


@dataclass
class Lists:
    concepts: dict[str, re.Pattern]
    allowed: re.Pattern | None
    support: re.Pattern | None
    jailbreak: re.Pattern | None
    titles: re.Pattern | None
    figure_exact: re.Pattern | None
    figure_alias: dict[str, str]  # folded alias -> canonical name
    fuzzy_multi: dict[int, list[str]] = field(default_factory=dict)  # n tokens -> aliases
    fuzzy_single: list[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def load_lists(lists_dir: str | None = None) -> Lists:
    terms = _load_yaml("terms.yaml", lists_dir)
    allowed = _load_yaml("allowed.yaml", lists_dir)
    jail = _load_yaml("jailbreak.yaml", lists_dir)
    figures = _load_yaml("public_figures.yaml", lists_dir)
    concepts = {name: _compile(pats) for name, pats in terms.items() if name != "self_harm_support"}
    alias: dict[str, str] = {}
    for line in figures.get("figures", []):
        names = [n.strip() for n in str(line).split("|") if n.strip()]
        for i, n in enumerate(names):
            key = re.sub(r"[\s\-]+", " ", fold(n).replace(".", ""))
            if key:
                alias[key] = _canonical(names, i)
    exact = [re.escape(a).replace(r"\ ", r"[\s\-]+") for a in sorted(alias, key=len, reverse=True)]
    fuzzy_multi: dict[int, list[str]] = {}
    fuzzy_single: list[str] = []
    for a in alias:
        if any(_is_cjk(c) for c in a):
            continue
        n = len(a.split())
        if n >= 2 and len(a) >= 8:
            fuzzy_multi.setdefault(n, []).append(a)
        elif n == 1 and len(a) >= 6:
            fuzzy_single.append(a)
    return Lists(
        concepts=concepts,
        allowed=_compile(allowed.get("phrases", [])),
        support=_compile(terms.get("self_harm_support", [])),
        jailbreak=_compile(jail.get("patterns", [])),
        titles=_compile(figures.get("titles", [])),
        figure_exact=_compile(exact),
        figure_alias=alias,
        fuzzy_multi=fuzzy_multi,
        fuzzy_single=fuzzy_single,
    )


def _canonical(names: list[str], i: int) -> str:
    """Who an alias names: a line may list one person's aliases or several people. An alias that
    shares a word with an earlier name (or is written in Chinese/Japanese/Korean, following the
    name before it) is that person; otherwise it names someone of its own."""
    words = set(fold(names[i]).split())
    for j in range(i - 1, -1, -1):
        if words & set(fold(names[j]).split()):
            return _canonical(names, j)
    if i > 0 and any(_is_cjk(c) for c in names[i]):
        return _canonical(names, i - 1)
    return names[i]


# Guard -------------------------------------------------------------------------------------


class Guard(Protocol):
    """A model's judgement behind the rules (`tools.safety.guard`: `LabelGuard`, `Qwen3Guard`, or a
    scripted one in tests). It refuses what the rules let through; one whose `releases` is true may
    also release a rules refusal its release head is sure about (`releasable` ones only)."""

    name: str
    releases: bool

    def judge(self, text: str, context: ScreenContext | None = None, *,
              rules_refused: bool = False) -> GuardVerdict: ...


GuardBackend = Guard  # the earlier name


# Screener ------------------------------------------------------------------------------------

# Rule refusals a guard never releases: a child in any sexual framing (zero tolerance), and an
# attempt to override the rules (the model being attacked must not overturn that).
NEVER_RELEASED = ("minors", "jailbreak")


def releasable(decision: Decision, text: str) -> bool:
    """Whether a guard may release this rules refusal: one category only, not a never-released
    one, and a text short enough that the guard reads all of it."""
    from tools.safety.guard import MAX_CHARS

    categories = decision.categories or [decision.category]
    return len(categories) == 1 and categories[0] not in NEVER_RELEASED and len(text.strip()) <= MAX_CHARS


def guard_refusal(verdict: GuardVerdict) -> Decision:
    """The refusal a guard verdict stands for."""
    category = verdict.category if verdict.category in _PRIORITY else "other"
    return Decision(decision="refuse", category=category, reason=refusal_reason(category),
                    matched=f"guard: {verdict.label} ({verdict.unsafe:.2f})", guard=verdict)


_PRIORITY = ["minors", "nonconsensual", "sexual", "self_harm", "violence", "hate", "deception", "public_figure", "jailbreak"]
_WORD = re.compile(r"[a-z]+")
_PROXIMITY = re.compile(r".{0,30}(?:\bas\b|\blike\b|\bare\b|\binto\b|\bdepicted\b|\bshown\b|\bportrayed\b|\bcomo\b|\bcomme\b|\bals\b|\bwie\b|被|画成|是).{0,20}")


class PromptScreener:
    """Rule-based screening of a text (user words or planner-written tool arguments)."""

    def __init__(self, settings: SafetySettings | None = None, *, guard: Guard | None = None):
        self.settings = settings or SafetySettings()
        self.lists = load_lists(self.settings.lists_dir)
        self.guard = guard

    # -- public ------------------------------------------------------------------------------
    def screen(self, text: str, context: ScreenContext | None = None, *, guard: bool = True) -> Decision:
        """Rules first; what they do not refuse goes to the guard (when there is one), which reads
        the text with `context`. Consent: the guard says the edit changes how a real person looks
        and the image being edited shows people (`context.people`; None: not known, as in an eval
        of texts alone). Without a guard the word lists decide consent. `guard=False`: the rules alone.

        A rules refusal stands unless the guard's release head (fitted on texts the rules refused)
        is sure they matched a harmless word; a refusal for `NEVER_RELEASED` categories always stands."""
        if not text or not text.strip():
            return Decision()
        decision = self._decide(self.match(text))
        if self.guard is None or not guard:
            return decision
        if decision.decision == "refuse":
            if not releasable(decision, text) or not getattr(self.guard, "releases", False):
                return decision
            verdict = self.guard.judge(text, context, rules_refused=True)
            if not verdict.release:
                return decision.model_copy(update={"guard": verdict})
            if verdict.refuse:  # released by the rules' head, refused by the guard's own reading
                return guard_refusal(verdict)
            decision = Decision(decision="allow", category="none", reason=reasons()["allow"],
                                matched=f"released by the guard ({verdict.benign:.2f}): {decision.matched}")
        else:
            verdict = self.guard.judge(text, context)
            if verdict.refuse:
                return guard_refusal(verdict)
        people = context.people if context is not None else None
        if verdict.changes_person and people is not False:
            return Decision(decision="consent", category="consent", reason=reasons()["consent"]["reason"],
                            matched=f"guard: person ({verdict.person:.2f})", guard=verdict)
        if decision.decision == "consent":  # the guard reads the edit as not changing the person
            decision = Decision(decision="allow", category="none", reason=reasons()["allow"])
        return decision.model_copy(update={"guard": verdict})

    def changes_person(self, text: str, context: ScreenContext | None = None) -> bool:
        """Whether an edit instruction changes how a person looks (age, face, expression, body,
        hair, clothing, adding or removing someone): the guard's judgement, else the word list."""
        if not text or not text.strip():
            return False
        if self.guard is not None:
            return self.guard.judge(text, context).changes_person
        return bool(self.match(text).get("identity_change"))

    def match(self, text: str) -> dict[str, list[str]]:
        """Which concepts of the lists the text hits, with the matched words."""
        hits: dict[str, list[str]] = {}
        lists = self.lists
        for view in views(text):
            if lists.allowed is not None:
                view = lists.allowed.sub(" ", view)
            if lists.support is not None:
                support_masked = lists.support.sub(" ", view)
            else:
                support_masked = view
            for name, pattern in lists.concepts.items():
                if pattern is None:
                    continue
                target = support_masked if name == "self_harm" else view
                for m in pattern.finditer(target):
                    hits.setdefault(name, []).append(m.group(0).strip())
            if lists.jailbreak is not None:
                for m in lists.jailbreak.finditer(view):
                    hits.setdefault("jailbreak", []).append(m.group(0).strip())
            for figure in self._figures(view):
                hits.setdefault("public_figure", []).append(figure)
            if "protected_group" in lists.concepts and self._dehumanising(view):
                hits.setdefault("dehumanising_group", []).append("dehumanising comparison")
        return {k: sorted(set(v)) for k, v in hits.items()}

    # -- public figures ------------------------------------------------------------------------
    def _figures(self, view: str) -> list[str]:
        lists = self.lists
        found: list[str] = []
        if lists.figure_exact is not None:
            for m in lists.figure_exact.finditer(view):
                key = re.sub(r"[\s\-]+", " ", m.group(0).replace(".", ""))
                found.append(lists.figure_alias.get(key, m.group(0)))
        if lists.titles is not None:
            found += [f"title: {m.group(0).strip()}" for m in lists.titles.finditer(view)]
        tokens = _WORD.findall(view)
        for n, aliases in lists.fuzzy_multi.items():
            for w in (" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)):
                best = process.extractOne(w, aliases, scorer=fuzz.ratio, score_cutoff=86)
                if best and _first_letters_agree(w, best[0]):
                    found.append(lists.figure_alias[best[0]])
            # a name split or joined differently ("Di Caprio", "Zucker berg"): compare without spaces
            squashed = {a.replace(" ", ""): a for a in aliases}
            for k in (n - 1, n + 1):
                if k < 1:
                    continue
                for i in range(len(tokens) - k + 1):
                    w = "".join(tokens[i:i + k])
                    if len(w) < 8:
                        continue
                    best = process.extractOne(w, list(squashed), scorer=fuzz.ratio, score_cutoff=92)
                    if best and w[0] == best[0][0]:
                        found.append(lists.figure_alias[squashed[best[0]]])
        for t in (t for t in tokens if len(t) >= 6):
            best = process.extractOne(t, lists.fuzzy_single, scorer=fuzz.ratio, score_cutoff=90)
            if best and t[:2] == best[0][:2]:
                found.append(lists.figure_alias[best[0]])
        return found

    def _dehumanising(self, view: str) -> bool:
        groups = self.lists.concepts.get("protected_group")
        vermin = self.lists.concepts.get("dehumanising")
        if groups is None or vermin is None:
            return False
        for g in groups.finditer(view):
            tail = view[g.end():g.end() + 60]
            m = _PROXIMITY.match(tail)
            if m and vermin.search(tail):
                return True
            if vermin.search(view[max(0, g.start() - 25):g.start()]):
                return True  # "rats labelled immigrants"
        return False

    # -- decision ------------------------------------------------------------------------------
    def _decide(self, hits: dict[str, list[str]]) -> Decision:
        has = lambda *names: any(hits.get(n) for n in names)  # noqa: E731
        found: dict[str, list[str]] = {}
        sexual_any = has("sexual", "suggestive", "undress")
        if has("minor") and sexual_any:
            found["minors"] = hits.get("minor", []) + hits.get("sexual", []) + hits.get("suggestive", []) + hits.get("undress", [])
        if has("undress") and (has("real_person") or has("public_figure") or not has("sexual")):
            found["nonconsensual" if has("real_person", "public_figure") else "sexual"] = hits["undress"]
        if has("real_person") and has("sexual", "suggestive", "humiliate"):
            found["nonconsensual"] = hits.get("real_person", []) + hits.get("sexual", []) + hits.get("suggestive", []) + hits.get("humiliate", [])
        if has("public_figure") and has("sexual", "suggestive", "humiliate"):
            found["nonconsensual"] = hits["public_figure"] + hits.get("sexual", []) + hits.get("suggestive", [])
        if has("sexual"):
            found.setdefault("sexual", hits["sexual"])
        if has("self_harm"):
            found["self_harm"] = hits["self_harm"]
        if has("violence"):
            found["violence"] = hits["violence"]
        if has("hate", "dehumanising_group"):
            found["hate"] = hits.get("hate", []) + hits.get("dehumanising_group", [])
        if has("document", "currency"):
            if has("forgery") or (has("forgery_weak") and not has("prop_context")):
                found["deception"] = hits.get("document", []) + hits.get("currency", []) + hits.get("forgery", []) + hits.get("forgery_weak", [])
        if has("paperwork") and has("forgery"):
            found.setdefault("deception", hits["paperwork"] + hits["forgery"])
        if has("news_media") and has("real_event", "real_person"):  # fabricated record of real events or people
            found["deception"] = hits["news_media"] + hits.get("real_event", []) + hits.get("real_person", [])
        if has("public_figure"):
            found["public_figure"] = hits["public_figure"]
        if has("jailbreak"):
            found["jailbreak"] = hits["jailbreak"]
        for category in _PRIORITY:
            if category in found:
                matched = ", ".join(sorted(set(found[category])))[:200]
                return Decision(decision="refuse", category=category, reason=refusal_reason(category), matched=matched,
                                categories=[c for c in _PRIORITY if c in found])
        if has("consent_context") and has("identity_change"):
            return Decision(
                decision="consent", category="consent", reason=reasons()["consent"]["reason"],
                matched=", ".join(hits["identity_change"])[:200],
            )
        return Decision(decision="allow", category="none", reason=reasons()["allow"])

    def needs_identity_consent(self, text: str) -> bool:
        """The earlier name of `changes_person` (no context)."""
        return self.changes_person(text)


def _first_letters_agree(a: str, b: str) -> bool:
    """Guard for fuzzy name matches: misspellings keep each name part recognisable ("Scarlet
    Johanson", "Selena Gomes"), while ordinary words that happen to be close ("hair styles",
    "time cook", "mill gates") must not match. Every part must start with the same letter, short
    parts (<= 3 letters) must be exact, and the others must be close on their own."""
    wa, wb = a.split(), b.split()
    if len(wa) != len(wb):
        return False
    for x, y in zip(wa, wb):
        if x == y:
            continue
        if x[0] != y[0] or len(y) <= 3 or fuzz.ratio(x, y) < 80:
            return False
    return True
