"""``python -m raylam.tune --config ...``: the tune command before raylam.cli lists it."""

import sys

from raylam.tune import main

sys.exit(main(["tune", *sys.argv[1:]]))
