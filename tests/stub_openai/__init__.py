"""An OpenAI-compatible stub server (own process, real HTTP) and its pytest fixtures."""
