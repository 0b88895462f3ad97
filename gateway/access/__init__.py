"""Who may call, and how much: API keys, per-key rate and concurrency limits, and the request guard
(body size and time limits, ASCII-safe answers) in front of every route.
"""
