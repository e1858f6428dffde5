"""keyplane: API keys, spend and limits in front of OpenAI-compatible model APIs."""

__version__ = "0.1.0"
