"""The model side: the embedded tiny LLaVA and its tokenizer (``embedded``, ``tokenizer``), loading an HF
LLaVA checkpoint (``loading``), freezing and LoRA (``adapters``), and the decoder-layer hook (``hooks``).

Nothing is re-exported: import from the module that owns the name.
"""
