import sys

from siprec_server.cli import main

sys.exit(main())
