"""``python -m contractive``: the command line (see ``contractive.cli``)."""

import sys

from contractive.cli import main

sys.exit(main())
