"""Safety: prompt, tool-call and image screening, audit log and rate limits.

    screener = PromptScreener(settings)           # settings: tools.settings.SafetySettings
    screener = PromptScreener(settings, guard=LabelGuard(scorer, Calibration.load()))  # rules + a guard model
    screener.screen("a text", ScreenContext(thread=[...], people=True))  # Decision(decision, category, reason, matched, guard)
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
from tools.safety.guard import Calibration, GuardVerdict, LabelGuard, Qwen3Guard, ScreenContext
from tools.safety.screener import Decision, Guard, GuardBackend, PromptScreener, refusal_reason
from tools.safety.tool_calls import consent_question, person_faces, person_keys, person_labels, screen_tool_call

__all__ = [
    "AuditLog", "Calibration", "Decision", "FaceGallery", "Guard", "GuardBackend", "GuardVerdict", "ImageScreener",
    "LabelGuard", "PromptScreener", "Qwen3Guard", "RateLimitedError", "RateLimiter", "ScreenContext",
    "consent_question", "person_faces", "person_keys", "person_labels", "refusal_reason",
    "screen_tool_call",
]
