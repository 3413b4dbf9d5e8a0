"""Table 1 in miniature (``mirage-ds reproduce``): the pretrained embedded base, then Unsafe-Filter, Mixed-SFT,
Posthoc-SFT, NPO and RMU trained from it by the launcher, each evaluated (ASR and RR before and after the
one-word attack, any of 3 shots; utility; degenerate outputs) and gathered into ``table.md`` and
``table.json`` (``eval/table.py``'s Table 1).

Every training run logs to one MLflow experiment and the evaluation attaches to its run. The world is the
embedded synthetic corpus (``data/synthetic.py``): the eval set asks about harmful topics the SFT data never
refused, so a refusal there can only come from the query's first word. Figure 1 (first words of the SFT
data) and Figure 3 (ASR / RR against the attack's shots K) are drawn beside the table.

One file per job: ``plan.py`` (the methods, their sizes, the quick sizes: what runs), ``runner.py`` (the
training and evaluation processes, the table), ``figures.py`` (Figure 1, Figure 3, the sweep plot) and
``sweep.py`` (the shortcut dial: one reproduction per value of one override, e.g. the planted
``data.synthetic.what_rate``, gathered into ``sweep.json`` and ``sweep.png``).
"""
