"""The guard: a model's judgement behind the rules of `tools.safety.screener`.

The rules are the fast first layer; what they do not refuse goes to a guard model that reads the
text with the chat around it (`ScreenContext`: the user's earlier messages, what made the image
being edited, which field the text is) and answers with one label of `prompts/safety/guard.md`:

    safe  sexual  minor  undress  celebrity  gore  suicide  hate  fake  override  person

A `LabelGuard` does not let the model write: it reads the log-probabilities of the label's first
token at the answer position (one forward pass over the request, the instructions' evaluated state
kept), and a calibration fitted on labelled sets (`configs/safety/guard_calibration.json`, made by
`atelier guard calibrate`) turns those 11 numbers into two probabilities:

- `unsafe`: the text must be refused (the category is the most likely harmful label), and
- `person`: the edit changes how a real person looks (consent is needed when the image being
  edited shows people: decided by the faces found, `tools.safety.tool_calls`).

Scorers: `agent.guard.GGUFLabelScorer` (the offline profile's Qwen GGUF, its own llama.cpp
context over the planner's mmapped weights) and `TransformersLabelScorer` (any causal LM).
`Qwen3Guard` (`safety.guard_backend: qwen3guard`) asks a Qwen3Guard-Gen model in its own format
("Safety: Unsafe / Categories: Violent") and the label prompt only for the person question.
A guard refuses what the rules let through; its release head may overturn a rules refusal that
matched a harmless word (one category, not minors or jailbreak, a text it read in full:
`tools.safety.screener.releasable`).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

# label -> policy category ("none": nothing to refuse; "person_change": needs consent on a photo of people)
LABELS: dict[str, str] = {
    "safe": "none", "sexual": "sexual", "minor": "minors", "undress": "nonconsensual",
    "celebrity": "public_figure", "gore": "violence", "suicide": "self_harm", "hate": "hate",
    "fake": "deception", "override": "jailbreak", "person": "person_change",
}
HARMFUL = [label for label, category in LABELS.items() if category not in ("none", "person_change")]
MAX_EARLIER = 3  # earlier user messages the guard reads
MAX_CHARS = 600  # of one text the guard reads (the rules read all of it)


class ScreenContext(BaseModel):
    """What the guard reads besides the text itself."""

    thread: list[str] = Field(default_factory=list)  # the user's earlier messages, oldest first
    chain: list[str] = Field(default_factory=list)  # what made the image being edited, oldest first
    field: str = "message"  # message | prompt | instruction | negative_prompt | description | region | ...
    people: bool | None = None  # faces found in the image being edited; None: not known


class GuardVerdict(BaseModel):
    """One guard answer, as the audit log keeps it."""

    backend: str
    label: str  # the most likely label
    category: str  # the policy category of the most likely harmful label ("none" when not unsafe)
    unsafe: float  # calibrated probability that the text must be refused
    person: float  # calibrated probability that the edit changes how a real person looks
    refuse: bool
    changes_person: bool
    ms: float
    # for a text the rules refused: the probability that they matched a harmless word ("nude-coloured
    # pumps", Dutch "nu" = now), and whether that is sure enough to release it
    benign: float | None = None
    release: bool = False
    logprobs: dict[str, float] = Field(default_factory=dict)


def windows(text: str) -> list[str]:
    """`text` as the guard reads it: whole when it fits in `MAX_CHARS`, else overlapping windows."""
    text = (text or "").strip()
    if len(text) <= MAX_CHARS:
        return [text]
    step = MAX_CHARS - 100
    return [text[i:i + MAX_CHARS] for i in range(0, len(text) - 100, step)]


def render_request(text: str, context: ScreenContext | None = None) -> str:
    """The user turn the guard reads: earlier messages, the image's history, then the request."""
    context = context or ScreenContext()
    lines = []
    earlier = [t.strip()[:MAX_CHARS] for t in context.thread if t and t.strip()][-MAX_EARLIER:]
    if earlier:
        lines.append("Earlier messages: " + " | ".join(earlier))
    chain = [t.strip()[:MAX_CHARS] for t in context.chain if t and t.strip()][-MAX_EARLIER:]
    if chain:
        lines.append("The image was made by: " + " | ".join(chain))
    body = (text or "").strip()[:MAX_CHARS]
    if context.field == "negative_prompt":
        body = f"negative prompt: {body}"
    elif context.field not in ("message", "prompt", "instruction"):
        body = f"{context.field}: {body}"
    lines.append(f"Request: {body}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def guard_instructions() -> str:
    return resources.files("prompts.safety").joinpath("guard.md").read_text(encoding="utf-8").strip()


# Calibration ---------------------------------------------------------------------------------


class Head(BaseModel):
    """A logistic regression over the features; with no weights, the probability mass of the
    labels at `mass` (the zero-shot reading: features start with the labels' log-probabilities)."""

    weights: list[float] = Field(default_factory=list)
    bias: float = 0.0
    threshold: float = 0.5
    mass: list[int] = Field(default_factory=list)

    def probability(self, features: list[float]) -> float:
        if not self.weights:
            return min(1.0, sum(math.exp(features[i]) for i in self.mass))
        if len(self.weights) != len(features):
            raise ValueError(f"the guard calibration expects {len(self.weights)} features, the scorer gives "
                             f"{len(features)}: refit it for this model (atelier eval screen --fit)")
        z = self.bias + sum(w * f for w, f in zip(self.weights, features))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


class Calibration(BaseModel):
    """Two heads over a scorer's features: the labels' log-probabilities, then (when `hidden`) the
    model's hidden state at the answer position (a probe fitted on labelled sets)."""

    labels: list[str]
    hidden: bool = False
    unsafe: Head  # fitted on texts the rules let through
    person: Head
    release: Head | None = None  # fitted on texts the rules refused: positive = harmless after all
    fitted: dict[str, Any] = Field(default_factory=dict)  # on what, when, the figures on it

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration | None:
        """The calibration at `path`, else the packaged one; None when there is none or `path` is
        "zero-shot" (the labels' argmax decides)."""
        if path == "zero-shot":
            return None
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as err:
                raise FileNotFoundError(f"safety.guard_calibration {path!r}: {err.strerror}") from None
            return cls.model_validate_json(text)
        try:
            text = resources.files("configs.safety").joinpath("guard_calibration.json").read_text(encoding="utf-8")
        except (OSError, FileNotFoundError):
            return None
        return cls.model_validate_json(text)

    def features(self, scores: LabelScores) -> list[float]:
        out = [scores.logprobs.get(label, -30.0) for label in self.labels]
        if self.hidden:
            if scores.hidden is None:
                raise ValueError("this guard calibration needs the scorer's hidden state")
            out += list(scores.hidden)
        return out


def zero_shot(labels: list[str]) -> Calibration:
    """No calibration: refuse when the harmful labels hold half the probability, ask for consent
    when `person` does."""
    def head(positive: list[str]) -> Head:
        return Head(mass=[i for i, label in enumerate(labels) if label in positive], threshold=0.5)

    return Calibration(labels=labels, unsafe=head(HARMFUL), person=head(["person"]), fitted={"on": "zero-shot"})


# Scorers -------------------------------------------------------------------------------------


class LabelScores(BaseModel):
    """What a scorer reads at the answer position: each label's first-token log-probability (over
    the labels) and the model's last hidden state there (None when the scorer has none)."""

    logprobs: dict[str, float]
    hidden: list[float] | None = None


class LabelScorer(Protocol):
    """Scores of the labels after the guard's instructions and `request`."""

    name: str

    def score(self, instructions: str, request: str, labels: list[str]) -> LabelScores: ...


def log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    total = math.log(sum(math.exp(v - top) for v in values)) + top
    return [v - total for v in values]


def chatml_head(instructions: str) -> str:
    return f"<|im_start|>system\n{instructions}<|im_end|>\n<|im_start|>user\n"


CHATML_TAIL = "<|im_end|>\n<|im_start|>assistant\nlabel:"


class TransformersLabelScorer:
    """Any transformers causal LM with a chat template as a label scorer (the GPU profiles; a
    tiny random-weight Qwen3 in the tests)."""

    name = "transformers"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    def score(self, instructions: str, request: str, labels: list[str]) -> LabelScores:
        import torch

        text = chatml_head(instructions) + request + CHATML_TAIL
        ids = self.tokenizer(text, return_tensors="pt").input_ids.to(self.model.device)
        first = [self.tokenizer(f" {label}", add_special_tokens=False).input_ids[0] for label in labels]
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=ids, output_hidden_states=True)
        row = out.logits[0, -1].float()
        values = log_softmax([float(row[i]) for i in first])
        hidden = out.hidden_states[-1][0, -1].float().cpu().tolist()
        return LabelScores(logprobs=dict(zip(labels, values)), hidden=hidden)


# Guards --------------------------------------------------------------------------------------


class LabelGuard:
    """A label scorer + a calibration: `judge(text, context)` -> `GuardVerdict`."""

    def __init__(self, scorer: LabelScorer, calibration: Calibration | None = None,
                 instructions: str | None = None):
        self.scorer = scorer
        self.labels = list(LABELS)
        self.calibration = calibration or zero_shot(self.labels)
        if self.calibration.labels != self.labels:
            raise ValueError(f"the guard calibration is for labels {self.calibration.labels}, not {self.labels}")
        self.instructions = instructions or guard_instructions()
        self.name = getattr(scorer, "name", "guard")

    def prepare(self) -> str:
        return self.scorer.prepare(self.instructions) if hasattr(self.scorer, "prepare") else "not needed"

    def judge(self, text: str, context: ScreenContext | None = None, *, rules_refused: bool = False) -> GuardVerdict:
        """The verdict on `text`; a text longer than `MAX_CHARS` is read in overlapping windows and
        the most harmful window's verdict counts (its time is the sum)."""
        t0 = time.perf_counter()
        verdicts = []
        for window in windows(text):
            scores = self.scorer.score(self.instructions, render_request(window, context), self.labels)
            verdicts.append(self.verdict(scores, rules_refused=rules_refused))
        worst = max(verdicts, key=lambda v: (v.refuse, v.unsafe, v.changes_person, v.person))
        return worst.model_copy(update={"ms": round((time.perf_counter() - t0) * 1000, 1)})

    @property
    def releases(self) -> bool:
        """Whether this guard may release a text the rules refused (its calibration has that head)."""
        return self.calibration.release is not None

    def verdict(self, scores: LabelScores, *, ms: float = 0.0, rules_refused: bool = False) -> GuardVerdict:
        """`rules_refused`: the rules refused the text; the release head says whether they matched a
        harmless word (then the text is judged as if they had not: allowed, or consent)."""
        cal = self.calibration
        logprobs = scores.logprobs
        feats = cal.features(scores)
        unsafe = cal.unsafe.probability(feats)
        person = cal.person.probability(feats)
        label = max(logprobs, key=logprobs.get)
        harmful = max(HARMFUL, key=lambda k: logprobs.get(k, -30.0))
        benign = release = None
        if rules_refused and cal.release is not None:
            benign = cal.release.probability(feats)
            release = benign >= cal.release.threshold
        # released: judged as if the rules had let it through (the unsafe head still decides)
        refuse = (not release) or unsafe >= cal.unsafe.threshold if rules_refused and release is not None \
            else unsafe >= cal.unsafe.threshold
        return GuardVerdict(
            backend=self.name, label=label, category=LABELS[harmful] if refuse else "none",
            unsafe=round(unsafe, 4), person=round(person, 4), refuse=refuse,
            changes_person=(not refuse) and person >= cal.person.threshold, ms=round(ms, 1),
            logprobs={k: round(v, 3) for k, v in logprobs.items()},
            benign=None if benign is None else round(benign, 4), release=bool(release),
        )


# Qwen3Guard-Gen: "Safety: Safe|Unsafe|Controversial" and "Categories: ..." lines
QWEN3GUARD_CATEGORIES = {
    "violent": "violence", "non-violent illegal acts": "deception", "sexual content or sexual acts": "sexual",
    "pii": "deception", "suicide & self-harm": "self_harm", "unethical acts": "hate",
    "politically sensitive topics": "public_figure", "copyright violation": "deception", "jailbreak": "jailbreak",
}
_SAFETY = re.compile(r"Safety:\s*(Safe|Unsafe|Controversial)", re.I)
_CATEGORIES = re.compile(r"Categories:\s*(.+)", re.I)


def parse_qwen3guard(text: str) -> tuple[str, list[str]]:
    """("safe"|"unsafe"|"controversial"|"unknown", policy categories) of a Qwen3Guard-Gen answer."""
    m = _SAFETY.search(text or "")
    level = m.group(1).lower() if m else "unknown"
    cats = []
    c = _CATEGORIES.search(text or "")
    if c:
        for part in re.split(r",|\n", c.group(1)):
            key = part.strip().lower()
            if key in QWEN3GUARD_CATEGORIES:
                cats.append(QWEN3GUARD_CATEGORIES[key])
    return level, cats


class Qwen3Guard:
    """Qwen3Guard-Gen (transformers): its own verdict for harm, the label prompt scored on the same
    model for the person question. `strict`: "Controversial" is refused too."""

    name = "qwen3guard"

    def __init__(self, model, tokenizer, *, strict: bool = False, max_new_tokens: int = 32,
                 calibration: Calibration | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.strict = strict
        self.max_new_tokens = max_new_tokens
        self.labels = LabelGuard(TransformersLabelScorer(model, tokenizer), calibration)
        self._lock = self.labels.scorer._lock  # one forward pass at a time on the shared model

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str = "cuda", dtype: str = "bfloat16", **kw) -> Qwen3Guard:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype=getattr(torch, dtype)).to(device).eval()
        return cls(model, tokenizer, **kw)

    def answer(self, text: str, context: ScreenContext | None = None) -> str:
        import torch

        messages = [{"role": "user", "content": t} for t in (context.thread if context else [])[-MAX_EARLIER:]]
        messages.append({"role": "user", "content": render_request(text, ScreenContext(field=context.field) if context else None)})
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)

    releases = False  # its verdict only tightens the rules

    def judge(self, text: str, context: ScreenContext | None = None, *, rules_refused: bool = False) -> GuardVerdict:
        t0 = time.perf_counter()
        level, cats = parse_qwen3guard(self.answer(text, context))
        # an answer that does not parse counts as "Controversial" (refused when strict)
        refuse = level == "unsafe" or (self.strict and level in ("controversial", "unknown"))
        person = self.labels.judge(text, context)
        return GuardVerdict(
            backend=self.name, label=level, category=(cats[0] if cats else "other") if refuse else "none",
            unsafe=1.0 if refuse else 0.0, person=person.person, refuse=refuse,
            changes_person=(not refuse) and person.changes_person, ms=round((time.perf_counter() - t0) * 1000, 1),
            logprobs=person.logprobs,
        )


def dump_calibration(cal: Calibration, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cal.model_dump(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
