"""The HTTP server over an Engine: OpenAI's routes, shortfin's /generate, /health, /metrics."""
