"""Word lists the offline extractor reads from packages (no network, no download): first names from
the `names` package (the US Census 1990 first-name lists, public domain; MIT package).

Loaded once per process on first use (about 5,500 names, a few milliseconds); pure data afterwards.
"""

from __future__ import annotations

import functools
from importlib import resources

# Words that are first names in the census lists but, after "I'm", are far more often something else.
_NOT_NAMES = frozenset(
    """
    will may june april august sunny joy hope faith grace summer autumn rose ruby amber dawn honey
    patience chance major rich young else sol bill art dale guy lane page ray sky star storm
    """.split()
)


@functools.cache
def first_names() -> frozenset[str]:
    """Casefolded first names (female and male lists), without the common-word ones."""
    found: set[str] = set()
    package = resources.files("names")
    for name in ("dist.female.first", "dist.male.first"):
        for line in package.joinpath(name).read_text(encoding="ascii").splitlines():
            word = line.split(" ", 1)[0].strip().casefold()
            if word:
                found.add(word)
    return frozenset(found - _NOT_NAMES)
