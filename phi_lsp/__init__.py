"""phi-lsp: inline completion and on-save code review from Microsoft Phi models served by vLLM."""

__version__ = "0.1.0"
