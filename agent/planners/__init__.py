"""Chat-model backends: one class per model source behind `ChatModel` (see base.py)."""
