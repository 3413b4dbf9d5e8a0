"""Word lists the evaluation reads, kept as versioned data apart from the code that applies them.

- ``refusal``: VLGuard's refusal keywords and the project's fixed and strict versions (``judges.py``).
"""
