"""The serving stage: an OpenAI-compatible HTTP API over the engine (engine/scheduler.py).

Only HTTP lives here: request shapes and errors, API keys and limits, metrics, access logs,
the model's lifecycle headers and the feedback store. Generation is the engine's.
"""
