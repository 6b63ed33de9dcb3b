"""Loading downloaded pickles without ever running code from them.

Ground-truth files (``gnd_*.pkl``) and the rSfM120k database files are pickles fetched from the internet.  A pickle
can name any importable callable and have it called while loading, so :func:`load` uses an unpickler that admits
only plain containers, numbers, strings and numpy arrays; anything else is refused before it is looked up.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from pathlib import Path
from typing import Any

from csa_rerank.atomic import atomic_path

# numeric scalar types and the names of their dtype classes (numpy.dtypes: Float64DType, ...)
_NUMERIC_TYPES = "bool bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64".split()
_NUMERIC_TYPES += "float16 float32 float64 longdouble complex64 complex128 clongdouble".split()
_NUMERIC_DTYPES = "Bool Int8 Int16 Int32 Int64 LongLong UInt8 UInt16 UInt32 UInt64 ULongLong".split()
_NUMERIC_DTYPES += "Float16 Float32 Float64 LongDouble Complex64 Complex128 CLongDouble".split()

# (module, name) of everything a pickle needs to rebuild numeric numpy arrays, scalars and dtypes, under numpy 1's
# and numpy 2's module names (``numpy.core`` / ``numpy._core``).  None of them can run code: they rebuild arrays
# of numeric dtypes (object arrays stay refused).  The one allow-list of numpy globals: this module's unpickler
# admits these, and :func:`csa_rerank.networks.safe_torch_load` gives them to ``torch.load(weights_only=True)``.
NUMPY_GLOBALS = (
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    *(("numpy", name) for name in _NUMERIC_TYPES),
    *(("numpy.dtypes", f"{name}DType") for name in _NUMERIC_DTYPES),
)

# The numpy globals and the builtins that plain containers of such data need; nothing here can execute code.
_ALLOWED_GLOBALS = {
    *NUMPY_GLOBALS,
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),  # numpy arrays pickled under Python 2 / protocol 2 carry their bytes this way
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle asks for an object outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 pickles (protocols 0-2) name e.g. __builtin__.set; check the Python-3 name they stand for
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load '{module}.{name}' from a pickle; only plain containers, numbers, "
            "strings and numpy arrays are allowed. The file is corrupt or not what it claims to be: delete it "
            "and download it again."
        )


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list; ``source`` names the origin in error messages."""
    return _RestrictedUnpickler(io.BytesIO(data), source).load()


def load(path: str | Path) -> Any:
    """Unpickle the file at ``path`` with the allow-list.  Errors name the file and say what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    try:
        return loads(data, source=str(path))
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or garbled pickles raise many different types
        raise pickle.UnpicklingError(
            f"{path}: not a readable pickle ({type(err).__name__}: {err}); the file is probably truncated or "
            "corrupt: delete it and download or generate it again."
        ) from err


def dump(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with pickle protocol 4 (the protocol the authors' code writes) via a temporary file."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        pickle.dump(obj, handle, protocol=4)
