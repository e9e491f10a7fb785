"""Safety: prompt, tool-call and image screening, audit log and rate limits.

    screener = PromptScreener(settings)           # settings: tools.settings.SafetySettings
    screener.screen("a text")                      # Decision(decision, category, reason, matched)
    screen_tool_call(screener, name, args, store=store, consented=[...])
    ImageScreener(settings, analyzer).screen(image)
    AuditLog(url).record("request", user_id=..., thread_id=..., text=...)
    RateLimiter("30/minute;500/day").hit(user_id)  # raises RateLimitedError(retry_after=...)

The policy is ../shared/SAFETY_POLICY.md; the lists are data in `configs/safety/`, the texts a
person reads in `prompts/safety/`.
"""

from tools.errors import RateLimitedError
from tools.safety.audit import AuditLog
from tools.safety.images import FaceGallery, ImageScreener
from tools.safety.ratelimit import RateLimiter
from tools.safety.screener import Decision, GuardBackend, PromptScreener, refusal_reason, register_guard
from tools.safety.tool_calls import consent_question, person_keys, person_labels, screen_tool_call

__all__ = [
    "AuditLog", "Decision", "FaceGallery", "GuardBackend", "ImageScreener", "PromptScreener", "RateLimitedError",
    "RateLimiter", "consent_question", "person_keys", "person_labels", "refusal_reason", "register_guard",
    "screen_tool_call",
]
