"""Old name of _tiny_resnet.py, kept while tests written elsewhere may still import it; remove when none does."""
from _tiny_resnet import *  # noqa: F401,F403
