from kvferry.server.cli import main
import sys

sys.exit(main())
