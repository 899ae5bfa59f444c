"""`midpo serve`: an OpenAI-compatible HTTP server for any model midpo loads (docs/serve.md)."""
