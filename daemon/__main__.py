import sys

from naiad.daemon.cli import main

sys.exit(main())
