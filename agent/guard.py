"""The guard model a session screens with (`safety.guard_backend`), built from the profile.

- "gguf": `GGUFLabelScorer`, the offline planner's Qwen GGUF as the label scorer of
  `tools.safety.guard.LabelGuard` (a llama.cpp context of its own over the same mmapped weights;
  the instructions' evaluated state kept on disk beside the planner's).
- "qwen3guard": `tools.safety.guard.Qwen3Guard` from `safety.guard_model` on `safety.guard_device`.
- "none": no guard (rules and word lists alone).

    guard = build_guard(profile)           # None for "none"
    PromptScreener(profile.safety, guard=guard)
"""

from __future__ import annotations

import os
import threading

from tools.safety.guard import CHATML_TAIL, Calibration, LabelGuard, LabelScores, Qwen3Guard, chatml_head, log_softmax

_GUARDS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def screener_for(profile, *, root: str | None = None):
    """The prompt screener of a session on `profile`: the rules of `profile.safety` and its guard."""
    from tools.safety import PromptScreener

    return PromptScreener(profile.safety, guard=build_guard(profile, root=root))


def build_guard(profile, *, root: str | None = None):
    """The profile's guard (one per process and settings), or None."""
    safety = profile.safety
    if safety.guard_backend == "none":
        return None
    key = (safety.guard_backend, safety.guard_model, safety.guard_calibration, profile.planner.model_path,
           profile.planner.hub_file, profile.planner.gguf_packages, root)
    with _LOCK:
        guard = _GUARDS.get(key)
        if guard is None:
            if safety.guard_backend == "gguf":
                # the packaged calibration was fitted on this GGUF's label log-probabilities
                guard = LabelGuard(GGUFLabelScorer(profile.planner, root=root), Calibration.load(safety.guard_calibration))
            else:
                # another model's log-probabilities: its own calibration, or the zero-shot one
                calibration = Calibration.load(safety.guard_calibration) if safety.guard_calibration else None
                guard = Qwen3Guard.from_pretrained(safety.guard_model, device=safety.guard_device,
                                                   strict=safety.guard_strict, calibration=calibration)
            _GUARDS[key] = guard
        return guard


class GGUFLabelScorer:
    """The offline profile's Qwen GGUF as a label scorer: a llama.cpp context of its own over the
    planner's mmapped weights (`planner` settings), the instructions' state computed once and kept
    on disk like the planner's (`agent.planners.gguf` prefix helpers)."""

    name = "gguf"

    def __init__(self, planner_settings, *, root: str | None = None, n_ctx: int = 2048,
                 model_path: str | None = None):
        self.settings = planner_settings
        self.root = root
        self.n_ctx = n_ctx
        self.model_path = model_path
        self._llm = None
        self._lock = threading.Lock()
        self._label_ids: dict[str, int] | None = None
        self.prefix_state: str | None = None

    @property
    def llm(self):
        if self._llm is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                from tools.errors import ModelUnavailableError

                raise ModelUnavailableError("the guard needs llama-cpp-python: pip install 'qwen-atelier[offline-llm]'"
                                            " (or set safety.guard_backend=none)") from None
            from agent.planners.gguf import physical_cores
            from agent.planners.gguf_assets import locate_gguf

            path = self.model_path or str(locate_gguf(self.settings, root=self.root))
            self.model_path = path
            import llama_cpp

            # embeddings on: the last hidden state is read beside the logits (~10% slower)
            self._llm = Llama(model_path=path, n_ctx=self.n_ctx, n_threads=self.settings.n_threads or physical_cores(),
                              n_batch=512, verbose=False, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
        return self._llm

    def _ids(self, labels: list[str]) -> dict[str, int]:
        if self._label_ids is None or set(self._label_ids) != set(labels):
            ids = {}
            for label in labels:
                ids[label] = self.llm.tokenize(f" {label}".encode(), add_bos=False, special=False)[0]
            if len(set(ids.values())) != len(ids):
                raise ValueError(f"guard labels must start with distinct tokens: {ids}")
            self._label_ids = ids
        return self._label_ids

    def _head(self, llm, head: list[int]) -> None:
        if llm.n_tokens >= len(head) and list(llm.input_ids[:len(head)]) == head:
            self.prefix_state = "loaded"
            return
        from agent.planners.gguf import evaluate_prefix, prefix_state_path, restore_prefix, save_prefix
        from agent.planners.gguf_assets import models_dir

        if os.environ.get("ATELIER_PROMPT_CACHE", "1") == "0":
            path = None
        else:
            path = prefix_state_path(models_dir(self.root) / "prompt-cache", llm, self.model_path, head, "guard-embeddings")
        if path is not None and restore_prefix(llm, path, head):
            self.prefix_state = "restored"
            return
        evaluate_prefix(llm, head, lambda text: None)
        if path is not None:
            save_prefix(llm, path, head)
        self.prefix_state = "computed"

    def prepare(self, instructions: str) -> str:
        """Make sure the instructions' state is computed (and saved); how it was got."""
        with self._lock:
            llm = self.llm
            self._head(llm, llm.tokenize(chatml_head(instructions).encode(), add_bos=False, special=True))
        return self.prefix_state or ""

    def score(self, instructions: str, request: str, labels: list[str]) -> LabelScores:
        with self._lock:
            llm = self.llm
            head = llm.tokenize(chatml_head(instructions).encode(), add_bos=False, special=True)
            self._head(llm, head)
            tail = llm.tokenize((request + CHATML_TAIL).encode(), add_bos=False, special=True)
            room = self.n_ctx - len(head) - 1
            if room < 64:
                raise ValueError(f"the guard's instructions ({len(head)} tokens) leave no room in its context ({self.n_ctx})")
            if len(tail) > room:  # a long thread: the earliest context goes, the request stays whole
                tail = tail[-room:]
            llm.n_tokens = len(head)  # drop the previous request; eval() clears its cache cells
            llm.eval(tail)
            # the last position's logits and hidden state (llama-cpp-python keeps no copy of them)
            import llama_cpp
            import numpy as np

            ctx = llm._ctx.ctx
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(llm.n_vocab(),))
            ids = self._ids(labels)
            values = log_softmax([float(row[ids[label]]) for label in labels])
            hidden = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, -1), shape=(llm.n_embd(),))
            return LabelScores(logprobs=dict(zip(labels, values)), hidden=[float(v) for v in hidden])
