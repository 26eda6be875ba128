"""``python -m hf_calib`` runs the ``hf-calib`` command."""

import sys

from .cli import main

sys.exit(main())
