import sys

from kvferry.server.cli import main

sys.exit(main())
