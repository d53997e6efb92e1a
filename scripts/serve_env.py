#!/usr/bin/env python
"""Serve MiniWoB++ over OpenEnv until interrupted: ``scripts/serve_env.py --task click-test --port 8000``.

All flags: ``--help`` (see browserrl/env/server.py and docs/env.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browserrl.env.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
