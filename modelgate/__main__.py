import sys

from modelgate.cli import main

sys.exit(main())
