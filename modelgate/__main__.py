import sys

from modelgate.cli.main import main

sys.exit(main())
