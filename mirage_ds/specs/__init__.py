"""Torch-free definitions that several layers share, so that each imports them from below.

- ``synthetic.py``: the synthetic corpus's spec (``SyntheticSpec``), part of a recipe.
- ``losses.py``: each loss's config section (``LossConfig``), part of a recipe.
- ``system_prompts.py``: LLaVA-1.5's system prompts, by template name.
- ``grammar.py``, ``rewrite.py``: ``first_word``, the query grammar and the rule-based one-word rewriter
  (the attack sets and the synthetic corpus's K-shot files both rewrite with it).

Nothing here imports torch or another ``mirage_ds`` package (``tests/test_imports.py``).
"""
