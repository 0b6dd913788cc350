"""Built-in concept decomposers, one plugin module each: ``mcd``, ``nmf`` and ``sae``."""
