"""The address of the published book (GitHub Pages), from ``repository.url`` in ``_config.yml``.

The rule, in the one place that applies it: ``https://github.com/OWNER/REPO`` is published at
``https://OWNER.github.io/REPO/`` (the owner in lower case, as GitHub serves it), except a
repository named ``OWNER.github.io``, which is published at ``https://OWNER.github.io/``.
`.github/workflows/book.yml` publishes ``_build/html`` there; the README links it (a test in
``tests/site`` checks that it does).

``python tools/site_url.py`` prints the address (``make site-url``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    import yaml

    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    return data["repository"]["url"].rstrip("/")


def pages_url(repo_url: str | None = None) -> str:
    """GitHub Pages address of ``repo_url`` (default: the repository in ``_config.yml``)."""
    url = (repo_url or repository_url()).rstrip("/")
    if url.endswith(".git"):
        url = url[: -len(".git")]
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+)", url)
    if not m:
        raise ValueError(
            f"repository.url is not https://github.com/OWNER/REPO: {url!r}"
        )
    owner, repo = m.group(1).lower(), m.group(2)
    if repo.lower() == f"{owner}.github.io":
        return f"https://{owner}.github.io/"
    return f"https://{owner}.github.io/{repo}/"


def main() -> int:
    print(pages_url())
    return 0


if __name__ == "__main__":
    sys.exit(main())
