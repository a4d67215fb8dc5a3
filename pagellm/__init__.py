"""PageLLM: the paper's method (filled in by the PageLLM issue)."""
