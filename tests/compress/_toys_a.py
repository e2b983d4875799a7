"""Old name of _toy_graphs.py, kept while tests written elsewhere may still import it; remove when none does."""
from _toy_graphs import *  # noqa: F401,F403
