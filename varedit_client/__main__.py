import sys

from varedit_client.cli import main

sys.exit(main())
