"""``python -m slimkit.cli COMMAND ...`` (also what ``slimkit train --nproc N`` runs under torchrun)."""
import sys

from slimkit.cli import main

sys.exit(main())
