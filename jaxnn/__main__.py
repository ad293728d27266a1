"""``python -m jaxnn`` runs the command line."""

import sys

from jaxnn.cli import main

sys.exit(main())
