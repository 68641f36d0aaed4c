import sys

from phi_lsp.cli.main import main

sys.exit(main())
