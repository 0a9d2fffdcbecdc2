"""``python -m localsched demo|info|top``."""

import sys

from localsched.cli import main

sys.exit(main())
