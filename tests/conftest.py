"""Shared test set-up: the repository root is importable (for `tools.*` harnesses)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
