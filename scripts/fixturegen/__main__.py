"""``python3 -m fixturegen [args]`` (from scripts/) is ``python3 scripts/make_fixtures.py [args]``."""

import sys

from .cli import main

main(sys.argv[1:])
