"""One-word attack sets: rule-based first-word rewrites, and the paper's K-shot files.

The paper's attack (Safety Mirage, Sec. 3) rephrases a query so that it starts with a word the SFT model
has tied to a label: "What" for unsafe queries (jailbreak), "Share" for safe ones (over-prudence). Its
files were written by a language model; the rule-based rewriter is a deterministic stand-in that works
offline. K shots = K rephrasings of one query; a query is broken if any shot succeeds, so shots always
travel together (``AttackQuery.shots``).

- ``query.py``: ``AttackQuery`` and ``attack_queries`` (schema records -> rewritten K-shot queries).
- ``kshot.py``: ``load_kshot``, the paper's K-shot files as grouped queries.

The rewriter itself (``OneWordRewriter``, its rules per target word and the query grammar they read) is
``specs/rewrite.py`` and ``specs/grammar.py``: the synthetic corpus writes its K-shot files with it too.
"""
