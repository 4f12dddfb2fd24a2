import sys

from vvflow.cli import main

sys.exit(main())
