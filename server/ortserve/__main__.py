import sys

from ortserve.cli import main

sys.exit(main())
