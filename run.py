"""Start mailhub: `python run.py` (web + worker), `python run.py web`, `python run.py worker`."""

import sys

from mailhub.cli import main

if __name__ == "__main__":
    sys.exit(main())
