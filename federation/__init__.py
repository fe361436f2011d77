"""The protocol layer both daemons share: the typed federation plan, the upload layout and the SecAgg
config factory (sitting between the libraries ``pfmh_model``/``security``/``proto`` and the daemons).

Never imports torch at import time, nor ``coordinator`` or ``participant`` (tests/test_layering.py).
"""
