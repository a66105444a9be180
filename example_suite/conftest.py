"""Example-suite setup: point the SDKs at the address the cassettes were recorded against."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # `import app` from the tests

# The committed cassettes were recorded against the bundled emulator on 127.0.0.1 (any port
# matches: cassettes match on method, host, path, query and JSON body). Set these variables
# yourself to run live or to re-record against the real APIs (see README.md).
os.environ.setdefault("OPENAI_BASE_URL", "http://127.0.0.1:8787/v1")
os.environ.setdefault("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:8787/")
