"""pagellm-bench: one data contract, one evaluator, every model of the PageLLM paper.

Importing this package is cheap on purpose: heavy libraries (torch, RecBole,
transformers) are imported only inside the code paths that need them.
"""

__version__ = "0.1.0"
