import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A small PACS folder in DomainBed's layout (3 classes × 4 images per env), one per test module."""
    from fixtures import make_tree

    root = tmp_path_factory.mktemp("data")
    make_tree(root, "pacs")
    return root
