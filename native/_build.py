"""cffi builder for the segment engine (out-of-line API mode).

setup.py names this file in ``cffi_modules``; ``pip install .`` compiles
native/*.c into ``aoflite._native``. Set AOFLITE_SANITIZE=1 to build with
AddressSanitizer and UndefinedBehaviorSanitizer (the fuzz suite does).
"""

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["crc32c.c", "failpoint.c", "feed.c", "segment.c", "writer.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "aoflite_cdef.h").read_text())

_flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
_link = ["-lpthread"]
if os.environ.get("AOFLITE_SANITIZE"):
    _san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    _flags += _san
    _link += _san

ffibuilder.set_source(
    "aoflite._native",
    '#include "aoflite.h"\n#include "aof_format.h"\n',
    sources=[str(pathlib.Path("native") / s) for s in SOURCES],
    include_dirs=["native"],
    extra_compile_args=_flags,
    extra_link_args=_link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
