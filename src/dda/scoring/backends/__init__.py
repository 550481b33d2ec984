"""Search backends (`search.backend`, `dda search --backend`): one class per way of finding a query's top-k rows.

scoring/search.py folds a method into one query vector per query against the virtually concatenated rows of the
stores; a backend answers the top-k of `queries @ rows.T` from there:

    exact   every row scored in one streaming pass (`exact_scan.py`): the exact top-k, no index
    sketch  a seeded Gaussian sketch of every row gives candidates, ranked exactly (`sketch_index.py`)
    faiss   an inner-product IVF over the same Gaussian projection gives candidates, ranked exactly (`faiss_ivf.py`)

A new backend is one `SearchBackend` subclass decorated with `register_backend` (base.py). Importing this package
registers the built-in ones, in that order.
"""

from .base import (
    BACKENDS,
    IndexSettings,
    QuerySettings,
    SearchBackend,
    get_backend,
    index_backends,
    register_backend,
)

# Registration side effects, in the order error texts and `search.backend`'s Literal list the built-ins.
# isort: off
from . import exact_scan  # noqa: E402, F401
from . import sketch_index  # noqa: E402, F401
from . import faiss_ivf  # noqa: E402, F401
# isort: on

__all__ = [
    "BACKENDS",
    "IndexSettings",
    "QuerySettings",
    "SearchBackend",
    "get_backend",
    "index_backends",
    "register_backend",
]
